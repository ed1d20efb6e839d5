"""Tests for spectral_jax.probes: the operations against direct NumPy loops.

Tolerances: float32 1e-5 absolute on O(1) maps (observed ~1e-6).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax import probes


def _correlate(x, kernel, padding):
    """``y[t] = sum_s k[s] x[t + s - (K - 1) // 2]``, zero or circular, NumPy float64."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    spatial = x.ndim - 1
    shape, sizes = x.shape[:-1], kernel.shape[:spatial]
    out = np.zeros((*shape, kernel.shape[-1]))
    for t in np.ndindex(*shape):
        for s in np.ndindex(*sizes):
            source = [ti + si - (k - 1) // 2 for ti, si, k in zip(t, s, sizes, strict=True)]
            if padding == "circular":
                source = [p % n for p, n in zip(source, shape, strict=True)]
            elif any(p < 0 or p >= n for p, n in zip(source, shape, strict=True)):
                continue
            out[t] += x[tuple(source)] @ kernel[s]
    return out


@pytest.mark.parametrize("padding", ["zero", "circular"])
@pytest.mark.parametrize(
    "shape, kernel_size", [((8, 8), 3), ((9, 7), 2), ((6, 5), 5), ((16,), 3), ((17,), 4)]
)
def test_conv_matches_numpy_correlation(rng, shape, kernel_size, padding):
    x = rng.normal(size=(*shape, 2)).astype(np.float32)
    kernel = rng.normal(size=((kernel_size,) * len(shape) + (2, 3))).astype(np.float32)
    y = jax.jit(functools.partial(probes.conv, padding=padding))(x, kernel)
    np.testing.assert_allclose(y, _correlate(x, kernel, padding), atol=1e-5)


def test_circular_conv_is_conj_kernel_spectrum_product(rng):
    shape = (9, 7)
    x = rng.normal(size=(*shape, 1))
    kernel = rng.normal(size=(3, 3, 1, 1))
    k_hat = np.fft.fft2(probes.embedded_kernel(kernel, shape)[..., 0, 0])
    expected = np.fft.ifft2(np.conj(k_hat) * np.fft.fft2(x[..., 0])).real
    y = probes.conv(jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32))
    np.testing.assert_allclose(y[..., 0], expected, atol=1e-5)


def test_activations(rng):
    x = jnp.asarray(rng.normal(size=(5, 4, 2)), jnp.float32)
    np.testing.assert_allclose(probes.relu(x), np.maximum(x, 0))
    np.testing.assert_allclose(probes.softplus(x), np.log1p(np.exp(np.asarray(x))), rtol=1e-6)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 2, 2)), jnp.float32)
    z = probes.conv(x, kernel, padding="zero")
    np.testing.assert_allclose(
        probes.conv_activation(x, kernel, activation="relu", padding="zero"), np.maximum(z, 0)
    )


@pytest.mark.parametrize("factor", [2, 4])
def test_upsample_bilinear_half_pixel_with_clamped_edges(rng, factor):
    n = 5
    x = rng.normal(size=(n, 1)).astype(np.float32)
    y = probes.upsample_bilinear(jnp.asarray(x), factor=factor)
    expected = np.zeros(factor * n)
    for o in range(factor * n):
        source = min(max((o + 0.5) / factor - 0.5, 0.0), n - 1.0)
        low = math.floor(source)
        high = min(low + 1, n - 1)
        expected[o] = (1 - (source - low)) * x[low, 0] + (source - low) * x[high, 0]
    np.testing.assert_allclose(y[:, 0], expected, atol=1e-6)
    image = jnp.asarray(rng.normal(size=(3, 4, 2)), jnp.float32)
    assert probes.upsample_bilinear(image, factor=factor).shape == (3 * factor, 4 * factor, 2)


def test_decoder_head_is_pure_init_apply():
    key = jax.random.key(0)
    module, variables = probes.init_decoder_head(key, (6, 5, 4), num_classes=3, features=8)
    head = probes.decoder_head_fn(module, variables)
    features = jax.random.normal(jax.random.key(1), (6, 5, 4))
    logits = head(features)
    assert logits.shape == (24, 20, 3)
    np.testing.assert_array_equal(logits, jax.jit(head)(features))  # deterministic, pure
    again = module.apply(variables, features[None])[0]
    np.testing.assert_allclose(logits, again, rtol=1e-6)


def test_bad_probe_arguments(rng):
    x = jnp.zeros((4, 4, 1))
    with pytest.raises(ValueError, match="padding must be one of"):
        probes.conv(x, jnp.zeros((3, 3, 1, 1)), padding="reflect")
    with pytest.raises(ValueError, match="kernel must have shape"):
        probes.conv(x, jnp.zeros((3, 1, 1)))
    with pytest.raises(ValueError, match="kernel input channels"):
        probes.conv(x, jnp.zeros((3, 3, 2, 1)))
    with pytest.raises(ValueError, match="activation must be one of"):
        probes.conv_activation(x, jnp.zeros((3, 3, 1, 1)), activation="tanh")
    with pytest.raises(ValueError, match="factor must be a positive int"):
        probes.upsample_bilinear(x, factor=0)
