"""Inputs as users hold them (spectral_jax._checks), through the public spectral core.

NumPy and JAX arrays and CPU PyTorch tensors, channels last (``"NHWC"``) or first
(``"NCHW"``), give the numbers of the float64 NumPy references in tests/helpers/references.py;
a channels-first shape passed as channels last, an unreadable tensor and a bad
``data_format`` raise naming the argument. Tolerances: float32, components 1e-6 times
the image's CE and sums 1e-5 relative (as tests/test_loss_spectrum.py).
"""

from __future__ import annotations

import functools
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_jax as sj
from spectral_jax import _checks
from tests.helpers import compile_counting, references

ROOT = pathlib.Path(__file__).resolve().parents[1]
B, H, W, C = 2, 7, 9, 3
BAND_LIMIT = 2


@pytest.fixture(scope="module")
def batch():
    """float32 logits ``[B, H, W, C]``, int32 labels ``[B, H, W]`` with ignored pixels."""
    logits, labels = references.make_batch(
        np.random.default_rng(7), B, H, W, C, ignore_fraction=0.2
    )
    return logits.astype(np.float32), labels


def _expected(logits, labels):
    """Every public quantity from the float64 NumPy references."""
    spectrum = references.ce_spectrum(logits, labels)  # [B, H, W]
    profile = references.band_sums(spectrum, "chebyshev")  # [B, R]
    truncated = references.truncated_ce(spectrum, BAND_LIMIT, "chebyshev")
    total = spectrum.sum(axis=(1, 2))
    sweep = [
        references.ratio_of_sums(np.cumsum(profile, axis=-1)[:, r], total)
        for r in range(profile.shape[-1])
    ]
    label_magnitude, logit_magnitude = references.magnitude_profiles(logits, labels, "chebyshev")
    probs = np.exp(references.log_softmax(logits))
    iou = references.iou_from_sums(*references.soft_iou_terms(probs, labels))
    return {
        "ce_spectrum": spectrum,
        "ce_half_spectrum": spectrum[..., : W // 2 + 1],
        "band_profile": profile,
        "truncated_ce": truncated,
        "relative_discrepancy": references.ratio_of_sums(truncated, total),
        "band_limit_sweep": np.array(sweep),
        "magnitude_labels": label_magnitude,
        "magnitude_logits": logit_magnitude,
        "spectral_iou": iou,
        "stats_band_profile": profile.mean(axis=0),
    }


def _computed(logits, probs, labels, data_format):
    """Every public quantity of the core on inputs of any array type, in ``data_format``."""
    kw = dict(data_format=data_format)
    magnitudes = sj.magnitude_profiles(logits, labels, **kw)
    stats = sj.SpectralStatistics.create((H, W), num_classes=C).update(logits, labels, **kw)
    return {
        "ce_spectrum": sj.ce_spectrum(logits, labels, **kw),
        "ce_half_spectrum": sj.ce_half_spectrum(logits, labels, **kw),
        "band_profile": sj.band_profile(logits, labels, **kw),
        "truncated_ce": sj.truncated_ce(logits, labels, BAND_LIMIT, **kw),
        "relative_discrepancy": sj.relative_discrepancy(logits, labels, BAND_LIMIT, **kw),
        "band_limit_sweep": sj.band_limit_sweep(logits, labels, **kw),
        "magnitude_labels": magnitudes.labels,
        "magnitude_logits": magnitudes.logits,
        "spectral_iou": sj.spectral_iou(probs, labels, **kw),
        "stats_band_profile": stats.band_profile(),
    }


def _assert_matches(computed, expected, scale):
    assert computed.keys() == expected.keys()
    for name, value in computed.items():
        np.testing.assert_allclose(
            np.asarray(value, np.float64),
            expected[name],
            rtol=1e-5,
            atol=1e-6 * scale,
            err_msg=name,
        )


def _convert(x, kind: str):
    if kind == "numpy":
        return x
    if kind == "jax":
        return jnp.asarray(x)
    torch = pytest.importorskip("torch")
    return torch.from_numpy(np.ascontiguousarray(x))


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("kind", ["numpy", "jax", "torch"])
def test_array_types_and_layouts_give_the_reference(batch, kind, data_format):
    logits, labels = batch
    probs = np.exp(references.log_softmax(logits)).astype(np.float32)
    expected = _expected(logits, labels)
    if data_format == "NCHW":  # [B, C, H, W], as a PyTorch model returns them
        logits, probs = np.moveaxis(logits, -1, 1), np.moveaxis(probs, -1, 1)
    computed = _computed(
        _convert(logits, kind), _convert(probs, kind), _convert(labels, kind), data_format
    )
    _assert_matches(computed, expected, scale=float(np.max(references.spatial_ce(*batch))))


def test_torch_int64_labels_and_bfloat16_logits(batch):
    """PyTorch's usual label dtype, and a dtype NumPy cannot hold (read via __dlpack__)."""
    torch = pytest.importorskip("torch")
    logits, labels = batch
    low = torch.from_numpy(logits).to(torch.bfloat16)
    seen = low.to(torch.float32).numpy().astype(np.float64)  # the values the library reads
    spectrum = sj.ce_spectrum(low, torch.from_numpy(labels).to(torch.int64))
    assert spectrum.dtype == jnp.float32
    expected = references.ce_spectrum(seen, labels)
    np.testing.assert_allclose(spectrum, expected, atol=1e-6 * expected.sum(axis=(1, 2)).max())


def test_torch_tensor_that_requires_grad_names_the_argument(batch):
    torch = pytest.importorskip("torch")
    logits = torch.from_numpy(batch[0]).requires_grad_(True)
    with pytest.raises(TypeError, match=r"logits of type Tensor could not be read.*detach"):
        sj.ce_spectrum(logits, batch[1])


def test_channels_first_logits_say_so(batch):
    logits, labels = batch
    nchw = np.moveaxis(logits, -1, 1)  # [B, C, H, W] passed as channels last
    hint = r"got \(2, 3, 7, 9\): channels first\? pass data_format='NCHW' or move axis 1 last"
    with pytest.raises(ValueError, match=hint):
        sj.ce_spectrum(nchw, labels)
    with pytest.raises(ValueError, match=hint):
        sj.band_limit_sweep(nchw, labels)
    with pytest.raises(ValueError, match=r"probs .*" + hint):
        sj.spectral_iou(nchw, labels)
    stats = sj.SpectralStatistics.create((H, W), num_classes=C)
    with pytest.raises(ValueError, match=hint):
        stats.update(nchw, labels)


def test_a_mismatch_that_is_not_channels_first_has_no_hint(batch):
    logits, labels = batch
    with pytest.raises(ValueError, match=r"disagree: logits shape \(2, 7, 9, 3\), labels") as info:
        sj.ce_spectrum(logits, labels[:, :, :8])
    assert "channels first" not in str(info.value)


@pytest.mark.parametrize("data_format", ["NWHC", "nchw", None])
def test_bad_data_format_names_the_argument(batch, data_format):
    with pytest.raises(ValueError, match=r"data_format must be one of \('NHWC', 'NCHW'\)"):
        sj.ce_spectrum(*batch, data_format=data_format)
    with pytest.raises(ValueError, match=r"data_format must be one of"):
        sj.spectral_iou_terms(*batch, data_format=data_format)
    with pytest.raises(ValueError, match=r"data_format must be one of"):
        sj.SpectralStatistics.create((H, W), num_classes=C).update(*batch, data_format=data_format)


def test_nchw_needs_four_axes(batch):
    with pytest.raises(ValueError, match=r"logits must have shape \[B, C, H, W\], got shape"):
        sj.ce_spectrum(batch[0][0], batch[1], data_format="NCHW")


def test_nchw_under_the_callers_jit_and_grad(batch):
    """The layout is static and the axis moves inside the computation: jit and grad work."""
    logits, labels = batch
    nchw = jnp.asarray(np.moveaxis(logits, -1, 1))

    def loss(x, layout):
        return jnp.sum(sj.truncated_ce(x, labels, BAND_LIMIT, data_format=layout))

    grad_nchw = jax.jit(jax.grad(loss), static_argnums=1)(nchw, "NCHW")
    grad_nhwc = jax.grad(loss)(jnp.asarray(logits), "NHWC")
    np.testing.assert_allclose(np.moveaxis(np.asarray(grad_nchw), 1, -1), grad_nhwc, atol=1e-7)


def test_the_core_never_imports_torch():
    code = (
        "import sys, numpy as np, spectral_jax as sj\n"
        "sj.ce_spectrum(np.zeros((1, 3, 3, 2), np.float32), np.zeros((1, 3, 3), np.int32))\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "False"


def test_torch_tensors_in_the_other_entry_points(batch):
    """Band profiles, IoU terms, a band limit and a spectrum to centre, as tensors."""
    torch = pytest.importorskip("torch")
    logits, labels = batch
    spectrum = references.ce_spectrum(logits, labels)  # [B, H, W] float64
    profile = references.band_sums(spectrum, "chebyshev").astype(np.float32)  # [B, R]
    total = profile.sum(axis=-1)
    sweep = [references.ratio_of_sums(np.cumsum(profile, -1)[:, r], total) for r in range(5)]
    np.testing.assert_allclose(
        sj.sweep_from_band_profile(torch.from_numpy(profile)), sweep, rtol=1e-5, atol=1e-7
    )
    overlap, prediction, label = (
        torch.tensor([[2.0, 0.0]]),
        torch.tensor([[3.0, 0.0]]),
        torch.tensor([[4.0, 0.0]]),
    )
    iou = sj.iou_from_terms(sj.IoUTerms(overlap, prediction, label))
    np.testing.assert_allclose(iou, [[2.0 / 5.0, np.nan]], rtol=1e-7)
    truncated = sj.truncated_ce(logits, labels, torch.tensor(BAND_LIMIT))
    expected = references.truncated_ce(spectrum, BAND_LIMIT, "chebyshev")
    np.testing.assert_allclose(truncated, expected, rtol=1e-5)
    centred = sj.centered_spectrum(torch.from_numpy(spectrum.astype(np.float32)))
    np.testing.assert_array_equal(centred, np.fft.fftshift(spectrum.astype(np.float32), (1, 2)))


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_nchw_and_tensors_compile_once_per_shape(kind):
    """The layout moves inside the function's one jit; reading a tensor compiles nothing."""
    rng = np.random.default_rng(5)

    def arguments(batch, height):
        logits, labels = references.make_batch(rng, batch, height, 5, 3)
        nchw = np.moveaxis(logits.astype(np.float32), -1, 1)
        return _convert(nchw, kind), _convert(labels, kind)

    call = functools.partial(sj.band_limit_sweep, data_format="NCHW")
    compile_counting.assert_compiles_once_per_shape(
        call, arguments(2, 6), arguments(2, 6), arguments(3, 6)
    )


def test_unbatched_map_layout_is_stated_or_refused():
    """The helper the Jacobian functions can adopt for one map: [C, H, W] is not read as H = C."""
    chw = np.arange(3 * 5 * 6, dtype=np.float32).reshape(3, 5, 6)
    with pytest.raises(ValueError, match=r"x has shape \(3, 5, 6\).*channels first\? pass"):
        _checks.unbatched_map_to_channels_last(chw, "x", None)
    np.testing.assert_array_equal(
        _checks.unbatched_map_to_channels_last(chw, "x", "CHW"), np.transpose(chw, (1, 2, 0))
    )
    assert _checks.unbatched_map_to_channels_last(chw, "x", "HWC") is chw
    hwc = np.zeros((5, 6, 3), np.float32)  # channels last and not smaller than H or W
    assert _checks.unbatched_map_to_channels_last(hwc, "x", None) is hwc
    with pytest.raises(ValueError, match=r"data_format must be one of \('HWC', 'CHW'\) or None"):
        _checks.unbatched_map_to_channels_last(hwc, "x", "NHWC")


def test_torch_tensors_in_truncation_and_blockwise_annotation(batch):
    """The same numbers as the NumPy inputs (tested against their references elsewhere)."""
    torch = pytest.importorskip("torch")
    logits, labels = batch
    np.testing.assert_array_equal(
        sj.spectral_resize(torch.from_numpy(logits), 5), sj.spectral_resize(logits, 5)
    )
    np.testing.assert_array_equal(
        sj.resize_features(torch.from_numpy(logits), 5, method="area"),
        sj.resize_features(logits, 5, method="area"),
    )
    blocks = sj.blockwise_annotation(torch.from_numpy(labels).to(torch.int64), 3, num_classes=C)
    np.testing.assert_array_equal(blocks, sj.blockwise_annotation(labels, 3, num_classes=C))
