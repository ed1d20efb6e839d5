"""Tests for spectral_jax.truncation.

References: the Dirichlet-kernel resampling matrix in NumPy float64, and the exact
reproduction of a band-limited trigonometric polynomial at the output sample points.
Tolerances: float64 1e-10; float32 1e-4 absolute on O(1) maps (observed ~1e-6).
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax import band_limit_of_grid, truncation

# (input size, output size): the paper's 129 -> 65 -> 33 chain at small scale, odd and
# even sizes, shrinking and enlarging.
SIZES = [(17, 9), (17, 5), (16, 9), (12, 7), (9, 17), (8, 13), (33, 17)]


def _dirichlet_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` float64: ``M[j, i] = 1/n sum_{|nu|<=nu_max} cos(2 pi nu (t_j - i) / n)``."""
    band_limit = (min(n_in, n_out) - 1) // 2
    nu = np.arange(-band_limit, band_limit + 1)
    t = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    diff = t[:, None] - np.arange(n_in)[None, :]
    return np.cos(2 * np.pi * nu[:, None, None] * diff[None] / n_in).sum(0) / n_in


def _reference(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    x = np.asarray(x, np.float64)
    rows = _dirichlet_matrix(x.shape[1], size[0])
    cols = _dirichlet_matrix(x.shape[2], size[1])
    return np.einsum("jh,bhwc,kw->bjkc", rows, x, cols)


@pytest.mark.parametrize("n_in, n_out", SIZES)
def test_spectral_resize_matches_numpy_reference(rng, n_in, n_out):
    x = rng.normal(size=(2, n_in, n_in + 1, 3)).astype(np.float32)
    size = (n_out, n_out + 2)
    y = jax.jit(functools.partial(truncation.spectral_resize, size=size))(x)
    assert y.shape == (2, *size, 3) and y.dtype == jnp.float32
    np.testing.assert_allclose(y, _reference(x, size), atol=1e-4)


def _trig_polynomial(coefficients: np.ndarray, n: int, t: np.ndarray) -> np.ndarray:
    """``sum_nu a_nu cos(2 pi nu t / n) + b_nu sin(2 pi nu t / n)``, ``coefficients [2, nu_max + 1]``."""
    nu = np.arange(coefficients.shape[1])
    angle = 2 * np.pi * nu * t[:, None] / n
    return (coefficients[0] * np.cos(angle) + coefficients[1] * np.sin(angle)).sum(-1)


@pytest.mark.parametrize("n_in, n_out", SIZES)
def test_band_limited_map_is_reproduced_at_output_samples(rng, x64, n_in, n_out):
    # x[u, v] = g(u) h(v) with g, h trigonometric polynomials of period n_in and degree
    # nu_max = (min(n_in, n_out) - 1) // 2: the resampled map must equal g(t_j) h(t_k)
    # at the half-pixel centres t_j = (j + 1/2) n_in / n_out - 1/2 of the output grid.
    band_limit = band_limit_of_grid(min(n_in, n_out))
    row_coefficients, col_coefficients = rng.normal(size=(2, 2, band_limit + 1))
    grid = np.arange(n_in, dtype=np.float64)
    t = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    x = np.outer(
        _trig_polynomial(row_coefficients, n_in, grid),
        _trig_polynomial(col_coefficients, n_in, grid),
    )
    expected = np.outer(
        _trig_polynomial(row_coefficients, n_in, t), _trig_polynomial(col_coefficients, n_in, t)
    )
    y = truncation.spectral_resize(jnp.asarray(x[None, :, :, None]), n_out)
    assert y.dtype == jnp.float64
    np.testing.assert_allclose(y[0, :, :, 0], expected, atol=1e-10)


def test_band_limit_above_output_grid_is_removed(x64):
    # A cosine at nu_max + 1 of the output grid has no component left after shrinking.
    n_in, n_out = 17, 9
    u = np.arange(n_in)
    x = np.cos(2 * np.pi * (band_limit_of_grid(n_out) + 1) * u / n_in)
    y = truncation.spectral_resize(jnp.asarray(np.outer(x, np.ones(n_in))[None, :, :, None]), n_out)
    np.testing.assert_allclose(y, 0.0, atol=1e-12)


@pytest.mark.parametrize("n_in, n_out", SIZES)
def test_constant_map_stays_constant(n_in, n_out):
    x = jnp.full((1, n_in, n_in, 2), 3.5, jnp.float32)
    np.testing.assert_allclose(truncation.spectral_resize(x, n_out), 3.5, atol=1e-5)


@pytest.mark.parametrize("method", truncation.RESAMPLE_METHODS)
def test_resize_features_same_size_is_identity(rng, method):
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 3)), jnp.float32)
    assert truncation.resize_features(x, 9, method=method) is x


def test_resize_features_bilinear_is_jax_image_resize(rng):
    x = jnp.asarray(rng.normal(size=(2, 17, 17, 3)), jnp.float32)
    expected = jax.image.resize(x, (2, 9, 9, 3), method="linear", antialias=False)
    np.testing.assert_allclose(truncation.resize_features(x, 9, method="bilinear"), expected)


def test_resize_features_area_pools_when_divisible(rng):
    x = rng.normal(size=(2, 12, 9, 3)).astype(np.float32)
    expected = x.reshape(2, 4, 3, 3, 3, 3).mean(axis=(2, 4))
    y = truncation.resize_features(jnp.asarray(x), (4, 3), method="area")
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_resize_features_area_antialiases_otherwise(rng):
    x = jnp.asarray(rng.normal(size=(1, 17, 17, 2)), jnp.float32)
    expected = jax.image.resize(x, (1, 9, 9, 2), method="linear", antialias=True)
    np.testing.assert_allclose(truncation.resize_features(x, 9, method="area"), expected)


def test_resize_features_spectral_dispatches(rng):
    x = jnp.asarray(rng.normal(size=(1, 17, 17, 2)), jnp.float32)
    np.testing.assert_array_equal(
        truncation.resize_features(x, 9, method="spectral"), truncation.spectral_resize(x, 9)
    )


def test_spectral_resize_jit_grad_and_no_retrace(rng):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def energy(x):
        return jnp.sum(truncation.spectral_resize(x, 9) ** 2)

    for _ in range(3):
        x = jnp.asarray(rng.normal(size=(2, 17, 17, 2)), jnp.float32)
        grad = jax.grad(energy)(x)
    # The resampler is linear, y = R x C^T, so the gradient of |y|^2 is 2 R^T y C.
    rows, cols = _dirichlet_matrix(17, 9), _dirichlet_matrix(17, 9)
    y = _reference(np.asarray(x), (9, 9))
    expected = 2 * np.einsum("jh,bjkc,kw->bhwc", rows, y, cols)
    np.testing.assert_allclose(grad, expected, atol=1e-4)


@pytest.mark.parametrize("size", [0, (3,), (3, -1)])
def test_bad_size_raises(size):
    with pytest.raises(ValueError, match="size"):
        truncation.spectral_resize(jnp.ones((1, 5, 5, 1)), size)


def test_bad_method_raises():
    with pytest.raises(ValueError, match="method"):
        truncation.resize_features(jnp.ones((1, 5, 5, 1)), 3, method="nearest")
