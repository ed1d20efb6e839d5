"""Tests of spectral_jax.analysis: one call on a user's own Flax model.

Every number of the :class:`Analysis` is checked against an independent reference:
float64 NumPy of the CE decomposition (tests/helpers/references.py) on the model's logits, the
IoU of the arg-max by pixel counting, NumPy FFTs of the layer output that Flax's
``capture_intermediates`` records, and ``jax.grad`` of one CE component with respect to a
perturbation of the layer (through ``nn.intercept_methods``) for the Jacobian rows.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_jax as sj
from spectral_jax import analysis
from tests.helpers import references

SIZE, NUM_CLASSES = 33, 5


class UserSegmenter(nn.Module):
    """A user's own model: a strided conv encoder (33 -> 11), up-sampling, a classifier."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3), strides=3, name="encoder")(x))  # [B, 11, 11, 4]
        x = jax.image.resize(x, (x.shape[0], SIZE, SIZE, 4), "bilinear")
        return nn.Conv(NUM_CLASSES, (1, 1), name="classifier")(x)


def _batches(seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(2):
        images = rng.normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
        labels = rng.integers(0, NUM_CLASSES, size=(2, SIZE, SIZE)).astype(np.int32)
        labels[rng.random(labels.shape) < 0.1] = 255
        out.append({"image": images, "label": labels})
    return out


@pytest.fixture(scope="module")
def analysed():
    net = UserSegmenter()
    batches = _batches()
    variables = net.init(jax.random.key(0), batches[0]["image"])
    consumed = []

    def once():  # a one-shot stream: a second pass over it would see no batch
        for batch in batches:
            consumed.append(1)
            yield batch

    result = sj_analyze(net.apply, variables, once())
    assert len(consumed) == len(batches)
    return net, variables, batches, result


def sj_analyze(apply_fn, variables, batches, **kwargs):
    return analysis.analyze(
        apply_fn,
        variables,
        batches,
        num_classes=NUM_CLASSES,
        layers=["encoder"],
        rows=[(1, -2)],
        **kwargs,
    )


def test_data_set_quantities_match_float64_numpy(analysed):
    net, variables, batches, result = analysed
    images = np.concatenate([b["image"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    logits = np.asarray(jax.jit(net.apply)(variables, images), np.float64)
    spectra = references.ce_spectrum(logits, labels)  # [B, H, W]
    assert result.num_images == 4 and result.image_shape == (SIZE, SIZE)
    scale = np.abs(spectra.mean(axis=0)).max()
    np.testing.assert_allclose(result.ce_spectrum, spectra.mean(axis=0), atol=1e-5 * scale)
    profiles = references.band_sums(spectra, "chebyshev")  # [B, R]
    np.testing.assert_allclose(result.band_profile, profiles.mean(axis=0), rtol=1e-5, atol=1e-7)
    ce = references.spatial_ce(logits, labels)
    np.testing.assert_allclose(result.mean_ce, ce.mean(), rtol=1e-5)
    truncated = np.cumsum(profiles.sum(axis=0))
    expected_r = np.abs(truncated - ce.sum()) / ce.sum()
    assert result.relative_discrepancy_curve.shape == (17,)
    np.testing.assert_allclose(result.relative_discrepancy_curve, expected_r, rtol=1e-4, atol=1e-6)
    assert result.band_limits == (8, 16)
    intersection, union = references.hard_iou_counts(logits, labels)
    expected_iou = intersection.sum(axis=0) / union.sum(axis=0)
    np.testing.assert_allclose(result.spectral_iou, expected_iou, rtol=1e-5)
    np.testing.assert_allclose(result.spectral_mean_iou, expected_iou.mean(), rtol=1e-5)
    np.testing.assert_allclose(result.mean_iou, expected_iou.mean(), rtol=1e-12)
    valid = labels != 255
    accuracy = (np.argmax(logits, -1) == labels)[valid].mean()
    np.testing.assert_allclose(result.pixel_accuracy, accuracy, rtol=1e-12)
    assert 0 <= result.parseval_error < 1e-5


def test_feature_profile_is_the_band_power_of_the_captured_layer(analysed):
    net, variables, batches, result = analysed
    images = np.concatenate([b["image"] for b in batches])
    _, state = net.apply(variables, images, capture_intermediates=True, mutable=["intermediates"])
    features = np.asarray(state["intermediates"]["encoder"]["__call__"][0], np.float64)
    layer = result.layer("encoder")
    assert layer.shape == (11, 11, 4)
    power = np.abs(np.fft.fft2(features, axes=(1, 2))) ** 2  # [B, h, w, c]
    power = power.sum(-1) / (4 * 121**2)  # [B, h, w]
    bands = references.band_index((11, 11), "chebyshev")
    expected = np.stack([np.bincount(bands.ravel(), p.ravel()) for p in power]).mean(0)
    np.testing.assert_allclose(layer.feature_profile, expected, rtol=1e-5)
    np.testing.assert_allclose(layer.feature_profile.sum(), (features**2).mean(), rtol=1e-5)


def test_rows_are_the_gradient_of_one_ce_component(analysed):
    net, variables, batches, result = analysed
    layer = result.layer("encoder")
    # i = 0, M/4, M/2 of the 11 x 11 map: flat 0, 30, 60 = (0, 0), (2, -3), (5, 5); then
    # the user's (1, -2); each at the same signed frequency of the 33 x 33 image.
    np.testing.assert_array_equal(layer.row_frequencies, [[0, 0], [2, -3], [5, 5], [1, -2]])
    np.testing.assert_array_equal(layer.row_indices, [0, 2 * 33 + 30, 5 * 33 + 5, 33 + 31])
    assert layer.rows.shape == (1, 4, 121) and layer.rows.dtype == np.complex64
    image = batches[0]["image"][:1]
    labels = batches[0]["label"][:1]

    def ce_component(delta, index):  # L_ce(nu_i) of image 0 with the layer + delta
        def add(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            return out + delta[None] if context.module.path == ("encoder",) else out

        with nn.intercept_methods(add):
            logits = net.apply(variables, image)
        return sj.ce_spectrum(logits, labels).reshape(-1)[index]

    for k, index in enumerate(layer.row_indices):
        grad = jax.grad(ce_component)(jnp.zeros((11, 11, 4)), int(index))  # [h, w, c]
        # G[i, j] = (1/M) sum_t (sum_c dL(nu_i)/dx(t, c)) exp(+2 pi i <nu_j, t / N>).
        expected = np.fft.ifft2(np.asarray(grad, np.float64).sum(-1)).reshape(-1)
        error = np.abs(layer.rows[0, k] - expected).max() / np.abs(expected).max()
        assert error < 1e-4, (k, error)
        # The diagonal: the layer's own frequency nu_j = nu_i.
        nu = layer.row_frequencies[k]
        j = np.ravel_multi_index((nu[0] % 11, nu[1] % 11), (11, 11))
        energy = np.abs(expected) ** 2
        np.testing.assert_allclose(
            layer.diagonal_energy_fraction[0, k], energy[j] / energy.sum(), rtol=1e-3, atol=1e-6
        )


def test_json_round_trip(analysed):
    *_, result = analysed
    text = result.to_json()
    back = analysis.Analysis.from_json(text)
    for field in ("num_classes", "image_shape", "num_images", "band_limits", "mean_ce"):
        assert getattr(back, field) == getattr(result, field), field
    for field in ("ce_spectrum", "band_profile", "relative_discrepancy_curve", "spectral_iou"):
        np.testing.assert_array_equal(getattr(back, field), getattr(result, field))
    # The curve keeps the JSON key of the files written before its rename.
    keys = json.loads(text)
    assert "relative_discrepancy" in keys and "relative_discrepancy_curve" not in keys
    layer, back_layer = result.layers[0], back.layers[0]
    assert back_layer.name == layer.name and back_layer.shape == layer.shape
    assert back_layer.rows.dtype == layer.rows.dtype == np.complex64
    np.testing.assert_array_equal(back_layer.rows, layer.rows)
    np.testing.assert_array_equal(back_layer.row_frequencies, layer.row_frequencies)
    np.testing.assert_array_equal(
        back_layer.diagonal_energy_fraction, layer.diagonal_energy_fraction
    )
    assert back.to_json() == text


def test_write_report(analysed, tmp_path):
    pytest.importorskip("matplotlib")
    *_, result = analysed
    report = result.write_report(tmp_path / "report")
    text = report.read_text()
    assert f"| mIoU (confusion matrix) | {result.mean_iou:.4f} |" in text
    assert f"| 16 | {result.relative_discrepancy_curve[16]:.6g} |" in text
    fraction = result.layers[0].diagonal_energy_fraction.mean(axis=0)[1]
    assert f"| (2, -3) | 96 | {fraction:.4f} |" in text
    for name in ("ce_bands.png", "ce_spectrum.png", "encoder_features.png", "encoder_rows.png"):
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG", name
        assert f"]({name})" in text
    back = analysis.Analysis.from_json((tmp_path / "report" / "analysis.json").read_text())
    np.testing.assert_array_equal(back.layers[0].rows, result.layers[0].rows)


def test_torch_channels_first_batches_give_the_same_analysis(analysed):
    # PyTorch's layout, passed as it is: CPU tensors, images [B, Ci, H, W].
    torch = pytest.importorskip("torch")
    net, variables, batches, result = analysed
    as_torch = [
        {
            "image": torch.tensor(np.moveaxis(b["image"], -1, 1).copy()),
            "label": torch.tensor(b["label"]),
        }
        for b in batches
    ]
    again = sj_analyze(net.apply, variables, as_torch, data_format="NCHW")
    np.testing.assert_allclose(
        again.relative_discrepancy_curve, result.relative_discrepancy_curve, rtol=1e-6
    )
    np.testing.assert_allclose(again.spectral_iou, result.spectral_iou, rtol=1e-6)
    layer, again_layer = result.layer("encoder"), again.layer("encoder")
    np.testing.assert_allclose(again_layer.feature_profile, layer.feature_profile, rtol=1e-6)
    np.testing.assert_array_equal(again_layer.row_indices, layer.row_indices)
    scale = np.abs(layer.rows).max()
    np.testing.assert_allclose(again_layer.rows, layer.rows, atol=1e-6 * scale)
    with pytest.raises(ValueError, match=r"data_format must be one of \('NHWC', 'NCHW'\)"):
        sj_analyze(net.apply, variables, as_torch, data_format="CHW")


def test_bad_arguments_raise_clear_errors():
    net = UserSegmenter()
    batches = _batches()[:1]
    variables = net.init(jax.random.key(0), batches[0]["image"])
    run = lambda **kwargs: analysis.analyze(  # noqa: E731
        net.apply, variables, batches, num_classes=NUM_CLASSES, **kwargs
    )
    with pytest.raises(ValueError, match=r"nearest valid paths are \['encoder'"):
        run(layers=["encodr"])
    with pytest.raises(TypeError, match="layers must be a sequence of module paths"):
        run(layers=[1])
    with pytest.raises(ValueError, match=r"band_limits must lie in \[0, 17\)"):
        run(band_limits=[17])
    with pytest.raises(ValueError, match=r"rows must be flat indices in \[0, 121\)"):
        run(layers="encoder", rows=[121])
    with pytest.raises(ValueError, match="outside the layer's"):
        run(layers="encoder", rows=[(6, 0)])
    with pytest.raises(ValueError, match="batches yielded no batch"):
        analysis.analyze(net.apply, variables, [], num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="num_examples must be at least 1"):
        run(layers="encoder", num_examples=0)
