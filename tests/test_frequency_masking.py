"""Tests for spectral_jax.related.frequency_masking.

References: the centred mask from NumPy's ``fftfreq`` in cycles per sample; the low part
by NumPy's complex ``fft2``/``ifft2`` in float64; identities (``low + high = x``,
Parseval: the energies of the two parts add up to the map's); closed forms for pure
sinusoids and for CAMs of features with known spectra. Tolerances: float64 1e-10
relative; float32 1e-5 absolute on O(1) maps.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.models import DeepLabV3Plus
from spectral_jax.related import frequency_masking as fm
from tests.helpers.models import TINY_DEEPLAB, random_variables

SHAPES = [(8, 8), (7, 9), (6, 5), (16, 12)]
CUTOFFS = [0.1, 0.25, 0.35, 0.5]


def _reference_mask(h: int, w: int, cutoff: float) -> np.ndarray:
    """``[H, W]`` in DFT order, built on the centred grid of normalised frequencies."""
    fh = np.fft.fftshift(np.fft.fftfreq(h))  # cycles per sample, ascending
    fw = np.fft.fftshift(np.fft.fftfreq(w))
    centred = (np.abs(fh)[:, None] < cutoff - 1e-12) & (np.abs(fw)[None, :] < cutoff - 1e-12)
    return np.fft.ifftshift(centred)


def _reference_low(x: np.ndarray, cutoff: float) -> np.ndarray:
    mask = _reference_mask(x.shape[1], x.shape[2], cutoff)[None, :, :, None]
    return np.fft.ifft2(np.fft.fft2(x, axes=(1, 2)) * mask, axes=(1, 2))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cutoff", CUTOFFS)
def test_low_frequency_mask_is_the_centred_square_of_normalised_frequencies(shape, cutoff):
    mask = fm.low_frequency_mask(shape, cutoff=cutoff)
    np.testing.assert_array_equal(mask, _reference_mask(*shape, cutoff))
    # Symmetric under nu -> -nu, so that both parts of a real map are real.
    flipped = np.roll(mask[::-1, ::-1], (1, 1), axis=(0, 1))
    np.testing.assert_array_equal(mask, flipped)


def test_low_frequency_mask_hand_counts():
    # 20 x 20, cutoff 0.2 (mu = 0.4): |nu| < 4 -> 7 frequencies per axis.
    assert fm.low_frequency_mask((20, 20), cutoff=0.2).sum() == 49
    # A tie |nu| = cutoff * N is high: N = 20, cutoff 0.35 -> |nu| <= 6, 13 per axis.
    assert fm.low_frequency_mask((20, 1), cutoff=0.35).sum() == 13
    # cutoff 0.5 keeps all but an even axis's Nyquist bin.
    assert fm.low_frequency_mask((8, 7), cutoff=0.5).sum() == 7 * 7


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cutoff", [0.1, 0.35, 0.5])
def test_split_matches_numpy_and_adds_up_float64(rng, shape, cutoff):
    x = rng.normal(size=(2, *shape, 3))
    low, high = fm.split_frequencies(jnp.asarray(x), cutoff=cutoff)
    assert low.dtype == jnp.float64 and high.dtype == jnp.float64
    reference = _reference_low(x, cutoff)
    np.testing.assert_allclose(np.abs(reference.imag).max(), 0.0, atol=1e-12)
    np.testing.assert_allclose(low, reference.real, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(low) + np.asarray(high), x, rtol=0, atol=1e-12)
    # Parseval: orthogonal parts, energies add up.
    energy = np.sum(x**2)
    np.testing.assert_allclose(
        np.sum(np.asarray(low) ** 2) + np.sum(np.asarray(high) ** 2), energy, rtol=1e-10
    )
    np.testing.assert_allclose(np.sum(np.asarray(low) * np.asarray(high)), 0.0, atol=1e-9)


@pytest.mark.parametrize("shape", [(8, 8), (7, 9)])
def test_split_float32(rng, shape):
    x = rng.normal(size=(1, *shape, 2)).astype(np.float32)
    low, high = fm.split_frequencies(jnp.asarray(x), cutoff=0.25)
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, _reference_low(x.astype(np.float64), 0.25).real, atol=1e-5)
    np.testing.assert_allclose(np.asarray(low) + np.asarray(high), x, atol=1e-6)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("shape", SHAPES)
def test_band_energies_parseval(rng, shape):
    x = rng.normal(size=(3, *shape, 2))
    low_energy, high_energy = fm.band_energies(jnp.asarray(x), cutoff=0.3)
    assert low_energy.shape == (3, 2)
    # NumPy's full complex FFT, power summed inside / outside the mask, over H W.
    power = np.abs(np.fft.fft2(x, axes=(1, 2))) ** 2 / (shape[0] * shape[1])
    mask = _reference_mask(*shape, 0.3)[None, :, :, None]
    np.testing.assert_allclose(low_energy, np.sum(power * mask, axis=(1, 2)), rtol=1e-10)
    np.testing.assert_allclose(high_energy, np.sum(power * ~mask, axis=(1, 2)), rtol=1e-10)
    low, high = fm.split_frequencies(jnp.asarray(x), cutoff=0.3)
    np.testing.assert_allclose(low_energy, np.sum(np.asarray(low) ** 2, axis=(1, 2)), rtol=1e-10)
    np.testing.assert_allclose(high_energy, np.sum(np.asarray(high) ** 2, axis=(1, 2)), rtol=1e-10)
    np.testing.assert_allclose(low_energy + high_energy, np.sum(x**2, axis=(1, 2)), rtol=1e-10)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(("nu", "expected_low"), [(0, True), (3, True), (4, False), (7, False)])
def test_pure_cosine_lands_in_one_part(nu, expected_low):
    # H = W = 16, cutoff 0.25: |nu| < 4 is low.
    n = np.arange(16)
    wave = np.cos(2 * np.pi * nu * n / 16 + 0.3)[None, :, None, None] * np.ones((1, 16, 16, 1))
    low, high = fm.split_frequencies(jnp.asarray(wave), cutoff=0.25)
    kept, removed = (low, high) if expected_low else (high, low)
    np.testing.assert_allclose(kept, wave, atol=1e-12)
    np.testing.assert_allclose(removed, 0.0, atol=1e-12)


def test_masking_ratio_is_a_side_fraction(rng):
    assert fm.cutoff_of_masking_ratio(0.4) == pytest.approx(0.2)
    x = jnp.asarray(rng.normal(size=(1, 10, 10, 2)), jnp.float32)
    low, _ = fm.split_by_masking_ratio(x, mu=0.4)
    low_ref, _ = fm.split_frequencies(x, cutoff=0.2)
    np.testing.assert_array_equal(low, low_ref)


@pytest.mark.parametrize(
    "kwargs", [{"cutoff": 0.0}, {"cutoff": 0.6}, {"cutoff": -0.1}, {"cutoff": True}]
)
def test_bad_cutoff_raises(kwargs):
    with pytest.raises(ValueError, match="cutoff"):
        fm.split_frequencies(jnp.zeros((1, 4, 4, 1)), **kwargs)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="mu"):
        fm.cutoff_of_masking_ratio(1.5)
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        fm.split_frequencies(jnp.zeros((4, 4, 1)), cutoff=0.25)
    with pytest.raises(ValueError, match="weight"):
        fm.class_activation_maps(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 1)))
    with pytest.raises(ValueError, match="disagree on K"):
        fm.class_activation_maps(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 1)))


def _known_spectra_features(h: int, w: int) -> np.ndarray:
    """``[1, H, W, 2]``: channel 0 a constant plus a slow wave (low), 1 a checkerboard (high)."""
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    slow = 2.0 + np.cos(2 * np.pi * i / h)  # frequency 1: low for cutoff >= 0.2 at h >= 6
    checker = (-1.0) ** (i + j)  # frequency (H/2, W/2): the highest there is
    return np.stack([slow, checker], axis=-1)[None]


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("kernel_shape", [(2, 3), (1, 1, 2, 3)])
def test_frequency_cams_on_features_with_known_spectra(rng, kernel_shape):
    h = w = 10
    features = _known_spectra_features(h, w)
    weight = rng.normal(size=(2, 3))
    bias = rng.normal(size=(3,))
    kernel = jnp.asarray(weight.reshape(kernel_shape))
    scores_low, scores_high = fm.frequency_class_activation_maps(
        jnp.asarray(features), kernel, mu=0.4, bias=jnp.asarray(bias), normalize=False
    )
    # The low part is channel 0, the high part channel 1: closed forms.
    np.testing.assert_allclose(
        scores_low, features[..., :1] * weight[0] + bias, rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(scores_high, features[..., 1:] * weight[1], rtol=1e-10, atol=1e-12)
    full = fm.class_activation_maps(
        jnp.asarray(features), kernel, bias=jnp.asarray(bias), normalize=False
    )
    np.testing.assert_allclose(np.asarray(scores_low) + np.asarray(scores_high), full, rtol=1e-10)

    cam_low, cam_high = fm.frequency_class_activation_maps(
        jnp.asarray(features), kernel, mu=0.4, bias=jnp.asarray(bias)
    )
    for scores, cam in ((scores_low, cam_low), (scores_high, cam_high)):
        positive = np.maximum(np.asarray(scores), 0)
        peak = positive.max(axis=(1, 2), keepdims=True)
        expected = np.where(peak > 0, positive / np.where(peak > 0, peak, 1), 0)
        np.testing.assert_allclose(cam, expected, rtol=1e-10, atol=1e-12)


def test_cams_jit_and_float32(rng):
    features = jnp.asarray(rng.normal(size=(2, 9, 8, 4)), jnp.float32)
    weight = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    eager = fm.frequency_class_activation_maps(features, weight, mu=0.4)
    jitted = jax.jit(lambda f, w: fm.frequency_class_activation_maps(f, w, mu=0.4))(
        features, weight
    )
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
        assert a.shape == (2, 9, 8, 3)
        assert float(jnp.min(a)) >= 0.0 and float(jnp.max(a)) <= 1.0 + 1e-6


def test_classifier_frequency_cams_of_the_deeplab_decoder():
    model = DeepLabV3Plus(**TINY_DEEPLAB, feature_size=7)
    variables = random_variables(model, (2, 33, 33, 3), seed=4)
    images = jnp.asarray(np.random.default_rng(6).normal(size=(2, 33, 33, 3)), jnp.float32)
    cams = jax.jit(functools.partial(fm.classifier_frequency_cams, model, mu=0.4, normalize=False))
    scores_low, scores_high = cams(variables, images)
    assert scores_low.shape == (2, 7, 7, 3)
    intermediates = jax.jit(functools.partial(model.apply, method=DeepLabV3Plus.intermediates))
    logits = intermediates(variables, images)["decoder_logits"]
    # The raw scores of the two parts add up to the classifier's output.
    np.testing.assert_allclose(
        np.asarray(scores_low) + np.asarray(scores_high), logits, rtol=1e-4, atol=1e-4
    )
    assert float(jnp.abs(scores_high).max()) > 1e-3
    with pytest.raises(ValueError, match="classifier_path"):
        fm.classifier_frequency_cams(model, variables, images, classifier_path="decoder/nothing")
