"""Tests for spectral_jax.statistics: the streaming SpectralStatistics accumulator.

Streaming several batches must give the data-set quantities computed at once, in float64
NumPy, over all images together (tests/helpers/references.py): means over the images with a
valid pixel, R as a ratio of sums, and the IoU from intersections and unions summed over
the data set.

Tolerances: relative 1e-5 with float32 accumulators, 1e-12 with float64 ones (x64).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import spectral_jax as sj
from tests.helpers import compile_counting, references

SHAPE, NUM_CLASSES = (7, 8), 4
RTOL = {"float32": 1e-5, "float64": 1e-12}


@pytest.fixture
def batches(rng):
    """Three batches of two images; one image has no valid pixel."""
    out = []
    for _ in range(3):
        logits, labels = references.make_batch(rng, 2, *SHAPE, NUM_CLASSES, ignore_fraction=0.2)
        out.append((logits, labels))
    out[1][1][0] = 255
    return out


update = jax.jit(sj.SpectralStatistics.update)


def stream(stats, batches, dtype="float32"):
    for logits, labels in batches:
        stats = update(stats, logits.astype(dtype), labels)
    return stats


def data_set_reference(batches, radius, dtype="float32"):
    """Per-image float64 quantities over all images, and which images count."""
    logits = np.concatenate([b[0] for b in batches]).astype(dtype).astype(np.float64)
    labels = np.concatenate([b[1] for b in batches])
    counted = np.any(labels != 255, axis=(1, 2))
    spectra = references.ce_spectrum(logits, labels)  # [B, H, W]
    profiles = references.band_sums(spectra, radius)
    return logits, labels, counted, profiles, spectra


@jax.jit
def _read_outs(stats):
    """The read-outs in one program (eagerly, each operation would compile on its own)."""
    return {
        "mean_ce": stats.mean_ce(),
        "band_profile": stats.band_profile(),
        "ce_spectrum": stats.ce_spectrum(),
        "truncated_ce": stats.truncated_ce(),
        "relative_discrepancy": stats.relative_discrepancy_curve(),
        "iou": stats.iou(),
        "mean_iou": stats.mean_iou(),
        "num_images": stats.num_images,
    }


def read(stats):
    """All the read-outs as NumPy arrays (converted inside the x64 context)."""
    out = jax.tree.map(np.asarray, _read_outs(stats))
    out["num_images"] = int(out["num_images"])
    return out


@pytest.mark.parametrize(
    ("radius", "dtype"),
    [("chebyshev", "float32"), ("euclidean", "float32"), ("chebyshev", "float64")],
)
def test_streaming_equals_the_data_set_reference(batches, radius, dtype):
    with jax.enable_x64(dtype == "float64"):
        stats = sj.SpectralStatistics.create(SHAPE, NUM_CLASSES, radius=radius, dtype=dtype)
        got = read(stream(stats, batches, dtype))
    logits, labels, counted, profiles, spectra = data_set_reference(batches, radius, dtype)
    rtol = RTOL[dtype]
    assert got["num_images"] == counted.sum() == 5
    mean_profile = profiles[counted].mean(axis=0)
    assert got["band_profile"].dtype == dtype
    np.testing.assert_allclose(got["band_profile"], mean_profile, rtol=rtol, atol=rtol * 1e-2)
    ce = references.spatial_ce(logits, labels)
    np.testing.assert_allclose(got["mean_ce"], ce[counted].mean(), rtol=rtol)
    mean_spectrum = spectra[counted].mean(axis=0)  # [H, W], every column (mirrors too)
    scale = np.abs(mean_spectrum).max()
    np.testing.assert_allclose(got["ce_spectrum"], mean_spectrum, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(got["truncated_ce"], np.cumsum(mean_profile), rtol=rtol)
    truncated = np.cumsum(profiles.sum(axis=0))  # [R], summed over images
    expected_r = np.abs(truncated - ce.sum()) / ce.sum()
    np.testing.assert_allclose(got["relative_discrepancy"], expected_r, rtol=rtol, atol=rtol)
    assert got["relative_discrepancy"][-1] == 0.0
    # IoU of the arg-max, from intersections and unions summed over the data set.
    intersection, union = references.hard_iou_counts(logits, labels)
    expected_iou = intersection.sum(axis=0) / union.sum(axis=0)
    np.testing.assert_allclose(got["iou"], expected_iou, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(got["mean_iou"], np.nanmean(expected_iou), rtol=rtol, atol=1e-6)


def test_discrepancy_equals_band_limit_sweep_over_all_images(batches):
    stats = stream(sj.SpectralStatistics.create(SHAPE, NUM_CLASSES), batches)
    logits = np.concatenate([b[0] for b in batches]).astype(np.float32)
    labels = np.concatenate([b[1] for b in batches])
    sweep = jax.jit(sj.band_limit_sweep)(logits, labels)
    np.testing.assert_allclose(stats.relative_discrepancy_curve(), sweep, rtol=1e-5, atol=1e-6)


def test_update_traces_once_for_batches_of_one_shape(batches):
    traces = 0

    def update(stats, logits, labels):
        nonlocal traces
        traces += 1
        return stats.update(logits, labels)

    update = jax.jit(update)
    stats = sj.SpectralStatistics.create(SHAPE, NUM_CLASSES)
    for logits, labels in batches:
        stats = update(stats, logits.astype(np.float32), labels)
    assert traces == 1
    assert int(stats.num_images) == 5


def test_merge_equals_streaming_everything(batches):
    create = sj.SpectralStatistics.create
    everything = stream(create(SHAPE, NUM_CLASSES), batches)
    merged = stream(create(SHAPE, NUM_CLASSES), batches[:1]).merge(
        stream(create(SHAPE, NUM_CLASSES), batches[1:])
    )
    for name, value in read(everything).items():
        np.testing.assert_allclose(read(merged)[name], value, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    "other",
    [
        dict(shape=(7, 9), num_classes=4),
        dict(shape=SHAPE, num_classes=5),
        dict(shape=SHAPE, num_classes=4, radius="euclidean"),
        dict(shape=SHAPE, num_classes=4, ignore_index=-1),
    ],
)
def test_merge_with_other_settings_raises(other):
    stats = sj.SpectralStatistics.create(SHAPE, NUM_CLASSES)
    with pytest.raises(ValueError, match="same settings"):
        stats.merge(sj.SpectralStatistics.create(**other))


def test_empty_statistics():
    stats = sj.SpectralStatistics.create(SHAPE, NUM_CLASSES)
    got = read(stats)
    assert got["num_images"] == 0
    assert np.isnan(got["mean_ce"])
    assert np.all(np.isnan(got["band_profile"])) and np.all(np.isnan(got["truncated_ce"]))
    np.testing.assert_array_equal(got["relative_discrepancy"], 0.0)  # R = 0 where CE = 0
    assert np.all(np.isnan(got["iou"])) and np.isnan(got["mean_iou"])
    assert got["band_profile"].shape == (sj.num_bands(SHAPE),)
    assert got["iou"].shape == (NUM_CLASSES,)


def test_images_without_valid_pixels_add_nothing(batches):
    create = sj.SpectralStatistics.create
    before = stream(create(SHAPE, NUM_CLASSES), batches)
    empty = (batches[0][0], np.full_like(batches[0][1], 255))
    after = stream(before, [empty])
    for name, value in read(before).items():
        np.testing.assert_array_equal(read(after)[name], value, err_msg=name)


def test_class_sparse_path_gives_the_same_statistics(batches):
    create = sj.SpectralStatistics.create
    dense = read(stream(create(SHAPE, NUM_CLASSES), batches))
    sparse = read(stream(create(SHAPE, NUM_CLASSES, max_classes_present=2), batches))
    for name, value in dense.items():
        np.testing.assert_allclose(sparse[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("radius", ["chebyshev", "euclidean"])
def test_magnitude_profiles_are_means_over_counted_images(batches, radius):
    stats = sj.SpectralStatistics.create(SHAPE, NUM_CLASSES, radius=radius, with_magnitudes=True)
    profiles = stream(stats, batches).magnitude_profiles()
    assert isinstance(profiles, sj.MagnitudeProfiles)
    logits, labels, counted, _, _ = data_set_reference(batches, radius)
    label_profiles, logit_profiles = references.magnitude_profiles(logits, labels, radius)
    np.testing.assert_allclose(profiles.labels, label_profiles[counted].mean(0), rtol=1e-5)
    np.testing.assert_allclose(profiles.logits, logit_profiles[counted].mean(0), rtol=1e-5)


def test_magnitude_profiles_need_with_magnitudes():
    with pytest.raises(ValueError, match="with_magnitudes"):
        sj.SpectralStatistics.create(SHAPE, NUM_CLASSES).magnitude_profiles()


def test_bad_inputs_raise(batches):
    stats = sj.SpectralStatistics.create(SHAPE, NUM_CLASSES)
    logits, labels = batches[0]
    logits = logits.astype(np.float32)
    with pytest.raises(ValueError, match="shape"):
        stats.update(logits[:, :-1], labels[:, :-1])
    with pytest.raises(ValueError, match="shape"):
        stats.update(logits[..., :-1], labels)
    bad = labels.copy()
    bad[0, 0, 0] = NUM_CLASSES
    with pytest.raises(ValueError, match="labels must lie in"):
        stats.update(logits, bad)
    with pytest.raises(ValueError, match="num_classes"):
        sj.SpectralStatistics.create(SHAPE, 0)


def test_out_of_range_label_under_jit_is_never_silently_counted(batches):
    logits, labels = batches[0]
    bad = labels.copy()
    bad[1, 0, 0] = NUM_CLASSES
    stats = stream(sj.SpectralStatistics.create(SHAPE, NUM_CLASSES), [(logits, bad)])
    assert np.isnan(stats.mean_ce())
    assert np.all(np.isnan(stats.relative_discrepancy_curve()[:-1]))


def test_statistics_are_a_pytree_of_arrays(batches):
    stats = stream(sj.SpectralStatistics.create(SHAPE, NUM_CLASSES), batches)
    leaves = jax.tree.leaves(stats)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)  # the settings are static
    doubled = jax.tree.map(lambda x: 2 * x, stats)
    np.testing.assert_allclose(doubled.band_profile(), stats.band_profile(), rtol=1e-6)
    np.testing.assert_allclose(
        doubled.relative_discrepancy_curve(), stats.relative_discrepancy_curve()
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_parseval_error_compares_band_sums_with_the_spatial_ce(batches, dtype):
    with jax.enable_x64(dtype == "float64"):
        stats = sj.SpectralStatistics.create(SHAPE, NUM_CLASSES, dtype=dtype)
        stats = stream(stats, batches, dtype)
        spatial_ce = float(stats.spatial_ce)
        error = float(stats.parseval_error())
        # A decomposition that lost 1% of the CE shows up as a 1% error.
        off = float(stats.replace(band_ce=stats.band_ce * 0.99).parseval_error())
    logits, labels, _, _, _ = data_set_reference(batches, "chebyshev", dtype)
    np.testing.assert_allclose(
        spatial_ce, references.spatial_ce(logits, labels).sum(), rtol=RTOL[dtype]
    )
    assert error <= RTOL[dtype]
    np.testing.assert_allclose(off, 0.01, rtol=1e-3)
    assert float(sj.SpectralStatistics.create(SHAPE, NUM_CLASSES).parseval_error()) == 0.0


def test_mean_iou_skips_a_class_absent_from_labels_and_predictions(batches):
    # Class 3 is never labelled and never the arg-max: its IoU is NaN and the mean IoU is
    # the mean over the other classes (a plain mean would make it NaN).
    edited = []
    for logits, labels in batches:
        logits = logits.copy()
        logits[..., 3] = -50.0
        edited.append((logits, np.where(labels == 3, 0, labels)))
    got = read(stream(sj.SpectralStatistics.create(SHAPE, NUM_CLASSES), edited))
    logits, labels, _, _, _ = data_set_reference(edited, "chebyshev")
    intersection, union = references.hard_iou_counts(logits, labels)
    expected = intersection.sum(axis=0)[:3] / union.sum(axis=0)[:3]
    assert np.isnan(got["iou"][3]) and np.all(np.isfinite(got["iou"][:3]))
    np.testing.assert_allclose(got["mean_iou"], expected.mean(), rtol=1e-5)


# Last in the module: clearing JAX's caches (to count compilations) would make every
# later test compile again what an earlier one compiled.


@pytest.mark.parametrize("with_magnitudes", [False, True])
def test_repeated_eager_updates_compile_once_per_batch_shape(batches, with_magnitudes):
    # Eager updates in a loop (no jax.jit at the call site) compile one executable per
    # batch shape and settings, and the statistics (arrays) do not recompile it.
    stats = sj.SpectralStatistics.create(SHAPE, NUM_CLASSES, with_magnitudes=with_magnitudes)
    updated = update(stats, batches[0][0].astype(np.float32), batches[0][1])
    (logits, labels), (other_logits, other_labels) = batches[1], batches[2]
    logits, other_logits = logits.astype(np.float32), other_logits.astype(np.float32)
    compile_counting.assert_compiles_once_per_shape(
        sj.SpectralStatistics.update,
        (stats, logits, labels),
        (updated, other_logits, other_labels),
        (stats, logits[:1], labels[:1]),
    )
