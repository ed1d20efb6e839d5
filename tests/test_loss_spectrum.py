"""Tests for spectral_jax.loss_spectrum: CE components, band profiles, truncation and R.

Every numeric check is against tests/helpers/references.py (float64 NumPy, full ``fft2``, bands
from loops), a closed form, or Parseval's identity (the components of an image sum to its
spatial mean CE, computed with ``log_softmax``).

Tolerances, relative to each image's CE:
  float32: sums 1e-5, single components 1e-6 (observed ~1e-7 up to 33x33x150).
  float64 (x64): sums and components 1e-12 (observed ~1e-15).

Numeric tests call ``jax.jit`` wrappers (one compilation per shape, ~0.3 s; eager
dispatch compiles every primitive, ~1.5 s a shape); ``all_outputs`` runs every public
function in one compilation. Eager-only behaviour (the label ValueError) and one
eager-vs-jit check call the library directly.
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spectral_jax as sj
from tests.helpers import compile_counting, references
from tests.helpers.compile_counting import compilations

SUM_RTOL = {"float32": 1e-5, "float64": 1e-12}
COMPONENT_ATOL = {"float32": 1e-6, "float64": 1e-12}  # times the image's CE
DTYPES = ["float32", "float64"]
RADII = ["chebyshev", "euclidean"]

ce_spectrum = jax.jit(
    sj.ce_spectrum, static_argnames=("ignore_index", "ignore_mode", "max_classes_present")
)
ce_half_spectrum = jax.jit(
    sj.ce_half_spectrum, static_argnames=("ignore_index", "ignore_mode", "max_classes_present")
)
band_profile = jax.jit(
    sj.band_profile,
    static_argnames=("ignore_index", "ignore_mode", "radius", "max_classes_present"),
)
band_limit_sweep = jax.jit(
    sj.band_limit_sweep,
    static_argnames=("ignore_index", "ignore_mode", "radius", "per_image", "max_classes_present"),
)
magnitude_profiles = jax.jit(
    sj.magnitude_profiles,
    static_argnames=("ignore_index", "ignore_mode", "radius", "class_chunk_size"),
)


@functools.partial(jax.jit, static_argnames=("radius", "max_classes_present"))
def _all_outputs(logits, labels, band_limit, radius, max_classes_present):
    settings = dict(radius=radius, max_classes_present=max_classes_present)
    magnitudes = sj.magnitude_profiles(logits, labels, radius=radius)
    return {
        "ce_spectrum": sj.ce_spectrum(logits, labels, max_classes_present=max_classes_present),
        "band_profile": sj.band_profile(logits, labels, **settings),
        "truncated_ce": sj.truncated_ce(logits, labels, band_limit, **settings),
        "relative_discrepancy": sj.relative_discrepancy(logits, labels, band_limit, **settings),
        "relative_discrepancy_per_image": sj.relative_discrepancy(
            logits, labels, band_limit, per_image=True, **settings
        ),
        "band_limit_sweep": sj.band_limit_sweep(logits, labels, **settings),
        "band_limit_sweep_per_image": sj.band_limit_sweep(
            logits, labels, per_image=True, **settings
        ),
        "magnitude_labels": magnitudes.labels,
        "magnitude_logits": magnitudes.logits,
    }


def all_outputs(logits, labels, band_limit=1, *, radius="chebyshev", max_classes_present=None):
    """Every public function of the module on one batch, as NumPy arrays.

    One compilation per shape instead of one per function keeps the suite fast.
    """
    outputs = _all_outputs(logits, labels, band_limit, radius, max_classes_present)
    return jax.tree.map(np.asarray, outputs)


def precision(dtype: str):
    """float64 logits need x64 in JAX; everything else runs with the default."""
    return jax.enable_x64(dtype == "float64")


# (B, H, W, C, ignored fraction): odd, even, non-square, 1-pixel and 1-class cases.
CASES = [
    (2, 7, 9, 5, 0.2),
    (2, 8, 8, 21, 0.1),
    (3, 16, 12, 2, 0.3),
    (2, 33, 33, 150, 0.1),
    (1, 9, 16, 1, 0.2),
    (2, 1, 6, 2, 0.2),
    (2, 1, 1, 3, 0.0),
]
CASE_IDS = [f"B{b}-{h}x{w}-C{c}-ign{f}" for b, h, w, c, f in CASES]


def assert_within(actual, desired, atol) -> None:
    """``|actual - desired| <= atol`` elementwise, with ``atol`` broadcast (per image)."""
    error = np.abs(np.asarray(actual, np.float64) - desired)
    assert error.shape == np.shape(desired)
    assert np.all(error <= atol), f"max error {error.max():.3g}, allowed {np.min(atol):.3g}"


def make_case(rng, case, dtype):
    batch, height, width, num_classes, ignore_fraction = case
    logits, labels = references.make_batch(
        rng, batch, height, width, num_classes, ignore_fraction=ignore_fraction
    )
    logits = logits.astype(dtype)
    return logits, labels


# ---------------------------------------------------------------------------------------
# Exactness: Parseval, the full spectrum, symmetry.


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_components_sum_to_spatial_ce(rng, case, dtype):
    logits, labels = make_case(rng, case, dtype)
    expected = references.spatial_ce(logits, labels)  # log_softmax, no FFT
    with precision(dtype):
        spectrum = np.asarray(ce_spectrum(logits, labels))
    assert spectrum.dtype == dtype
    assert spectrum.shape == labels.shape
    np.testing.assert_allclose(spectrum.sum(axis=(1, 2)), expected, rtol=SUM_RTOL[dtype], atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_spectrum_matches_full_fft_reference(rng, case, dtype):
    logits, labels = make_case(rng, case, dtype)
    expected = references.ce_spectrum(logits, labels)
    ce = references.spatial_ce(logits, labels)
    with precision(dtype):
        spectrum = np.asarray(ce_spectrum(logits, labels))
    assert_within(spectrum, expected, COMPONENT_ATOL[dtype] * ce[:, None, None])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES[:4], ids=CASE_IDS[:4])
def test_spectrum_is_even_in_frequency(rng, case, dtype):
    logits, labels = make_case(rng, case, dtype)
    with precision(dtype):
        spectrum = np.asarray(ce_spectrum(logits, labels))
    height, width = labels.shape[1:]
    mirror_h, mirror_w = (-np.arange(height)) % height, (-np.arange(width)) % width
    mirrored = spectrum[:, mirror_h][:, :, mirror_w]  # L(-nu)
    # Equal up to rounding: columns 0 and W / 2 pair rows h and -h of the same rfft2.
    ce = references.spatial_ce(logits, labels)
    assert_within(mirrored, spectrum, COMPONENT_ATOL[dtype] * ce[:, None, None])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES[:4], ids=CASE_IDS[:4])
def test_half_spectrum_is_left_columns_and_weighted_sum_is_ce(rng, case, dtype):
    logits, labels = make_case(rng, case, dtype)
    width = labels.shape[2]
    with precision(dtype):
        half = np.asarray(ce_half_spectrum(logits, labels))
        full = np.asarray(ce_spectrum(logits, labels))
    assert half.shape == labels.shape[:2] + (width // 2 + 1,)
    np.testing.assert_array_equal(half, full[..., : width // 2 + 1])
    weighted = (half * sj.half_spectrum_weights(labels.shape[1:])).sum(axis=(1, 2))
    np.testing.assert_allclose(
        weighted, references.spatial_ce(logits, labels), rtol=SUM_RTOL[dtype]
    )


def test_single_class_has_zero_components_and_zero_discrepancy(rng):
    # With C = 1, log_softmax is 0: CE, every component and (by definition) R vanish.
    logits, labels = references.make_batch(rng, 2, 6, 7, 1, ignore_fraction=0.2)
    outputs = all_outputs(logits.astype(np.float32), labels, 0)
    for name in ["ce_spectrum", "truncated_ce", "relative_discrepancy_per_image"]:
        np.testing.assert_array_equal(outputs[name], 0.0, err_msg=name)
    np.testing.assert_array_equal(outputs["relative_discrepancy"], 0.0)
    np.testing.assert_array_equal(outputs["band_limit_sweep"], 0.0)
    np.testing.assert_array_equal(outputs["band_limit_sweep_per_image"], 0.0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_logits_are_computed_in_float32(rng, dtype):
    logits, labels = references.make_batch(rng, 2, 8, 9, 5, ignore_fraction=0.1)
    low = jnp.asarray(logits, dtype)
    exact = np.asarray(low.astype(jnp.float32), np.float64)  # the values the library saw
    spectrum = ce_spectrum(low, labels)
    assert spectrum.dtype == jnp.float32
    ce = references.spatial_ce(exact, labels)
    np.testing.assert_allclose(spectrum.sum(axis=(1, 2)), ce, rtol=SUM_RTOL["float32"])
    # Same as handing in the float32 values: the computation itself is float32.
    np.testing.assert_array_equal(spectrum, ce_spectrum(low.astype(jnp.float32), labels))


def test_float32_logits_stay_float32_under_x64(rng, x64):
    logits, labels = references.make_batch(rng, 1, 4, 5, 3)
    assert ce_spectrum(logits.astype(np.float32), labels).dtype == jnp.float32
    assert ce_spectrum(logits, labels).dtype == jnp.float64


@pytest.mark.parametrize("label_dtype", ["uint8", "int16", "int32", "int64"])
def test_label_dtypes_agree(rng, label_dtype, x64):
    logits, labels = references.make_batch(rng, 2, 6, 5, 4, ignore_fraction=0.3)
    expected = references.ce_spectrum(logits, labels)
    spectrum = ce_spectrum(logits, labels.astype(label_dtype))
    np.testing.assert_allclose(spectrum, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("ignore_mode", ["labels", "both"])
@pytest.mark.parametrize("ignore_index", [-1, 4, 1000])
def test_custom_ignore_index(rng, ignore_index, ignore_mode, x64):
    logits, labels = references.make_batch(
        rng, 2, 6, 5, 4, ignore_fraction=0.3, ignore_index=ignore_index
    )
    assert np.any(labels == ignore_index)
    settings = dict(ignore_index=ignore_index, ignore_mode=ignore_mode)
    expected = references.ce_spectrum(logits, labels, **settings)
    spectrum = ce_spectrum(logits, labels, **settings)
    np.testing.assert_allclose(spectrum, expected, rtol=0, atol=1e-12)
    changed = np.where((labels == ignore_index)[..., None], 1e3, logits)
    changed_spectrum = np.asarray(ce_spectrum(changed, labels, **settings))
    if ignore_mode == "both":  # ignored pixels are ignored: their logits change nothing
        np.testing.assert_array_equal(changed_spectrum, spectrum)
    else:  # they change the components, not their sum (the CE)
        assert np.max(np.abs(changed_spectrum - spectrum)) > 1e-2
        np.testing.assert_allclose(changed_spectrum.sum((1, 2)), spectrum.sum((1, 2)), atol=1e-9)


@pytest.mark.parametrize("shape", [(7, 9), (16, 12)])
def test_ignore_modes_agree_on_the_ce_and_differ_in_r(rng, shape):
    # A one-hot label is zero at an ignored pixel in both modes, so the CE (the sum of
    # the components) is the same; the components, the truncated CE and R differ.
    logits, labels = references.make_batch(rng, 3, *shape, 5, ignore_fraction=0.3)
    logits = logits.astype(np.float32)
    ce = references.spatial_ce(logits, labels)
    outputs = {}
    for mode in ("labels", "both"):
        spectrum = np.asarray(ce_spectrum(logits, labels, ignore_mode=mode))
        np.testing.assert_allclose(spectrum.sum((1, 2)), ce, rtol=1e-5)
        expected = references.ce_spectrum(logits, labels, ignore_mode=mode)
        assert_within(spectrum, expected, 1e-5 * np.abs(expected).max())
        sweep = np.asarray(sj.band_limit_sweep(logits, labels, ignore_mode=mode))
        profiles = references.band_sums(expected, "chebyshev")
        truncated = np.cumsum(profiles, axis=-1)  # [B, R]
        expected_r = np.abs(truncated.sum(0) - ce.sum()) / ce.sum()
        np.testing.assert_allclose(sweep, expected_r, atol=1e-5)
        outputs[mode] = sweep
    assert np.max(np.abs(outputs["labels"] - outputs["both"])) > 1e-2


def test_bad_ignore_mode_raises(small_batch):
    logits, labels = small_batch
    for fn in ALL_FUNCTIONS.values():
        with pytest.raises(ValueError, match="ignore_mode"):
            fn(logits, labels, ignore_mode="neither")
    with pytest.raises(ValueError, match="ignore_mode"):
        sj.SpectralStatistics.create((5, 6), 4, ignore_mode="labels_only")


def test_eager_call_matches_jit(rng):
    logits, labels = references.make_batch(rng, 2, 5, 6, 3, ignore_fraction=0.2)
    logits = logits.astype(np.float32)
    np.testing.assert_allclose(
        sj.ce_spectrum(logits, labels), ce_spectrum(logits, labels), rtol=1e-6, atol=1e-7
    )


# ---------------------------------------------------------------------------------------
# The class-sparse path (max_classes_present).


@pytest.mark.parametrize(
    ("max_classes_present", "dtype", "path"),
    [
        (3, "float32", "sparse"),
        (3, "float64", "sparse"),
        (5, "float64", "sparse"),
        (2, "float32", "overflow fallback"),
        (2, "float64", "overflow fallback"),
        (10, "float32", "k == C"),
        (12, "float64", "k > C"),
    ],
)
def test_class_sparse_path_equals_dense_and_reference(rng, max_classes_present, dtype, path):
    # Images hold exactly 3 of the 10 classes (and one image holds none: all ignored).
    logits, labels = references.make_batch(rng, 3, 8, 7, 10, classes_per_image=3)
    labels[:, ::3, ::2] = 255
    labels[2] = 255
    logits = logits.astype(dtype)
    assert all(len(np.unique(image[image != 255])) == 3 for image in labels[:2])
    with precision(dtype):
        dense = np.asarray(ce_spectrum(logits, labels))
        sparse = np.asarray(ce_spectrum(logits, labels, max_classes_present=max_classes_present))
    expected = references.ce_spectrum(logits, labels)
    ce = references.spatial_ce(logits, labels)
    np.testing.assert_allclose(sparse, dense, rtol=0, atol=COMPONENT_ATOL[dtype] * ce.max())
    assert np.all(np.abs(sparse - expected) <= COMPONENT_ATOL[dtype] * ce[:, None, None])
    np.testing.assert_array_equal(sparse[2], 0.0)


def test_class_sparse_overflow_in_one_image_keeps_the_batch_exact(rng, x64):
    # Image 0 has 2 classes, image 1 all 6: k = 2 must fall back for the whole batch.
    logits, labels = references.make_batch(rng, 2, 6, 6, 6, classes_per_image=2)
    labels[1] = np.arange(36).reshape(6, 6) % 6
    expected = references.ce_spectrum(logits, labels)
    sparse = ce_spectrum(logits, labels, max_classes_present=2)
    np.testing.assert_allclose(sparse, expected, rtol=0, atol=1e-12)


def test_class_sparse_path_flows_through_the_reductions(rng, x64):
    logits, labels = references.make_batch(rng, 2, 9, 8, 7, classes_per_image=2)
    spectrum = references.ce_spectrum(logits, labels)
    outputs = all_outputs(logits, labels, 2, radius="euclidean", max_classes_present=2)
    profiles = references.band_sums(spectrum, "euclidean")
    np.testing.assert_allclose(outputs["band_profile"], profiles, atol=1e-12)
    truncated = references.truncated_ce(spectrum, 2, "euclidean")
    np.testing.assert_allclose(outputs["truncated_ce"], truncated, atol=1e-12)
    ce = references.spatial_ce(logits, labels)
    per_image = outputs["relative_discrepancy_per_image"]
    np.testing.assert_allclose(per_image, np.abs(truncated - ce) / ce, atol=1e-12)
    cumulative = np.cumsum(profiles.sum(0))
    sweep = np.abs(cumulative - ce.sum()) / ce.sum()
    np.testing.assert_allclose(outputs["band_limit_sweep"], sweep, atol=1e-12)


@pytest.mark.parametrize("bad", [0, -2, 1.5, "2"])
def test_bad_max_classes_present_raises(rng, bad):
    logits, labels = references.make_batch(rng, 1, 4, 4, 3)
    with pytest.raises(ValueError, match="max_classes_present"):
        sj.ce_spectrum(logits.astype(np.float32), labels, max_classes_present=bad)


# ---------------------------------------------------------------------------------------
# Band profiles, truncation, R and the sweep.

# Every shape with both radii, and every radius with both dtypes.
BAND_CASES = [
    ((7, 9), "chebyshev", "float32"),
    ((7, 9), "euclidean", "float64"),
    ((8, 8), "euclidean", "float32"),
    ((8, 8), "chebyshev", "float64"),
    ((16, 12), "chebyshev", "float32"),
    ((16, 12), "euclidean", "float32"),
    ((1, 5), "euclidean", "float64"),
    ((1, 5), "chebyshev", "float32"),
]


@pytest.mark.parametrize(("shape", "radius", "dtype"), BAND_CASES)
def test_band_profile_matches_reference_loops(rng, shape, radius, dtype):
    logits, labels = references.make_batch(rng, 2, *shape, 4, ignore_fraction=0.2)
    logits = logits.astype(dtype)
    expected = references.band_sums(references.ce_spectrum(logits, labels), radius)
    ce = references.spatial_ce(logits, labels)
    with precision(dtype):
        profile = np.asarray(band_profile(logits, labels, radius=radius))
    assert profile.shape == (2, sj.num_bands(shape, radius=radius))
    assert np.all(np.abs(profile - expected) <= COMPONENT_ATOL[dtype] * ce[:, None])
    np.testing.assert_allclose(profile.sum(axis=1), ce, rtol=SUM_RTOL[dtype])


@pytest.mark.parametrize(
    ("shape", "radius", "dtype"),
    [
        ((7, 9), "chebyshev", "float32"),
        ((8, 6), "euclidean", "float32"),
        ((16, 12), "chebyshev", "float64"),
        ((7, 9), "euclidean", "float64"),
    ],
)
def test_truncated_ce_and_discrepancy_match_reference_at_every_band_limit(
    rng, shape, radius, dtype
):
    logits, labels = references.make_batch(rng, 3, *shape, 5, ignore_fraction=0.2)
    logits = logits.astype(dtype)
    spectrum = references.ce_spectrum(logits, labels)
    ce = references.spatial_ce(logits, labels)
    num_bands = sj.num_bands(shape, radius=radius)
    tol = 10 * COMPONENT_ATOL[dtype]  # a sum of components; R divides by the CE
    # Band limits -1 (nothing kept) .. R (everything kept) and a non-integer one, all as
    # float32 so that one compilation serves them all (other tests pass Python ints).
    for band_limit in [-1, *range(num_bands + 1), 1.5]:
        with precision(dtype):
            outputs = all_outputs(logits, labels, np.float32(band_limit), radius=radius)
        truncated = references.truncated_ce(spectrum, band_limit, radius)
        assert_within(outputs["truncated_ce"], truncated, tol * ce)
        per_image = np.abs(truncated - ce) / ce
        assert_within(outputs["relative_discrepancy_per_image"], per_image, tol)
        assert outputs["relative_discrepancy"].shape == ()
        batch = references.ratio_of_sums(truncated, ce)
        assert_within(outputs["relative_discrepancy"], batch, tol)
        if band_limit < 0:
            np.testing.assert_array_equal(outputs["truncated_ce"], 0.0)
        if band_limit >= num_bands - 1:
            np.testing.assert_allclose(outputs["truncated_ce"], ce, rtol=SUM_RTOL[dtype])


@pytest.mark.parametrize(("shape", "radius"), [((7, 9), "chebyshev"), ((8, 6), "euclidean")])
def test_sweep_equals_discrepancy_at_every_band_limit(rng, shape, radius):
    logits, labels = references.make_batch(rng, 3, *shape, 4, ignore_fraction=0.2)
    logits = logits.astype(np.float32)
    num_bands = sj.num_bands(shape, radius=radius)
    sweep = all_outputs(logits, labels, radius=radius)["band_limit_sweep"]
    sweep_per_image = all_outputs(logits, labels, radius=radius)["band_limit_sweep_per_image"]
    assert sweep.shape == (num_bands,) and sweep_per_image.shape == (3, num_bands)
    for band_limit in range(num_bands):
        outputs = all_outputs(logits, labels, band_limit, radius=radius)
        at_limit, per_image = (
            outputs["relative_discrepancy"],
            outputs["relative_discrepancy_per_image"],
        )
        np.testing.assert_allclose(sweep[band_limit], at_limit, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sweep_per_image[:, band_limit], per_image, rtol=1e-5, atol=1e-6)
    # Exactly 0 at the last band, by construction; never negative.
    np.testing.assert_array_equal(sweep[-1], 0.0)
    np.testing.assert_array_equal(sweep_per_image[:, -1], 0.0)
    assert np.all(sweep >= 0) and np.all(sweep_per_image >= 0)


def test_discrepancy_is_a_ratio_of_batch_sums_by_hand():
    # 1 x 2 images, C = 2: band 0 is nu = 0, band 1 is nu = 1, and with N = H W = 2
    #   L(1) = 1/4 sum_c (B0c - B1c)(A0c - A1c),  A = -log_softmax.
    # Image 0: labels [0, 1], logits (0, 0), (0, ln 3): A = (ln2, ln2), (ln4, ln 4/3).
    #   CE0 = (ln2 + ln 4/3) / 2 = ln(8/3) / 2 and L0(1) = ((ln2 - ln4) - (ln2 - ln 4/3)) / 4
    #   = -ln(3) / 4, so the truncated CE at band 0 exceeds the CE by ln(3) / 4.
    # Image 1: labels [0, 0] (b(1) = 0, nothing lost), logits (0, ln 3), (0, 0):
    #   CE1 = (ln4 + ln2) / 2 = ln(8) / 2.
    # Image 2: every pixel ignored (CE 0): counts for nothing in the batch ratio.
    logits = np.log(np.array([[[[1, 1], [1, 3]]], [[[1, 3], [1, 1]]], [[[1, 1], [1, 1]]]]))
    labels = np.array([[[0, 1]], [[0, 0]], [[255, 255]]])
    outputs = all_outputs(logits.astype(np.float32), labels, 0)
    ce = np.array([math.log(8 / 3) / 2, math.log(8) / 2, 0.0])
    lost = np.array([math.log(3) / 4, 0.0, 0.0])
    np.testing.assert_allclose(outputs["band_profile"][:, 1], -lost, atol=1e-6)
    np.testing.assert_allclose(outputs["truncated_ce"], ce + lost, rtol=1e-6)

    batch = math.log(3) / (2 * math.log(64 / 3))  # (ln3 / 4) / ((ln(8/3) + ln 8) / 2)
    per_image = [math.log(3) / (2 * math.log(8 / 3)), 0.0, 0.0]
    np.testing.assert_allclose(outputs["relative_discrepancy"], batch, rtol=1e-5)
    np.testing.assert_allclose(outputs["relative_discrepancy_per_image"], per_image, rtol=1e-5)
    np.testing.assert_allclose(outputs["band_limit_sweep"], [batch, 0.0], rtol=1e-5)
    # A ratio of means (0.1795), not a mean of ratios (0.1867 with the empty image, 0.28
    # without): the checks above tell them apart.
    assert not np.isclose(batch, np.mean(per_image), rtol=1e-2)
    assert not np.isclose(batch, np.mean(per_image[:2]), rtol=1e-2)


@pytest.mark.parametrize("per_image", [False, True])
def test_sweep_from_band_profile_over_leading_axes(rng, per_image):
    profiles = rng.uniform(-0.1, 1.0, size=(2, 3, 4, 5)).astype(np.float32)  # [A, A', B, R]
    sweep_fn = jax.jit(sj.sweep_from_band_profile, static_argnames="per_image")
    sweep = np.asarray(sweep_fn(profiles, per_image=per_image))
    assert sweep.shape == ((2, 3, 4, 5) if per_image else (2, 3, 5))
    cumulative = np.cumsum(profiles.astype(np.float64), axis=-1)
    total = cumulative[..., -1:]
    if per_image:
        expected = np.abs(cumulative - total) / total
    else:
        expected = np.abs(cumulative.sum(-2) - total.sum(-2)) / total.sum(-2)
    np.testing.assert_allclose(sweep, expected, rtol=1e-5, atol=1e-6)
    for leading in [(0,), (1, 2)]:
        one = sweep_fn(profiles[leading], per_image=per_image)
        np.testing.assert_allclose(sweep[leading], one, rtol=1e-6)


def test_sweep_from_band_profile_rejects_a_single_profile():
    with pytest.raises(AssertionError):
        sj.sweep_from_band_profile(np.ones(5, np.float32))


@pytest.mark.parametrize("fn", ["truncated_ce", "relative_discrepancy"])
def test_vmap_over_band_limits_traces_once_and_equals_the_loop(rng, fn):
    logits, labels = references.make_batch(rng, 2, 7, 8, 3, ignore_fraction=0.1)
    logits = logits.astype(np.float32)
    library_fn = getattr(sj, fn)
    traces = {"vmapped": 0, "scalar": 0}

    def at_band_limits(logits, labels, band_limits):
        traces["vmapped"] += 1
        return jax.vmap(lambda r: library_fn(logits, labels, r))(band_limits)

    def at_band_limit(logits, labels, band_limit):
        traces["scalar"] += 1
        return library_fn(logits, labels, band_limit)

    vmapped, scalar = jax.jit(at_band_limits), jax.jit(at_band_limit)
    num_bands = sj.num_bands((7, 8))
    band_limits = jnp.arange(-1, num_bands + 1)
    swept = vmapped(logits, labels, band_limits)
    vmapped(logits, labels, band_limits[::-1])  # new values, same shape: no new trace
    # A band limit is traced, not static: a loop over plain ints compiles once too.
    looped = [scalar(logits, labels, band_limit) for band_limit in range(-1, num_bands + 1)]
    assert traces == {"vmapped": 1, "scalar": 1}
    np.testing.assert_allclose(swept, np.stack(looped), rtol=1e-6, atol=1e-7)
    spectrum = references.ce_spectrum(logits, labels)
    expected = [references.truncated_ce(spectrum, r, "chebyshev") for r in band_limits]
    if fn == "relative_discrepancy":
        ce = references.spatial_ce(logits, labels)
        expected = [references.ratio_of_sums(truncated, ce) for truncated in expected]
    np.testing.assert_allclose(swept, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Gradients.


@pytest.mark.parametrize("ignore_mode", ["labels", "both"])
@pytest.mark.parametrize("radius", RADII)
def test_grad_of_truncated_ce_matches_finite_differences(rng, radius, ignore_mode, x64):
    logits, labels = references.make_batch(rng, 2, 3, 4, 3)
    labels[0, 1, 2] = labels[1, 0, 0] = 255
    weights = np.array([0.7, 1.3])  # distinguishes the images
    band_limit = 1

    def reference_loss(x):
        spectrum = references.ce_spectrum(x, labels, ignore_mode=ignore_mode)
        return weights @ references.truncated_ce(spectrum, band_limit, radius)

    def loss(x):
        truncated = sj.truncated_ce(x, labels, band_limit, radius=radius, ignore_mode=ignore_mode)
        return jnp.dot(weights, truncated)

    grad = np.asarray(jax.jit(jax.grad(loss))(logits))
    eps = 1e-6
    numeric = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        step = np.zeros_like(logits)
        step[index] = eps
        numeric[index] = (reference_loss(logits + step) - reference_loss(logits - step)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=0, atol=1e-8)
    # Forward mode agrees with reverse mode (the library defines a custom JVP).
    forward = np.asarray(jax.jit(jax.jacfwd(loss))(logits))
    np.testing.assert_allclose(forward, grad, rtol=0, atol=1e-12)
    if ignore_mode == "both":  # the truncated loss does not depend on ignored pixels
        np.testing.assert_array_equal(grad[0, 1, 2], 0.0)
        np.testing.assert_array_equal(grad[1, 0, 0], 0.0)
    else:  # their log-probabilities are transformed: the truncated loss depends on them
        assert np.abs(grad[0, 1, 2]).max() > 1e-5 and np.abs(grad[1, 0, 0]).max() > 1e-5
    # Truncation changes the gradient (otherwise this test could not tell them apart).
    full_ce = lambda x: jnp.dot(weights, sj.truncated_ce(x, labels, 99, ignore_mode=ignore_mode))
    full = jax.jit(jax.grad(full_ce))(logits)
    assert np.abs(grad - full).max() > 1e-3


@pytest.mark.parametrize("ignore_mode", ["labels", "both"])
@pytest.mark.parametrize(
    ("dtype", "max_classes_present"), [("float32", None), ("float64", None), ("float32", 3)]
)
def test_grad_of_untruncated_ce_is_softmax_minus_one_hot(
    rng, dtype, max_classes_present, ignore_mode
):
    logits, labels = references.make_batch(rng, 2, 5, 6, 4, ignore_fraction=0.3)
    logits = logits.astype(dtype)
    weights = np.array([0.5, 2.0], dtype)
    settings = dict(max_classes_present=max_classes_present, ignore_mode=ignore_mode)

    def loss(x):
        return jnp.dot(weights, sj.truncated_ce(x, labels, 1000, **settings))

    with precision(dtype):
        grad = np.asarray(jax.jit(jax.grad(loss))(logits))
    valid = labels != 255
    one_hot = (labels[..., None] == np.arange(4)) & valid[..., None]
    softmax = np.exp(references.log_softmax(logits))
    num_valid = valid.sum(axis=(1, 2))[:, None, None, None]
    expected = np.where(valid[..., None], softmax - one_hot, 0.0) * weights[:, None, None, None]
    expected /= num_valid
    np.testing.assert_allclose(grad, expected, rtol=0, atol=SUM_RTOL[dtype] / 10)
    if ignore_mode == "both":  # exactly: the log-probabilities there are not transformed
        np.testing.assert_array_equal(grad[~valid], 0.0)


# ---------------------------------------------------------------------------------------
# Input errors and degenerate inputs.

ALL_FUNCTIONS = {
    "ce_spectrum": sj.ce_spectrum,
    "ce_half_spectrum": sj.ce_half_spectrum,
    "band_profile": sj.band_profile,
    "truncated_ce": functools.partial(sj.truncated_ce, band_limit=2),
    "relative_discrepancy": functools.partial(sj.relative_discrepancy, band_limit=2),
    "band_limit_sweep": sj.band_limit_sweep,
    "magnitude_profiles": sj.magnitude_profiles,
}


@pytest.fixture
def small_batch(rng):
    logits, labels = references.make_batch(rng, 3, 5, 6, 4, ignore_fraction=0.2)
    return logits.astype(np.float32), labels


@pytest.mark.parametrize("name", ALL_FUNCTIONS)
def test_rank_and_shape_errors(small_batch, name):
    fn = ALL_FUNCTIONS[name]
    logits, labels = small_batch
    with pytest.raises(ValueError, match="logits"):
        fn(logits[0], labels)  # [H, W, C]
    with pytest.raises(ValueError, match="labels"):
        fn(logits, labels[0])  # [H, W]
    with pytest.raises(ValueError, match="disagree"):
        fn(logits, labels[:, :, :-1])
    with pytest.raises(ValueError, match="disagree"):
        fn(logits[:2], labels)
    with pytest.raises(ValueError, match="at least one class"):
        fn(logits[..., :0], labels)


@pytest.mark.parametrize("name", ALL_FUNCTIONS)
def test_dtype_errors(small_batch, name):
    fn = ALL_FUNCTIONS[name]
    logits, labels = small_batch
    with pytest.raises(TypeError, match="logits"):
        fn(logits.astype(np.int32), labels)
    with pytest.raises(TypeError, match="labels"):
        fn(logits, labels.astype(np.float32))


@pytest.mark.parametrize("name", ALL_FUNCTIONS)
@pytest.mark.parametrize("bad_label", [4, -1, 254])
def test_out_of_range_label_raises_eagerly(small_batch, name, bad_label):
    logits, labels = small_batch
    labels = labels.copy()
    labels[1, 2, 3] = bad_label
    with pytest.raises(ValueError, match="labels must lie in"):
        ALL_FUNCTIONS[name](logits, labels)


@pytest.mark.parametrize("name", ALL_FUNCTIONS)
@pytest.mark.parametrize("ignore_index", [0, 3])
def test_ignore_index_inside_the_classes_raises(small_batch, name, ignore_index):
    logits, labels = small_batch
    with pytest.raises(ValueError, match="ignore_index"):
        ALL_FUNCTIONS[name](logits, np.minimum(labels, 3), ignore_index=ignore_index)


@pytest.mark.parametrize("fn", [sj.truncated_ce, sj.relative_discrepancy])
def test_non_scalar_band_limit_raises(small_batch, fn):
    logits, labels = small_batch
    with pytest.raises(ValueError, match="band_limit"):
        fn(logits, labels, jnp.array([1, 2]))
    with pytest.raises(ValueError, match="band_limit"):
        fn(logits, labels, np.ones((1,)))


@pytest.mark.parametrize("fn", [sj.truncated_ce, sj.relative_discrepancy])
@pytest.mark.parametrize("bad", ["2", b"2", True, None, 1 + 2j, np.complex64(1)])
def test_non_real_band_limit_raises_type_error(small_batch, fn, bad):
    logits, labels = small_batch
    with pytest.raises(TypeError, match="band_limit"):
        fn(logits, labels, bad)


@pytest.mark.parametrize("fn", [sj.truncated_ce, sj.relative_discrepancy])
@pytest.mark.parametrize("nan", [float("nan"), np.float32("nan"), jnp.array(jnp.nan)])
def test_nan_band_limit_raises_eagerly_and_is_nan_under_jit(small_batch, fn, nan):
    logits, labels = small_batch
    with pytest.raises(ValueError, match="band_limit is NaN"):
        fn(logits, labels, nan)
    traced = jax.jit(fn)(logits, labels, jnp.float32(jnp.nan))
    assert np.all(np.isnan(np.asarray(traced)))
    # ... and per band limit under vmap: only the NaN entry.
    limits = jnp.array([1.0, jnp.nan, 2.0], jnp.float32)
    swept = np.asarray(jax.vmap(lambda b: fn(logits, labels, b))(limits))
    assert np.isnan(swept[1]).all() and not np.isnan(swept[[0, 2]]).any()


@pytest.mark.parametrize("big", [2**31, 2**40, np.int64(2**40), np.array(2**32), 10**30])
def test_huge_integer_band_limit_keeps_every_band(small_batch, big):
    # Without x64 such an int cannot become int32; it selects every band, as R - 1 does.
    logits, labels = small_batch
    num_bands = sj.num_bands(logits.shape[1:3])
    ce = references.spatial_ce(logits.astype(np.float64), labels)
    np.testing.assert_allclose(sj.truncated_ce(logits, labels, big), ce, rtol=1e-5)
    np.testing.assert_allclose(sj.truncated_ce(logits, labels, -big), np.zeros_like(ce), atol=0)
    assert float(sj.relative_discrepancy(logits, labels, big)) == pytest.approx(0.0, abs=1e-6)
    assert num_bands < 2**31


@pytest.mark.parametrize("name", ALL_FUNCTIONS)
@pytest.mark.parametrize("empty", [(3, 0, 6), (3, 5, 0), (3, 0, 0)])
def test_empty_image_raises(name, empty):
    logits = np.zeros((*empty, 4), np.float32)
    labels = np.zeros(empty, np.int32)
    with pytest.raises(ValueError, match="non-empty image"):
        ALL_FUNCTIONS[name](logits, labels)


@pytest.mark.parametrize("fn", [band_profile, band_limit_sweep, magnitude_profiles])
def test_bad_radius_raises(small_batch, fn):
    # Jitted wrappers: radius is static, so the error comes from tracing (no compile).
    logits, labels = small_batch
    with pytest.raises(ValueError, match="radius"):
        fn(logits, labels, radius="manhattan")


@pytest.mark.parametrize("max_classes_present", [None, 2])
def test_out_of_range_label_under_jit_poisons_only_its_image(small_batch, max_classes_present):
    logits, labels = small_batch
    bad = labels.copy()
    bad[1, 2, 3] = 7  # C = 4
    good = np.array([0, 2])
    outputs = all_outputs(logits, bad, max_classes_present=max_classes_present)
    expected = all_outputs(logits, labels, max_classes_present=max_classes_present)
    for name, value in outputs.items():
        if name in ["relative_discrepancy", "band_limit_sweep"]:
            assert np.all(np.isnan(value)), name  # a batch ratio that cannot be trusted
        else:
            assert np.all(np.isnan(value[1])), name
            np.testing.assert_array_equal(value[good], expected[name][good], err_msg=name)
    spectrum = references.ce_spectrum(logits, labels)
    np.testing.assert_allclose(outputs["ce_spectrum"][good], spectrum[good], atol=1e-6)


def test_all_ignored_image_gives_zeros_not_nan(small_batch):
    logits, labels = small_batch
    labels = labels.copy()
    labels[1] = 255
    outputs = all_outputs(logits, labels)
    # |y_hat| is not zero: the default mode transforms the log-probabilities everywhere.
    nonzero = ["relative_discrepancy", "band_limit_sweep", "magnitude_logits"]
    for name, value in outputs.items():
        if name not in nonzero:
            np.testing.assert_array_equal(value[1], 0.0, err_msg=name)
        assert not np.any(np.isnan(value)), name
    assert np.all(outputs["magnitude_logits"][1, :1] > 0)
    # The empty image adds nothing to the batch ratio.
    others = np.array([0, 2])
    without = all_outputs(logits[others], labels[others])
    for name in ["relative_discrepancy", "band_limit_sweep"]:
        np.testing.assert_allclose(outputs[name], without[name], rtol=1e-5, atol=1e-6)
    # A batch without any valid pixel: CE 0, so R = 0.
    empty = all_outputs(logits, np.full_like(labels, 255))
    for name, value in empty.items():
        if name != "magnitude_logits":
            np.testing.assert_array_equal(value, 0.0, err_msg=name)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_logits(small_batch, bad_value):
    logits, labels = small_batch
    labels = labels.copy()
    labels[0, 1, 1] = 255  # an ignored pixel
    labels[2, 3, 4] = 1  # a valid pixel
    expected = all_outputs(logits, labels)
    # At an ignored pixel: harmless. Its log-probabilities count as 0 in the default mode
    # (the reference does the same); with both maps zeroed, nothing changes at all.
    at_ignored = logits.copy()
    at_ignored[0, 1, 1, 2] = bad_value
    outputs = all_outputs(at_ignored, labels)
    for name, value in outputs.items():
        assert np.all(np.isfinite(value)), name
        if name not in ("relative_discrepancy", "band_limit_sweep"):  # batch ratios
            np.testing.assert_array_equal(value[1:], expected[name][1:], err_msg=name)
    reference = references.ce_spectrum(at_ignored, labels)
    assert_within(outputs["ce_spectrum"], reference, 1e-6 * np.abs(reference).max())
    both = functools.partial(sj.ce_spectrum, ignore_mode="both")
    np.testing.assert_allclose(both(at_ignored, labels), both(logits, labels), rtol=1e-6, atol=1e-7)
    # At a valid pixel (and any class): that image's results are not finite (NaN, or
    # +inf at nu = 0 for a -inf logit), the other images' are untouched.
    at_valid = logits.copy()
    at_valid[2, 3, 4, 0] = bad_value
    outputs = all_outputs(at_valid, labels)
    for name in ["ce_spectrum", "band_profile", "truncated_ce", "band_limit_sweep_per_image"]:
        assert not np.any(np.isfinite(outputs[name][2])), name
        np.testing.assert_array_equal(outputs[name][:2], expected[name][:2], err_msg=name)
    if np.isnan(bad_value):
        assert np.all(np.isnan(outputs["ce_spectrum"][2]))


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_grad_ignores_non_finite_logits_at_ignored_pixels(small_batch, bad_value):
    # Ignored pixels contribute nothing, so the gradient there is 0, whatever the logits
    # (padding is often filled with NaN or inf). A NaN here would spread to every weight.
    logits, labels = small_batch
    labels = labels.copy()
    labels[0, 1, 1] = 255
    at_ignored = logits.copy()
    at_ignored[0, 1, 1, 2] = bad_value
    for ignore_mode in ("labels", "both"):
        loss = lambda x: jnp.sum(sj.truncated_ce(x, labels, 1, ignore_mode=ignore_mode))  # noqa: B023
        grad_fn = jax.jit(jax.grad(loss))
        grad = np.asarray(grad_fn(at_ignored))
        np.testing.assert_array_equal(grad[0, 1, 1], 0.0)
        # Elsewhere the gradient is the one of finite logits (the truncated CE is linear in
        # the log-probabilities, so theirs at the ignored pixel does not enter it).
        finite = np.array(grad_fn(logits))
        finite[0, 1, 1] = 0.0
        np.testing.assert_allclose(grad, finite, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("max_classes_present", [None, 2])
def test_empty_batch(max_classes_present):
    # B = 0 (say, the empty remainder of a data set split over hosts) is a valid shape:
    # no image, so nothing to decompose, and R over no images is 0 (CE 0).
    logits, labels = np.zeros((0, 4, 5, 3), np.float32), np.zeros((0, 4, 5), np.int32)
    outputs = all_outputs(logits, labels, max_classes_present=max_classes_present)
    num_bands = sj.num_bands((4, 5))
    expected_shapes = {
        "ce_spectrum": (0, 4, 5),
        "band_profile": (0, num_bands),
        "truncated_ce": (0,),
        "relative_discrepancy": (),
        "relative_discrepancy_per_image": (0,),
        "band_limit_sweep": (num_bands,),
        "band_limit_sweep_per_image": (0, num_bands),
        "magnitude_labels": (0, num_bands),
        "magnitude_logits": (0, num_bands),
    }
    assert {name: value.shape for name, value in outputs.items()} == expected_shapes
    np.testing.assert_array_equal(outputs["relative_discrepancy"], 0.0)
    np.testing.assert_array_equal(outputs["band_limit_sweep"], 0.0)


# ---------------------------------------------------------------------------------------
# Class chunks and eager calls.


@functools.partial(jax.jit, static_argnames="class_chunk_size")
def _chunked_outputs(logits, labels, class_chunk_size):
    settings = dict(class_chunk_size=class_chunk_size)
    truncated = lambda x: jnp.sum(sj.truncated_ce(x, labels, 100, **settings))
    return {
        "dense": sj.ce_spectrum(logits, labels, **settings),
        "sparse": sj.ce_spectrum(logits, labels, max_classes_present=5, **settings),
        "magnitudes": sj.magnitude_profiles(logits, labels, **settings),
        "grad": jax.grad(truncated)(logits),
    }


@pytest.mark.parametrize("class_chunk_size", [1, 3, 7, 100])
def test_class_chunk_size_does_not_change_the_values(rng, class_chunk_size, x64):
    # C = 7: chunks of 3 leave a remainder step, 7 is one chunk, 100 is clipped to C.
    logits, labels = references.make_batch(rng, 2, 6, 9, 7, ignore_fraction=0.2)
    outputs = _chunked_outputs(logits, labels, class_chunk_size)
    expected = references.ce_spectrum(logits, labels)
    np.testing.assert_allclose(outputs["dense"], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(outputs["sparse"], expected, rtol=0, atol=1e-12)
    expected_labels, expected_logits = references.magnitude_profiles(logits, labels, "chebyshev")
    np.testing.assert_allclose(outputs["magnitudes"].labels, expected_labels, rtol=1e-12)
    np.testing.assert_allclose(outputs["magnitudes"].logits, expected_logits, rtol=1e-12)
    # The gradient of the CE through the chunks: softmax minus one-hot over N.
    valid = labels != 255
    one_hot = np.eye(7)[np.where(valid, labels, 0)]
    softmax = np.exp(references.log_softmax(logits))
    expected_grad = np.where(valid[..., None], softmax - one_hot, 0.0)
    expected_grad /= valid.sum((1, 2))[:, None, None, None]
    np.testing.assert_allclose(outputs["grad"], expected_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, None])
def test_bad_class_chunk_size_raises(small_batch, bad):
    logits, labels = small_batch
    for fn in ALL_FUNCTIONS.values():
        with pytest.raises(ValueError, match="class_chunk_size must be a positive int"):
            fn(logits, labels, class_chunk_size=bad)


# ---------------------------------------------------------------------------------------
# Magnitude profiles.


@pytest.mark.parametrize("ignore_mode", ["labels", "both"])
@pytest.mark.parametrize(
    ("shape", "radius", "dtype"), BAND_CASES[:4] + [((1, 4), "euclidean", "float32")]
)
def test_magnitude_profiles_match_reference(rng, shape, radius, dtype, ignore_mode):
    logits, labels = references.make_batch(rng, 2, *shape, 5, ignore_fraction=0.2)
    logits = logits.astype(dtype)
    expected_labels, expected_logits = references.magnitude_profiles(
        logits, labels, radius, ignore_mode=ignore_mode
    )
    with precision(dtype):
        profiles = magnitude_profiles(logits, labels, radius=radius, ignore_mode=ignore_mode)
        profiles = jax.tree.map(np.asarray, profiles)
    assert isinstance(profiles, sj.MagnitudeProfiles)
    assert profiles.labels.shape == (2, sj.num_bands(shape, radius=radius))
    assert profiles.labels.dtype == dtype and profiles.logits.dtype == dtype
    rtol = {"float32": 2e-5, "float64": 1e-12}[dtype]
    np.testing.assert_allclose(profiles.labels, expected_labels, rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(profiles.logits, expected_logits, rtol=rtol, atol=rtol * 1e-2)
    # Closed forms at nu = 0: the class counts and the summed -log p, over C H W.
    height, width = shape
    valid = labels != 255
    np.testing.assert_allclose(
        profiles.labels[:, 0], valid.sum((1, 2)) / (5 * height * width), rtol=rtol
    )
    kept = valid if ignore_mode == "both" else np.ones_like(valid)
    neg_log_probs = np.where(kept[..., None], -references.log_softmax(logits), 0.0)
    np.testing.assert_allclose(
        profiles.logits[:, 0], neg_log_probs.sum((1, 2, 3)) / (5 * height * width), rtol=rtol
    )


# ---------------------------------------------------------------------------------------
# Properties over random shapes.


# [B, H, W, C] grids of the Parseval property: a row, a column, odd and even sides, one
# class (CE 0); the examples draw the content on a grid, so that each grid compiles once.
GRIDS = ((3, 1, 12, 2), (1, 11, 1, 6), (2, 7, 9, 1), (2, 12, 10, 5))


@st.composite
def batches(draw):
    batch, height, width, num_classes = draw(st.sampled_from(GRIDS))
    ignore_fraction = draw(st.sampled_from([0.0, 0.3, 0.9]))
    seed = draw(st.integers(0, 2**32 - 1))
    logits, labels = references.make_batch(
        np.random.default_rng(seed),
        batch,
        height,
        width,
        num_classes,
        ignore_fraction=ignore_fraction,
    )
    return logits.astype(np.float32), labels


@jax.jit
def _spectrum_sweep_and_ends(logits, labels):
    """The spectrum, and per radius the per-image sweep and the CE truncated at the last band."""
    ends = {}
    for radius in RADII:
        num_bands = sj.num_bands(labels.shape[1:], radius=radius)
        ends[radius] = (
            sj.band_limit_sweep(logits, labels, radius=radius, per_image=True),
            sj.truncated_ce(logits, labels, num_bands - 1, radius=radius),
        )
    return sj.ce_spectrum(logits, labels), ends


@settings(max_examples=20, deadline=None)
@given(batches())
def test_property_parseval_and_sweep_endpoints(batch):
    logits, labels = batch
    spectrum, ends = jax.device_get(_spectrum_sweep_and_ends(logits, labels))
    ce = references.spatial_ce(logits, labels)
    # Parseval; an image with no valid pixel (or C = 1) has CE 0 and zero components.
    np.testing.assert_allclose(np.sum(spectrum, axis=(1, 2)), ce, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(spectrum, references.ce_spectrum(logits, labels), atol=1e-6)
    for radius, (sweep, everything) in ends.items():
        assert sweep.shape == (labels.shape[0], sj.num_bands(labels.shape[1:], radius=radius))
        assert np.all(np.isfinite(sweep)) and np.all(sweep >= 0)
        np.testing.assert_array_equal(sweep[:, -1], 0.0)
        np.testing.assert_allclose(everything, ce, rtol=1e-5, atol=1e-6)
        # Band 0 alone keeps only nu = 0: R(0) CE = |L(0) - CE| (compared as a product,
        # since a ratio to a small CE would amplify float32 rounding). L(0) and the CE are
        # float32 sums of log-probabilities up to ~2 max|logit| + log C in size: the
        # tolerance scales with the logits, as in the decomposition property below (a
        # 1 x 12 image with one valid pixel and logits up to 5.3 erred by 1.9e-5).
        zero = np.asarray(spectrum)[:, 0, 0].astype(np.float64)
        tolerance = 1e-5 * (1.0 + np.max(np.abs(logits)))
        np.testing.assert_allclose(sweep[:, 0] * ce, np.abs(zero - ce), rtol=0, atol=tolerance)


@pytest.mark.parametrize("big", [2**31, 2**32 - 1])
def test_huge_unsigned_band_limit_keeps_every_band(small_batch, big):
    # A jnp.uint32 of 2**31 or more wrapped negative against the int32 bands (x64 off):
    # truncated CE 0, R 1.0. It is clipped like the signed integers.
    logits, labels = small_batch
    ce = references.spatial_ce(logits.astype(np.float64), labels)
    limit = jnp.uint32(big)
    np.testing.assert_allclose(sj.truncated_ce(logits, labels, limit), ce, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(sj.truncated_ce)(logits, labels, limit), ce, rtol=1e-5)
    limits = jnp.array([0, big], jnp.uint32)
    swept = jax.vmap(lambda b: sj.relative_discrepancy(logits, labels, b))(limits)
    want_r0 = abs(np.sum(references.ce_spectrum(logits, labels)[:, 0, 0]) - ce.sum()) / ce.sum()
    np.testing.assert_allclose(np.asarray(swept), [want_r0, 0.0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", [*ALL_FUNCTIONS, "spectral_iou", "statistics"])
def test_ignore_index_the_label_dtype_cannot_hold_raises(small_batch, name):
    # uint8 labels compared with 256 wrapped it to 0: class-0 pixels were ignored (CE off
    # by 0.007, IoU by 0.106).
    logits, labels = small_batch
    labels = np.where(labels == 255, 0, labels).astype(np.uint8)
    fn = {
        **ALL_FUNCTIONS,
        "spectral_iou": lambda z, y, **kw: sj.spectral_iou(jax.nn.softmax(z), y, **kw),
        "statistics": lambda z, y, **kw: sj.SpectralStatistics.create(
            z.shape[1:3], z.shape[-1], **kw
        ).update(z, y),
    }[name]
    with pytest.raises(ValueError, match="ignore_index=256 does not fit the uint8 labels"):
        fn(logits, labels, ignore_index=256)


def _with_sentinel(logits, labels):
    """``logits`` with class 0's logit 1e10 at the ignored pixels (a padding sentinel)."""
    assert (labels == 255).any()
    filled = logits.copy()
    filled[labels == 255, 0] = 1e10  # one class's logit: A = 1e10 for the others
    return filled


@pytest.mark.parametrize("name", [n for n in ALL_FUNCTIONS if n != "magnitude_profiles"])
def test_a_sentinel_at_ignored_pixels_warns_in_the_labels_mode(small_batch, name):
    # Padding filled with a large finite logit: in the "labels" mode the components read
    # it and float32 loses the CE (total CE 8 instead of 1.93 at 1e10). Only the
    # Parseval check shows it.
    logits, labels = small_batch
    with pytest.warns(sj.ParsevalWarning, match=rf"{name}: the CE components of image"):
        ALL_FUNCTIONS[name](_with_sentinel(logits, labels), labels)


def test_a_sentinel_is_harmless_in_the_both_mode_and_recorded_under_jit(small_batch):
    logits, labels = small_batch
    filled = _with_sentinel(logits, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # "both" zeroes the ignored pixels' maps: the sentinel changes nothing.
        np.testing.assert_allclose(
            sj.ce_spectrum(filled, labels, ignore_mode="both"),
            references.ce_spectrum(logits, labels, ignore_mode="both"),
            atol=1e-6,
        )
        # Under jit nothing is read back: no warning.
        jax.jit(sj.ce_spectrum)(filled, labels)
    # The statistics warn eagerly and record it under jit.
    stats = sj.SpectralStatistics.create(labels.shape[1:], 4)
    with pytest.warns(sj.ParsevalWarning, match="SpectralStatistics.update"):
        stats.update(filled, labels)
    update = jax.jit(lambda s, z, y: s.update(z, y))
    assert float(update(stats, filled, labels).parseval_error()) > 1e-3
    assert float(update(stats, logits, labels).parseval_error()) < 1e-5


# The identities of the decomposition over random content, compiled once per canvas (each
# with its dtype): an example draws its image size inside a fixed canvas (the rest is ignored
# padding with random logits, which the "labels" mode transforms), its class pool, ignore
# pattern, logit scale and band limits; both ignore modes and both radii are computed in
# the same program.
# [B, H, W, C] and logits dtype: odd and even grids, float32 and bfloat16 (upcast to
# float32 on entry, whatever the grid).
CANVASES = (((2, 7, 9, 4), "bfloat16"), ((3, 8, 6, 6), "float32"))
SPARSE_K = 2  # max_classes_present of the class-sparse path


@functools.partial(jax.jit, static_argnames="canvas")
def _identities(logits, labels, band_limits, canvas):
    del canvas  # the shapes' key, for the reader: one compilation per canvas and dtype
    out = {}
    for mode in ("labels", "both"):
        out[mode, "spectrum"] = sj.ce_spectrum(logits, labels, ignore_mode=mode)
        out[mode, "sparse"] = sj.ce_spectrum(
            logits, labels, ignore_mode=mode, max_classes_present=SPARSE_K
        )
        for radius in RADII:
            settings = dict(ignore_mode=mode, radius=radius)
            out[mode, radius, "profile"] = sj.band_profile(logits, labels, **settings)
            out[mode, radius, "sweep"] = sj.band_limit_sweep(logits, labels, **settings)
            out[mode, radius, "truncated"] = jax.vmap(
                lambda b, s=settings: sj.truncated_ce(logits, labels, b, **s)
            )(band_limits)
            out[mode, radius, "discrepancy"] = jax.vmap(
                lambda b, s=settings: sj.relative_discrepancy(logits, labels, b, **s)
            )(band_limits)
    return out


@st.composite
def decomposition_cases(draw):
    canvas, dtype = draw(st.sampled_from(CANVASES))
    batch, height, width, num_classes = canvas
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows, cols = draw(st.integers(1, height)), draw(st.integers(1, width))
    pool = draw(st.integers(1, num_classes))  # classes an image may hold
    logits, content = references.make_batch(
        rng,
        batch,
        rows,
        cols,
        num_classes,
        ignore_fraction=draw(st.sampled_from([0.0, 0.2, 0.7, 1.0])),
        classes_per_image=pool,
        scale=draw(st.sampled_from([0.1, 2.0, 10.0])),
    )
    labels = np.full((batch, height, width), 255, np.int32)
    labels[:, :rows, :cols] = content
    padded = rng.normal(scale=2.0, size=(batch, height, width, num_classes))
    padded[:, :rows, :cols] = logits
    limits = draw(st.lists(st.integers(-3, max(height, width) + 2), min_size=3, max_size=3))
    return canvas, padded.astype(dtype), labels, np.asarray(limits, np.int32)


@settings(max_examples=30, deadline=None)
@given(decomposition_cases())
def test_property_decomposition_identities_in_both_ignore_modes(case):
    canvas, logits, labels, band_limits = case
    out = jax.device_get(_identities(logits, labels, band_limits, canvas))
    exact = np.asarray(logits, np.float64)  # bfloat16 -> float64 is exact
    ce = references.spatial_ce(exact, labels)  # [B]
    tolerance = 1e-5 * (1.0 + np.max(np.abs(exact)))  # float32, relative to the logits
    for mode in ("labels", "both"):
        spectrum = out[mode, "spectrum"].astype(np.float64)
        # Parseval: each image's components sum to its mean CE (zero without valid pixels).
        np.testing.assert_allclose(spectrum.sum((1, 2)), ce, rtol=1e-5, atol=tolerance)
        np.testing.assert_allclose(
            spectrum, references.ce_spectrum(exact, labels, ignore_mode=mode), atol=tolerance
        )
        # The class-sparse path equals the dense one (exact fallback when an image holds
        # more than SPARSE_K classes).
        np.testing.assert_allclose(out[mode, "sparse"], spectrum, rtol=0, atol=tolerance)
        for radius in RADII:
            profile = out[mode, radius, "profile"].astype(np.float64)  # [B, R]
            num_bands = profile.shape[-1]
            np.testing.assert_allclose(profile.sum(-1), ce, rtol=1e-5, atol=tolerance)
            # R's denominator, the batch's CE, is non-negative; so is R.
            assert profile.sum() >= -tolerance
            sweep = out[mode, radius, "sweep"]
            assert np.all(sweep >= 0) and sweep[-1] == 0
            # The truncated CE at each limit is the cumulative profile (0 below band 0,
            # the CE at or beyond the last band); R there is the sweep's entry.
            cumulative = np.concatenate([[0.0], np.cumsum(profile.sum(0))])
            for k, limit in enumerate(band_limits):
                kept = int(np.clip(limit, -1, num_bands - 1)) + 1
                truncated = out[mode, radius, "truncated"][k].astype(np.float64)
                np.testing.assert_allclose(truncated.sum(), cumulative[kept], atol=tolerance)
                if limit >= 0:
                    np.testing.assert_allclose(
                        out[mode, radius, "discrepancy"][k],
                        sweep[min(limit, num_bands - 1)],
                        rtol=1e-4,
                        atol=1e-5,
                    )
    # The two modes differ in the components, never in the CE.
    np.testing.assert_allclose(
        out["labels", "spectrum"].sum((1, 2)), out["both", "spectrum"].sum((1, 2)), atol=tolerance
    )


# ---------------------------------------------------------------------------------------
# Eager calls. Last in the module: clearing JAX's caches (to count compilations) would
# make every later test compile again what an earlier one compiled.


def _batch(rng, batch, height, width, num_classes):
    logits, labels = references.make_batch(
        rng, batch, height, width, num_classes, ignore_fraction=0.2
    )
    return logits.astype(np.float32), labels


EAGER_CALLS = {
    **ALL_FUNCTIONS,
    "ce_spectrum[max_classes_present=2]": functools.partial(sj.ce_spectrum, max_classes_present=2),
    "band_limit_sweep[per_image, euclidean]": functools.partial(
        sj.band_limit_sweep, per_image=True, radius="euclidean"
    ),
    "relative_discrepancy[per_image]": functools.partial(
        sj.relative_discrepancy, band_limit=3, per_image=True
    ),
}


@pytest.mark.parametrize("name", EAGER_CALLS)
def test_repeated_eager_calls_compile_once_per_shape(rng, name):
    # Eager calls (a notebook's) compile one executable per shape and setting, and
    # nothing else: no tracing of the class scan on every call, no eager op around it.
    first = _batch(rng, 3, 10, 11, 4)
    same_shapes = (first[0] + 1.0, first[1][::-1].copy())
    new_shapes = _batch(rng, 2, 10, 11, 4)
    compile_counting.assert_compiles_once_per_shape(
        EAGER_CALLS[name], first, same_shapes, new_shapes
    )


def test_eager_band_limits_and_settings_compile_as_expected(rng):
    logits, labels = _batch(rng, 2, 9, 10, 3)
    jax.clear_caches()
    assert len(compilations(sj.truncated_ce, logits, labels, 2)) == 1
    # A band limit is traced: other values compile nothing.
    for band_limit in (0, 3, 100, -1):
        assert compilations(sj.truncated_ce, logits, labels, band_limit) == []
    # A shape-setting argument is static: a new value compiles once, then never again.
    assert len(compilations(sj.truncated_ce, logits, labels, 2, radius="euclidean")) == 1
    assert compilations(sj.truncated_ce, logits, labels, 1, radius="euclidean") == []
    assert len(compilations(sj.truncated_ce, logits, labels, 2, class_chunk_size=2)) == 1
    assert compilations(sj.truncated_ce, logits, labels, 2) == []
    # jax.vmap over band limits, eagerly: one batched executable.
    limits = jnp.arange(5)
    vmapped = jax.vmap(lambda r: sj.relative_discrepancy(logits, labels, r))
    assert len(compilations(vmapped, limits)) == 1
    assert compilations(vmapped, limits[::-1]) == []


def test_sweep_from_band_profile_compiles_once_per_shape(rng):
    first = (rng.normal(size=(3, 6)).astype(np.float32),)
    compile_counting.assert_compiles_once_per_shape(
        sj.sweep_from_band_profile,
        first,
        (first[0] + 1.0,),
        (rng.normal(size=(2, 3, 6)).astype(np.float32),),
    )
