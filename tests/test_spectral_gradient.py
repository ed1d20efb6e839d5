"""Tests for spectral_jax.spectral_gradient: exact spectral Jacobians and their summaries.

References, independent of the chunked jvp/vjp machinery under test:
  * closed forms: circular conv ``J = diag(conj(k_hat))`` (``jax.lax.conv`` is a
    cross-correlation), ReLU ``J[i, j] = m_hat(nu_i - nu_j) / N``, softplus conv Eq. 10
    and Eq. 28 (Lemma 3) with their Taylor remainders;
  * a dense float64 NumPy product ``F_out A F_in^{-1}`` with explicit DFT matrices, ``A``
    from plain ``jax.jacfwd`` of the real function (or, for up-sampling, an explicit
    bilinear interpolation matrix);
  * central finite differences in float64 for the CE gradient, and the identity
    ``sum_i G[i, :] = ifftn(grad of the spatial CE)``.

Tolerances, relative to the largest entry of the reference: float32 2e-5 (observed
~5e-7), float64 1e-11 (observed ~1e-15). Sizes are tiny (8x8, 9x7, 16x16, 1-D 16/17).
"""

from __future__ import annotations

import functools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_jax as sj
from spectral_jax import probes
from tests.helpers import compile_counting, references

RTOL = {"float32": 2e-5, "float64": 1e-11}
CHUNKS = ("chunk_size", "mode")
DTYPES = ["float32", "float64"]
SHAPES = [(8, 8), (9, 7), (16,), (17,)]

# Numeric tests call jitted wrappers (``fn`` static): eager dispatch compiles every
# primitive and costs seconds a case. Eager behaviour (the errors) calls ``sj`` directly.
spectral_jacobian = jax.jit(sj.spectral_jacobian, static_argnums=0, static_argnames=CHUNKS)
band_energy = jax.jit(
    sj.spectral_jacobian_band_energy,
    static_argnums=0,
    static_argnames=("radius", "chunk_size", "mode"),
)
spectral_jacobian_rows = jax.jit(
    sj.spectral_jacobian_rows, static_argnums=0, static_argnames="chunk_size"
)
ce_spectral_gradient = jax.jit(
    sj.ce_spectral_gradient, static_argnums=0, static_argnames=("chunk_size", "mode")
)


@functools.partial(jax.jit, static_argnums=0)
def _all_paths(fn, x, u, v, nu_i, nu_j):
    """Forward, reverse, rows and columns in one compilation."""
    kwargs = dict(in_projection=u, out_projection=v)
    return (
        sj.spectral_jacobian(fn, x, chunk_size=7, mode="forward", **kwargs),
        sj.spectral_jacobian(fn, x, chunk_size=5, mode="reverse", **kwargs),
        sj.spectral_jacobian_rows(fn, x, nu_i, chunk_size=3, **kwargs),
        sj.spectral_jacobian_columns(fn, x, nu_j, chunk_size=3, **kwargs),
    )


def _dft_matrix(shape: tuple[int, ...]) -> np.ndarray:
    """``F[nu, t]`` of the unnormalised DFT over ``shape``, flattened in C order."""
    n = math.prod(shape)
    basis = np.eye(n).reshape(n, *shape)
    return np.fft.fftn(basis, axes=tuple(range(1, len(shape) + 1))).reshape(n, n).T


def _dense_reference(fn, x, in_projection=None, out_projection=None) -> np.ndarray:
    """``F_out (v^T x I) A (I x u) F_in^{-1}`` in float64 NumPy, ``A`` from ``jax.jacfwd``."""
    jac = jax.jit(jax.jacfwd(fn))(x)  # [*S', Cout, *S, Cin]
    return _dense_from_jacobian(fn, x, jac, in_projection, out_projection)


def _dense_references(fn, xs) -> list[np.ndarray]:
    """:func:`_dense_reference` of each ``xs[b]``, the Jacobians in one compilation."""
    jacs = np.asarray(jax.jit(jax.vmap(jax.jacfwd(fn)))(xs))
    xs = np.asarray(xs)
    return [_dense_from_jacobian(fn, x, jac) for x, jac in zip(xs, jacs, strict=True)]


def _dense_from_jacobian(fn, x, jac, in_projection=None, out_projection=None) -> np.ndarray:
    y = jax.eval_shape(fn, x)
    jac = np.asarray(jac, np.float64)
    u = np.ones(x.shape[-1]) if in_projection is None else np.asarray(in_projection)
    v = np.ones(y.shape[-1]) if out_projection is None else np.asarray(out_projection)
    jac = np.moveaxis(jac, y.ndim - 1, -1)  # [*S', *S, Cin, Cout]
    jac = jac @ v  # [*S', *S, Cin]
    jac = jac @ u  # [*S', *S]
    m_out, m_in = math.prod(y.shape[:-1]), math.prod(x.shape[:-1])
    dense = jac.reshape(m_out, m_in)
    f_in = _dft_matrix(x.shape[:-1])
    return _dft_matrix(y.shape[:-1]) @ dense @ (f_in.conj().T / m_in)


def _assert_close(actual, expected, dtype):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(np.abs(expected).max(), 1e-30)
    error = np.abs(actual - expected).max() / scale
    assert error < RTOL[dtype], f"relative error {error:.2e} >= {RTOL[dtype]:.0e}"


def _map(rng, shape, channels=1, dtype="float32", amplitude=1.0):
    return jnp.asarray(amplitude * rng.uniform(-1, 1, size=(*shape, channels)), dtype)


def _kernel(rng, size, spatial, channels=(1, 1), dtype="float32", scale=1.0):
    return jnp.asarray(scale * rng.normal(size=((size,) * spatial + channels)) / 3, dtype)


# ---------------------------------------------------------------------------------------
# Closed forms.


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kernel_size", [2, 3])
def test_circular_conv_is_diagonal_conj_kernel_spectrum(rng, shape, dtype, kernel_size):
    with jax.enable_x64(dtype == "float64"):
        x = _map(rng, shape, dtype=dtype)
        kernel = _kernel(rng, kernel_size, len(shape), dtype=dtype)
        fn = functools.partial(probes.conv, kernel=kernel, padding="circular")
        jac = spectral_jacobian(fn, x, chunk_size=16, mode="forward")
        assert jac.dtype == (jnp.complex128 if dtype == "float64" else jnp.complex64)
        k_hat = np.fft.fftn(probes.embedded_kernel(kernel, shape)[..., 0, 0]).ravel()
        _assert_close(jac, np.diag(np.conj(k_hat)), dtype)


def test_multichannel_conv_blocks_by_one_hot_projections(rng):
    shape = (8, 8)
    x = _map(rng, shape, channels=2)
    kernel = _kernel(rng, 3, 2, channels=(2, 3))
    fn = functools.partial(probes.conv, kernel=kernel, padding="circular")
    k_hat = np.fft.fft2(probes.embedded_kernel(kernel, shape), axes=(0, 1))  # [H, W, 2, 3]
    for cin in range(2):
        for cout in range(3):
            jac = spectral_jacobian(
                fn, x, in_projection=np.eye(2)[cin], out_projection=np.eye(3)[cout]
            )
            _assert_close(jac, np.diag(np.conj(k_hat[..., cin, cout]).ravel()), "float32")
    jac_sum = spectral_jacobian(fn, x)  # default: ones, the sum of the 6 blocks
    _assert_close(jac_sum, np.diag(np.conj(k_hat).sum((-2, -1)).ravel()), "float32")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_relu_is_circulant_of_mask_spectrum(rng, shape, dtype):
    """``J = F diag(m) F^{-1}``: ``J[i, j] = m_hat(nu_i - nu_j) / N``, ``m = (x > 0)``."""
    with jax.enable_x64(dtype == "float64"):
        x = _map(rng, shape, dtype=dtype)
        jac = spectral_jacobian(probes.relu, x, chunk_size=5, mode="reverse")
        mask_hat = np.fft.fftn(np.asarray(x[..., 0] > 0, np.float64))
        coords = np.stack(np.unravel_index(np.arange(math.prod(shape)), shape), -1)
        diff = (coords[:, None, :] - coords[None, :, :]) % np.array(shape)  # [M, M, d]
        expected = mask_hat[tuple(np.moveaxis(diff, -1, 0))] / math.prod(shape)
        _assert_close(jac, expected, dtype)


@pytest.mark.parametrize(
    ("shape", "factor"),
    [
        ((8, 8), 4),
        ((9, 7), 2),
        ((16,), 4),
        # Each grid and each factor is in a case above (slow suite: the other pairs).
        pytest.param((8, 8), 2, marks=pytest.mark.slow),
        pytest.param((9, 7), 4, marks=pytest.mark.slow),
        pytest.param((16,), 2, marks=pytest.mark.slow),
    ],
)
def test_bilinear_upsampling_against_interpolation_matrix(rng, shape, factor):
    x = _map(rng, shape)
    fn = functools.partial(probes.upsample_bilinear, factor=factor)
    dense = references.bilinear_upsampling_matrix(shape[0], factor)
    for n in shape[1:]:
        dense = np.kron(dense, references.bilinear_upsampling_matrix(n, factor))
    out_shape = tuple(factor * n for n in shape)
    f_in = _dft_matrix(shape)
    expected = _dft_matrix(out_shape) @ dense @ (f_in.conj().T / math.prod(shape))
    _assert_close(spectral_jacobian(fn, x, chunk_size=32), expected, "float32")
    out_bands = _bands(out_shape)
    in_bands = _bands(shape)
    expected_energy = np.zeros((out_bands.max() + 1, in_bands.max() + 1))
    np.add.at(expected_energy, (out_bands[:, None], in_bands[None, :]), np.abs(expected) ** 2)
    for mode in ("forward", "reverse"):
        energy = band_energy(fn, x, chunk_size=16, mode=mode)
        np.testing.assert_allclose(energy, expected_energy, rtol=1e-4, atol=1e-5)


def _bands(shape, radius="chebyshev"):
    if len(shape) == 1:
        return np.abs(sj.signed_frequencies(shape[0]))
    return sj.band_index(shape, radius=radius).ravel()


def _softplus_conv_errors(rng_seed: int, eps: float, alpha: float):
    """Relative Frobenius errors of Eq. 10 and of Eq. 28 (first-order term kept)."""
    rng = np.random.default_rng(rng_seed)
    shape = (16, 16)
    n = math.prod(shape)
    x = jnp.asarray(alpha * rng.uniform(-1, 1, size=(*shape, 1)))
    kernel = jnp.asarray(eps * rng.normal(size=(3, 3, 1, 1)) / 3)
    fn = functools.partial(probes.conv_activation, kernel=kernel, activation="softplus")
    # Eager: the partial's kernel is traced, so the six (eps, alpha) compile once.
    jac = np.asarray(sj.spectral_jacobian(fn, x, chunk_size=64))
    # The paper's k(nu) is for a convolution; lax.conv correlates, so k(nu) = conj(k_hat).
    k_paper = np.conj(np.fft.fft2(probes.embedded_kernel(kernel, shape)[..., 0, 0])).ravel()
    eq10 = 0.5 * np.diag(k_paper)
    z_hat = np.fft.fft2(np.asarray(probes.conv(x, kernel))[..., 0])
    coords = np.stack(np.unravel_index(np.arange(n), shape), -1)
    diff = (coords[:, None, :] - coords[None, :, :]) % np.array(shape)
    eq28 = eq10 + z_hat[diff[..., 0], diff[..., 1]] / (4 * n) * k_paper[None, :]
    scale = np.linalg.norm(eq10)
    return np.linalg.norm(jac - eq10) / scale, np.linalg.norm(jac - eq28) / scale


@pytest.mark.usefixtures("x64")
def test_softplus_conv_eq10_error_has_taylor_order():
    """Eq. 10's ``1/2 k(nu_j) delta`` errs by O(eps alpha) relative; Eq. 28 by O((eps alpha)^3).

    ``sigmoid(z) = 1/2 + z/4 - z^3/48 + ...`` (no ``z^2`` term), so dropping the ``z/4``
    term (Eq. 10) leaves a first-order error, keeping it (Eq. 28) a third-order one.
    Observed (seed 0, 16x16, 3x3 kernel scaled by eps, |x| < alpha): Eq. 10 error 7.0e-2
    at eps=0.2, alpha=1 and 3.5e-2 at eps=0.1 (exponent 1.00); Eq. 28 error 3.1e-4 and
    3.9e-5 (exponent 2.99).
    """
    scales = np.array([0.2, 0.1, 0.05])
    by_kernel = np.array([_softplus_conv_errors(0, eps, 1.0) for eps in scales])
    by_input = np.array([_softplus_conv_errors(0, 0.2, alpha) for alpha in scales / 0.2])
    for errors in (by_kernel, by_input):
        orders = np.polyfit(np.log(scales), np.log(errors), 1)[0]  # slopes per column
        assert 0.95 < orders[0] < 1.05, orders
        assert 2.9 < orders[1] < 3.1, orders
        assert errors[0, 0] < 0.1  # the approximation is good at these small scales


# ---------------------------------------------------------------------------------------
# Against the dense reference: modes, chunking, rows and columns.


def _probe_functions(rng, spatial):
    kernel = _kernel(rng, 3, spatial, channels=(2, 2))
    return {
        "conv_softplus_zero": functools.partial(
            probes.conv_activation, kernel=kernel, padding="zero"
        ),
        "conv_relu_circular": functools.partial(
            probes.conv_activation, kernel=kernel, activation="relu"
        ),
        "upsample_2": functools.partial(probes.upsample_bilinear, factor=2),
    }


@pytest.mark.parametrize(
    "shape, dtype",
    [
        ((8, 8), "float32"),
        # The float64 case of the same grid checks the same paths to 1e-11 (slow suite).
        pytest.param((9, 7), "float32", marks=pytest.mark.slow),
        ((9, 7), "float64"),
        ((17,), "float64"),
    ],
)
def test_forward_reverse_rows_columns_agree_with_dense(rng, shape, dtype):
    with jax.enable_x64(dtype == "float64"):
        x = _map(rng, shape, channels=2, dtype=dtype)
        u, v = np.array([0.5, -1.5]), np.array([1.0, 2.0])
        for name, fn in _probe_functions(rng, len(shape)).items():
            expected = _dense_reference(fn, x, u, v)
            m_out, m_in = expected.shape
            nu_i = np.array([0, m_out // 4, m_out // 2, m_out - 1])
            nu_j = np.array([0, m_in // 4, m_in // 2, m_in - 1])
            forward, reverse, rows, columns = _all_paths(fn, x, u, v, nu_i, nu_j)
            for actual, reference in (
                (forward, expected),
                (reverse, expected),
                (rows, expected[nu_i]),
                (columns, expected[:, nu_j]),
            ):
                assert actual.shape == reference.shape, name
                _assert_close(actual, reference, dtype)


def test_traced_out_of_range_indices_wrap_around_the_grid(rng):
    # The DFT is periodic: index j is frequency j mod M, also for negative j (was clamped).
    x = _map(rng, (6, 5))
    fn = _probe_functions(rng, 2)["conv_softplus_zero"]
    fn_single = lambda z: fn(jnp.concatenate([z, z], -1))
    dense = np.asarray(spectral_jacobian(fn_single, x))
    m_out, m_in = dense.shape
    indices = np.array([m_out + 3, 3 * m_out - 1, -1, -m_out - 2, 4], np.int32)
    rows = jax.jit(lambda i: sj.spectral_jacobian_rows(fn_single, x, i))(indices)
    np.testing.assert_allclose(rows, dense[indices % m_out], atol=1e-5)
    indices = np.array([m_in + 3, -1, 2 * m_in], np.int32)
    columns = jax.jit(lambda j: sj.spectral_jacobian_columns(fn_single, x, j))(indices)
    np.testing.assert_allclose(columns, dense[:, indices % m_in], atol=1e-5)


def test_chunk_size_does_not_change_the_result(rng):
    x = _map(rng, (8, 8))
    fn = _probe_functions(rng, 2)["conv_softplus_zero"]
    fn_single = lambda z: fn(jnp.concatenate([z, z], -1))
    reference = spectral_jacobian(fn_single, x, chunk_size=64)  # one chunk of 64
    for chunk_size in (1, 13, 64, 1000):  # one function: its reference compiles once
        for mode in ("forward", "reverse"):
            jac = spectral_jacobian(fn_single, x, chunk_size=chunk_size, mode=mode)
            np.testing.assert_allclose(jac, reference, atol=1e-6, err_msg=f"{chunk_size} {mode}")


def test_jit_at_the_edge_compiles_once(rng):
    x = _map(rng, (9, 7))
    kernel = _kernel(rng, 3, 2)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def jacobian(x, kernel):
        fn = functools.partial(probes.conv_activation, kernel=kernel)
        return sj.spectral_jacobian(fn, x, chunk_size=16)

    first = jacobian(x, kernel)
    second = jacobian(x + 0.1, kernel)  # same shapes: no retrace
    fn = functools.partial(probes.conv_activation, kernel=kernel)
    _assert_close(first, _dense_reference(fn, x), "float32")
    _assert_close(second, _dense_reference(fn, x + 0.1), "float32")
    _assert_close(spectral_jacobian_rows(fn, x, jnp.arange(3), chunk_size=2), first[:3], "float32")


# ---------------------------------------------------------------------------------------
# Band energy and summaries.


@pytest.mark.parametrize(
    ("shape", "radius"),
    [
        ((8, 8), "chebyshev"),
        ((8, 8), "euclidean"),
        ((9, 7), "chebyshev"),
        ((9, 7), "euclidean"),
        ((16,), "chebyshev"),
        ((17,), "chebyshev"),
        # In 1-D the band is |nu| for either radius: the same numbers (slow suite).
        pytest.param((16,), "euclidean", marks=pytest.mark.slow),
        pytest.param((17,), "euclidean", marks=pytest.mark.slow),
    ],
)
def test_band_energy_streams_the_dense_band_sums(rng, shape, radius):
    # In 1-D the band is |nu| for either radius.
    x = _map(rng, shape)
    kernel = _kernel(rng, 3, len(shape))
    fn = functools.partial(probes.conv_activation, kernel=kernel, padding="zero")
    dense = np.abs(_dense_reference(fn, x)) ** 2
    bands = _bands(shape, radius)
    expected = np.zeros((bands.max() + 1,) * 2)
    np.add.at(expected, (bands[:, None], bands[None, :]), dense)
    for mode in ("forward", "reverse"):
        energy = band_energy(fn, x, radius=radius, chunk_size=6, mode=mode)
        np.testing.assert_allclose(energy, expected, rtol=1e-4, atol=1e-6 * expected.max())


def test_frequency_distance_small_cases():
    # 1-D, equal grids: the difference wraps (nu = 3 and nu = -3 = index 5 of 8 are 2 apart).
    distance = sj.frequency_distance(np.array([3]), out_shape=(8,), in_shape=(8,))
    np.testing.assert_array_equal(distance, [[3, 2, 1, 0, 1, 2, 3, 4]])
    # Up-sampled axis: signed frequencies subtract without wrapping.
    distance = sj.frequency_distance(np.array([15]), out_shape=(16,), in_shape=(4,))
    np.testing.assert_array_equal(distance, [[1, 2, 1, 0]])  # nu_i = -1; nu_j = 0, 1, -2, -1
    # 2-D Chebyshev and Euclidean.
    cheb = sj.frequency_distance(np.array([0]), out_shape=(4, 4), in_shape=(4, 4))
    np.testing.assert_array_equal(cheb.reshape(4, 4), sj.band_index((4, 4)))
    eucl = sj.frequency_distance(
        np.array([0]), out_shape=(5, 5), in_shape=(5, 5), radius="euclidean"
    )
    np.testing.assert_array_equal(eucl.reshape(5, 5), sj.band_index((5, 5), radius="euclidean"))


def test_summaries_of_diagonal_and_relu_rows(rng):
    shape = (9, 7)
    x = _map(rng, shape)
    kernel = _kernel(rng, 3, 2)
    conv = functools.partial(probes.conv, kernel=kernel)
    m = math.prod(shape)
    nu_i = np.array([0, m // 4, m // 2])
    kwargs = dict(out_shape=shape, in_shape=shape)
    rows = spectral_jacobian_rows(conv, x, nu_i)
    np.testing.assert_allclose(sj.diagonal_energy_fraction(rows, nu_i, **kwargs), 1, atol=1e-6)
    # ReLU rows: energy at distance d against a direct NumPy loop.
    rows = np.asarray(spectral_jacobian_rows(probes.relu, x, nu_i))
    distance = sj.frequency_distance(nu_i, **kwargs)
    expected = np.zeros((3, distance.max() + 1))
    for k in range(3):
        for j in range(m):
            expected[k, distance[k, j]] += abs(rows[k, j]) ** 2
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(
        sj.energy_by_distance(rows, nu_i, **kwargs), expected, rtol=1e-5, atol=1e-7
    )
    within = sj.within_distance_energy_fraction(rows, nu_i, max_distance=1, **kwargs)
    np.testing.assert_allclose(within, expected[:, :2].sum(-1), rtol=1e-5)
    # ReLU's diagonal holds mean(mask)^2 / (mean(mask^2) = mean(mask)) of each row's energy:
    # J[i, i] = m_hat(0) / N and sum_j |J[i, j]|^2 = sum |m_hat|^2 / N^2 = mean(mask).
    mask_mean = float(np.mean(np.asarray(x) > 0))
    np.testing.assert_allclose(
        sj.diagonal_energy_fraction(rows, nu_i, **kwargs), mask_mean, rtol=1e-5
    )


# ---------------------------------------------------------------------------------------
# CE spectral gradient.


def _linear_head(weights):
    """A 1x1 conv head ``[H, W, Cin] -> [H, W, C]`` followed by bilinear x2 up-sampling."""
    return lambda f: probes.upsample_bilinear(f @ weights, factor=2)


@pytest.mark.usefixtures("x64")
def test_ce_spectral_gradient_against_finite_differences(rng):
    shape, cin, classes = (4, 5), 2, 3
    features = jnp.asarray(rng.normal(size=(*shape, cin)))
    weights = jnp.asarray(rng.normal(size=(cin, classes)))
    labels = rng.integers(0, classes, size=(8, 10))
    labels[0, :3] = 255  # some ignored pixels
    head = _linear_head(weights)
    u = np.array([1.0, -0.5])
    full = np.asarray(ce_spectral_gradient(head, features, labels, in_projection=u))
    assert full.shape == (80, 20) and full.dtype == np.complex128
    reverse = ce_spectral_gradient(head, features, labels, in_projection=u, mode="reverse")
    np.testing.assert_allclose(reverse, full, atol=1e-13)
    nu_i = np.array([0, 20, 41])
    rows = ce_spectral_gradient(head, features, labels, nu_i=nu_i, in_projection=u)
    np.testing.assert_allclose(rows, full[nu_i], atol=1e-13)

    @jax.jit
    def ce_components(f):
        return sj.ce_spectrum(head(f)[None], labels[None])[0].ravel()

    components = lambda f: np.asarray(ce_components(f))

    step, m_in = 1e-5, math.prod(shape)
    phase_h = np.outer(np.arange(4), np.arange(4)) / 4  # [kh, h]
    phase_w = np.outer(np.arange(5), np.arange(5)) / 5  # [kw, w]
    theta = 2 * np.pi * np.add.outer(phase_h, phase_w).transpose(0, 2, 1, 3)  # [kh, kw, h, w]
    for j in [0, 3, 7, 19]:
        kh, kw = divmod(j, shape[1])
        column = 0
        for part, direction in ((1, np.cos(theta[kh, kw])), (1j, np.sin(theta[kh, kw]))):
            delta = (direction / m_in)[..., None] * u  # [H, W, Cin]
            plus, minus = components(features + step * delta), components(features - step * delta)
            column = column + part * (plus - minus) / (2 * step)
        np.testing.assert_allclose(full[:, j], column, atol=1e-8)


def test_ce_spectral_gradient_rows_sum_to_gradient_of_mean_ce(rng):
    """``sum_i G[i, :] = F_in^{-H}``-pullback of the spatial CE gradient: ``ifftn(grad . u)``."""
    shape, classes = (8, 8), 4
    features = jnp.asarray(rng.normal(size=(*shape, 3)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(3, classes)), jnp.float32)
    labels = rng.integers(0, classes, size=(16, 16))
    head = _linear_head(weights)
    gradient = ce_spectral_gradient(head, features, labels, chunk_size=16)

    def mean_ce(f):
        log_probs = jax.nn.log_softmax(head(f), axis=-1)
        return -jnp.mean(jnp.take_along_axis(log_probs, jnp.asarray(labels)[..., None], -1))

    spatial = np.asarray(jax.jit(jax.grad(mean_ce))(features), np.float64).sum(-1)  # u = ones
    expected = np.fft.ifft2(spatial).ravel()
    np.testing.assert_allclose(np.asarray(gradient).sum(0), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Bad input.


def test_bad_inputs_raise_clear_errors(rng):
    x = _map(rng, (8, 8))
    kernel = _kernel(rng, 3, 2)
    conv = functools.partial(probes.conv, kernel=kernel)
    with pytest.raises(TypeError, match="x must be a real floating array.*complex"):
        sj.spectral_jacobian(conv, x.astype(jnp.complex64))
    with pytest.raises(TypeError, match="x must be a real floating"):
        sj.spectral_jacobian(conv, x.astype(jnp.int32))
    with pytest.raises(ValueError, match=r"x must have shape \[H, W, Cin\]"):
        sj.spectral_jacobian(conv, x[None])
    with pytest.raises(ValueError, match="batch axis"):
        sj.spectral_jacobian(lambda z: conv(z)[None], x)
    with pytest.raises(TypeError, match="fn must return a single array"):
        sj.spectral_jacobian(lambda z: (z, z), x)
    with pytest.raises(TypeError, match="fn must return a real floating array"):
        sj.spectral_jacobian(lambda z: z.astype(jnp.complex64), x)
    with pytest.raises(TypeError, match="fn must return a real floating array"):
        sj.spectral_jacobian(lambda z: (z > 0).astype(jnp.int32), x)
    with pytest.raises(ValueError, match=r"nu_i must lie in \[0, 64\)"):
        sj.spectral_jacobian_rows(conv, x, np.array([0, 64]))
    with pytest.raises(ValueError, match=r"nu_j must lie in \[0, 64\)"):
        sj.spectral_jacobian_columns(conv, x, np.array([-1]))
    with pytest.raises(TypeError, match="nu_i must hold integer"):
        sj.spectral_jacobian_rows(conv, x, np.array([0.5]))
    with pytest.raises(ValueError, match=r"in_projection must have shape \[1\]"):
        sj.spectral_jacobian(conv, x, in_projection=np.ones(2))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        sj.spectral_jacobian(conv, x, chunk_size=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        sj.spectral_jacobian(conv, x, mode="sideways")
    head = _linear_head(jnp.ones((1, 3)))
    with pytest.raises(ValueError, match=r"labels must have shape \[H', W'\]"):
        sj.ce_spectral_gradient(head, x, np.zeros((8, 8), np.int32))
    with pytest.raises(ValueError, match="labels must lie in"):
        sj.ce_spectral_gradient(head, x, np.full((16, 16), 7, np.int32))
    with pytest.raises(ValueError, match=r"nu_i must lie in \[0, 256\)"):
        sj.ce_spectral_gradient(head, x, np.zeros((16, 16), np.int32), nu_i=np.array([256]))
    with pytest.raises(ValueError, match="max_distance must be a non-negative int"):
        sj.within_distance_energy_fraction(
            jnp.ones((1, 64)), np.array([0]), out_shape=(8, 8), in_shape=(8, 8), max_distance=-1
        )


# ---------------------------------------------------------------------------------------
# Eager calls.


def _jacobian_calls(rng):
    """``name -> (call, first args, same-shape args, new-shape args)``, one ``fn`` each."""
    kernel = _kernel(rng, 3, 2, (2, 2))
    layer = functools.partial(probes.conv_activation, kernel=kernel, activation="relu")
    x, x_same, x_new = _map(rng, (8, 8), 2), _map(rng, (8, 8), 2), _map(rng, (9, 7), 2)
    indices, other_indices = np.array([0, 5, 62]), np.array([1, 2, 3])
    head = _linear_head(jnp.asarray(rng.normal(size=(2, 3)), jnp.float32))
    labels = rng.integers(0, 3, size=(16, 16))
    new_labels = rng.integers(0, 3, size=(18, 14))
    return {
        "spectral_jacobian": (
            functools.partial(sj.spectral_jacobian, chunk_size=16),
            (layer, x),
            (layer, x_same),
            (layer, x_new),
        ),
        "spectral_jacobian[forward]": (
            functools.partial(sj.spectral_jacobian, chunk_size=16, mode="forward"),
            (layer, x),
            (layer, x_same),
            (layer, x_new),
        ),
        "spectral_jacobian_rows": (
            sj.spectral_jacobian_rows,
            (layer, x, indices),
            (layer, x_same, other_indices),
            (layer, x_new, indices),
        ),
        "spectral_jacobian_columns": (
            sj.spectral_jacobian_columns,
            (layer, x, indices),
            (layer, x_same, other_indices),
            (layer, x_new, indices),
        ),
        "spectral_jacobian_band_energy": (
            functools.partial(sj.spectral_jacobian_band_energy, chunk_size=8),
            (layer, x),
            (layer, x_same),
            (layer, x_new),
        ),
        "ce_spectral_gradient": (
            sj.ce_spectral_gradient,
            (head, x, labels),
            (head, x_same, labels[::-1].copy()),
            (head, x_new, new_labels),
        ),
        "ce_spectral_gradient[nu_i]": (
            lambda head, x, labels, nu_i: sj.ce_spectral_gradient(head, x, labels, nu_i=nu_i),
            (head, x, labels, indices),
            (head, x_same, labels, other_indices),
            (head, x_new, new_labels, indices),
        ),
    }


JACOBIAN_CALLS = list(_jacobian_calls(np.random.default_rng(0)))


@pytest.mark.parametrize("name", JACOBIAN_CALLS)
def test_repeated_eager_calls_compile_once_per_shape(rng, name):
    # With the same fn (a partial kept in a variable), eager calls compile one executable
    # per shape: fn is static in the module-level jit, and it is traced once per shape.
    call, first, same_shapes, new_shapes = _jacobian_calls(rng)[name]
    compile_counting.assert_compiles_once_per_shape(call, first, same_shapes, new_shapes)


def test_eager_fn_identity_and_unhashable_fn(rng):
    x = _map(rng, (8, 8), 2)
    kernel = _kernel(rng, 3, 2, (2, 2))
    make_layer = lambda: functools.partial(probes.conv, kernel=kernel)
    expected = spectral_jacobian(make_layer(), x)
    jax.clear_caches()
    assert len(compile_counting.compilations(sj.spectral_jacobian, make_layer(), x)) == 1
    # A re-created partial is opened into its function (static) and arrays (traced).
    assert compile_counting.compilations(sj.spectral_jacobian, make_layer(), x) == []
    # A new closure is a new static fn: compiles again.
    closure = lambda z: probes.conv(z, kernel)  # noqa: E731
    assert len(compile_counting.compilations(sj.spectral_jacobian, closure, x)) == 1
    # Jitting at the edge with the array as an argument compiles once per shape.
    by_kernel = jax.jit(
        lambda kernel, x: sj.spectral_jacobian(functools.partial(probes.conv, kernel=kernel), x)
    )
    assert len(compile_counting.compilations(by_kernel, kernel, x)) == 1
    assert compile_counting.compilations(by_kernel, kernel * 2, x) == []

    class Unhashable:  # a callable with __eq__ and no __hash__ cannot be static
        __hash__ = None

        def __call__(self, z):
            return probes.conv(z, kernel)

        def __eq__(self, other):
            return isinstance(other, Unhashable)

    _assert_close(sj.spectral_jacobian(Unhashable(), x), expected, "float32")


@pytest.mark.parametrize(
    ("out_shape", "in_shape"), [((25,), (30,)), ((5, 5), (5, 6)), ((9, 7), (8, 7))]
)
def test_diagonal_fraction_refuses_an_out_shape_that_does_not_fit(rng, out_shape, in_shape):
    # A circular convolution's Jacobian of 30 frequencies read with an out_shape of 25
    # gave a plausible fraction (0.03 to 0.12) instead of refusing.
    x = _map(rng, in_shape)
    kernel = _kernel(rng, 3, len(in_shape))
    conv = functools.partial(probes.conv, kernel=kernel)
    nu_i = np.arange(min(math.prod(out_shape), math.prod(in_shape)))
    rows = spectral_jacobian_rows(conv, x, nu_i)
    with pytest.raises(ValueError, match=rf"out_shape {re.escape(str(out_shape))} does not fit"):
        sj.diagonal_energy_fraction(rows, nu_i, out_shape=out_shape, in_shape=in_shape)
    with pytest.raises(ValueError, match="does not fit"):
        sj.within_distance_energy_fraction(
            rows, nu_i, out_shape=out_shape, in_shape=in_shape, max_distance=1
        )
    # With the true output grid the diagonal holds every row's energy.
    fractions = sj.diagonal_energy_fraction(rows, nu_i, out_shape=in_shape, in_shape=in_shape)
    np.testing.assert_allclose(fractions, 1, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Parameters as arguments, re-created partials and the batched form.


def _conv_relu(params, z):
    """A params-form layer: ``relu(conv(z, params["kernel"]))``, zero padding."""
    return probes.conv_activation(z, params["kernel"], activation="relu", padding="zero")


def _head_with_params(params, features):
    """A params-form head: 1x1 conv ``params["weights"]`` and bilinear x2 up-sampling."""
    return probes.upsample_bilinear(features @ params["weights"], factor=2)


def test_params_form_matches_the_float64_reference(rng):
    kernel = _kernel(rng, 3, 2, (2, 3))
    x = _map(rng, (6, 5), 2)
    params = {"kernel": kernel}
    closure = lambda z: _conv_relu(params, z)  # noqa: E731
    expected = _dense_reference(closure, x)  # [M_out, M_in] float64 NumPy
    nu_i, nu_j = np.array([0, 7, 29]), np.array([3, 11])
    _assert_close(sj.spectral_jacobian(_conv_relu, x, params=params), expected, "float32")
    _assert_close(
        sj.spectral_jacobian_rows(_conv_relu, x, nu_i, params=params), expected[nu_i], "float32"
    )
    _assert_close(
        sj.spectral_jacobian_columns(_conv_relu, x, nu_j, params=params),
        expected[:, nu_j],
        "float32",
    )
    energy = sj.spectral_jacobian_band_energy(_conv_relu, x, params=params, chunk_size=8)
    assert np.isclose(float(energy.sum()), np.sum(np.abs(expected) ** 2), rtol=1e-4)
    weights = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    labels = rng.integers(0, 3, size=(12, 10))
    head_params = {"weights": weights}
    by_params = sj.ce_spectral_gradient(_head_with_params, x, labels, params=head_params)
    by_closure = ce_spectral_gradient(_linear_head(weights), x, labels)
    _assert_close(by_params, by_closure, "float32")


def test_new_params_and_recreated_partials_compile_nothing(rng):
    kernel = _kernel(rng, 3, 2, (2, 2))
    x = _map(rng, (8, 8), 2)
    nu_i = np.array([0, 9, 40])
    jax.clear_caches()
    first = compile_counting.compilations(
        sj.spectral_jacobian_rows, _conv_relu, x, nu_i, params={"kernel": kernel}
    )
    assert len(first) == 1, first
    new_kernel = 2 * np.asarray(kernel) + 1  # NumPy: no eager JAX op to compile
    new = compile_counting.compilations(
        sj.spectral_jacobian_rows, _conv_relu, x, nu_i, params={"kernel": new_kernel}
    )
    assert new == [], f"new parameter values compiled {new}"
    # The new parameters are used, not the first ones: compare with the closure form.
    rows = sj.spectral_jacobian_rows(_conv_relu, x, nu_i, params={"kernel": new_kernel})
    closure = lambda z: _conv_relu({"kernel": new_kernel}, z)  # noqa: E731
    _assert_close(rows, _dense_reference(closure, x)[nu_i], "float32")

    # A re-created partial with new array values is the same static function.
    def make_layer(k):
        return functools.partial(
            probes.conv_activation, kernel=k, activation="relu", padding="zero"
        )

    assert len(compile_counting.compilations(sj.spectral_jacobian, make_layer(kernel), x)) == 1
    again = compile_counting.compilations(sj.spectral_jacobian, make_layer(new_kernel), x)
    assert again == [], f"a re-created partial compiled {again}"
    # Its non-array arguments are static: another activation is another computation.
    softplus_layer = functools.partial(probes.conv_activation, kernel=kernel)
    assert len(compile_counting.compilations(sj.spectral_jacobian, softplus_layer, x)) == 1
    _assert_close(
        sj.spectral_jacobian(make_layer(new_kernel), x),
        sj.spectral_jacobian(_conv_relu, x, params={"kernel": new_kernel}),
        "float32",
    )
    # The CE spectral gradient with a Flax head's variables as params.
    modules = []  # the module, from the trace of the initialisation

    def init_variables(key):
        module, variables = probes.init_decoder_head(key, (4, 4, 2), upsample=2)
        modules.append(module)
        return variables

    variables = jax.jit(init_variables)(jax.random.key(0))  # one program, not op by op
    (module,) = modules
    head = probes.decoder_head_fn(module)
    labels = rng.integers(0, 3, size=(8, 8))
    corner = np.asarray(x)[:4, :4]
    first = compile_counting.compilations(
        sj.ce_spectral_gradient, head, corner, labels, params=variables
    )
    assert len(first) == 1, first
    doubled = jax.tree.map(lambda v: 2 * np.asarray(v), variables)
    new = compile_counting.compilations(
        sj.ce_spectral_gradient, probes.decoder_head_fn(module), corner, labels, params=doubled
    )
    assert new == [], f"new Flax variables compiled {new}"
    by_params = sj.ce_spectral_gradient(head, corner, labels, params=doubled)
    by_closure = sj.ce_spectral_gradient(probes.decoder_head_fn(module, doubled), corner, labels)
    _assert_close(by_params, by_closure, "float32")


def test_batched_form_is_the_per_image_result_in_one_program(rng):
    kernel = _kernel(rng, 3, 2, (2, 2))
    params = {"kernel": kernel}
    xs = jnp.stack([_map(rng, (6, 6), 2) for _ in range(3)])  # [B, H, W, Cin]
    nu_i = np.array([0, 8, 21])
    jax.clear_caches()
    compiled = compile_counting.compilations(
        sj.spectral_jacobian_rows, _conv_relu, xs, nu_i, params=params, batched=True
    )
    assert len(compiled) == 1, compiled
    batched = np.asarray(
        sj.spectral_jacobian_rows(_conv_relu, xs, nu_i, params=params, batched=True)
    )  # NumPy from here on: indexing compiles no eager JAX op
    assert batched.shape == (3, 3, 36)
    layer = lambda z: _conv_relu(params, z)  # noqa: E731
    references_by_image = _dense_references(layer, xs)  # one program for the 3 images
    for b in range(3):
        _assert_close(batched[b], references_by_image[b][nu_i], "float32")
    full = np.asarray(
        sj.spectral_jacobian(_conv_relu, xs, params=params, batched=True, chunk_size=8)
    )
    _assert_close(full[2], references_by_image[2], "float32")
    columns = np.asarray(
        sj.spectral_jacobian_columns(_conv_relu, xs, np.array([1, 4]), params=params, batched=True)
    )
    _assert_close(columns[1], full[1][:, [1, 4]], "float32")
    energy = np.asarray(
        sj.spectral_jacobian_band_energy(_conv_relu, xs, params=params, batched=True)
    )
    assert energy.shape[0] == 3
    assert np.allclose(energy.sum(axis=(1, 2)), (np.abs(full) ** 2).sum(axis=(1, 2)), rtol=1e-4)
    weights = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    labels = rng.integers(0, 3, size=(3, 12, 12))
    gradient = np.asarray(
        sj.ce_spectral_gradient(
            _head_with_params, xs, labels, params={"weights": weights}, batched=True
        )
    )
    head = _linear_head(weights)  # one static fn: one compilation for the 3 images
    for b, image in enumerate(np.asarray(xs)):
        _assert_close(gradient[b], ce_spectral_gradient(head, image, labels[b]), "float32")


def test_params_and_batched_errors_name_the_argument(rng):
    x = _map(rng, (8, 8), 2)
    params = {"kernel": _kernel(rng, 3, 2, (2, 2))}
    with pytest.raises(ValueError, match="batched must be a bool"):
        sj.spectral_jacobian(_conv_relu, x, params=params, batched="yes")
    with pytest.raises(ValueError, match=r"x must have shape \[H, W, Cin\] or \[L, Cin\]"):
        sj.spectral_jacobian(_conv_relu, x[None, None], params=params, batched=True)
    with pytest.raises(ValueError, match="fn could not be evaluated"):
        sj.spectral_jacobian(_conv_relu, x, params={"kernel": jnp.ones((3, 3, 5, 2))})
    head_params = {"weights": jnp.ones((2, 3))}
    with pytest.raises(ValueError, match=r"labels must have shape \[B, H', W'\] = \(2, 16, 16\)"):
        sj.ce_spectral_gradient(
            _head_with_params,
            jnp.stack([x, x]),
            np.zeros((16, 16), np.int32),
            params=head_params,
            batched=True,
        )
    with pytest.raises(ValueError, match="labels must lie in"):
        sj.ce_spectral_gradient(
            _head_with_params,
            jnp.stack([x, x]),
            np.full((2, 16, 16), 9, np.int32),
            params=head_params,
            batched=True,
        )


# ---------------------------------------------------------------------------------------
# Inputs as users hold them: PyTorch tensors and channels-first maps.


def _channels_first(fn):
    """``fn(params, [H, W, C])`` as a function of channels-first maps ``[C, H, W]``."""

    def of_channels_first(params, z):
        return jnp.moveaxis(fn(params, jnp.moveaxis(z, 0, -1)), -1, 0)

    return of_channels_first


_conv_relu_chw = _channels_first(_conv_relu)
_head_chw = _channels_first(_head_with_params)


def _double(z):
    return 2.0 * z


def test_torch_channels_first_maps_match_the_float64_reference(rng):
    torch = pytest.importorskip("torch")
    kernel = _kernel(rng, 3, 2, (2, 3))
    x = _map(rng, (6, 5), 2)  # [H, W, Cin]
    params = {"kernel": torch.tensor(np.asarray(kernel))}  # torch params too
    xs = jnp.stack([x, _map(rng, (6, 5), 2)])  # [B, H, W, Cin], for the batched form below
    references_by_image = _dense_references(lambda z: _conv_relu({"kernel": kernel}, z), xs)
    expected = references_by_image[0]
    x_chw = torch.from_numpy(np.moveaxis(np.asarray(x), -1, 0).copy())  # [Cin, H, W]
    settings = dict(params=params, data_format="CHW")
    _assert_close(sj.spectral_jacobian(_conv_relu_chw, x_chw, **settings), expected, "float32")
    nu_i, nu_j = torch.tensor([0, 7, 29]), [(1, -2), (0, 2)]
    rows = sj.spectral_jacobian_rows(_conv_relu_chw, x_chw, nu_i, **settings)
    _assert_close(rows, expected[nu_i.numpy()], "float32")
    columns = sj.spectral_jacobian_columns(_conv_relu_chw, x_chw, nu_j, **settings)
    _assert_close(columns, expected[:, sj.ravel_frequencies(nu_j, (6, 5))], "float32")
    energy = sj.spectral_jacobian_band_energy(_conv_relu_chw, x_chw, chunk_size=8, **settings)
    assert np.isclose(float(energy.sum()), np.sum(np.abs(expected) ** 2), rtol=1e-4)
    # A batch of channels-first maps: the layout of each map, the batch axis first.
    xs_chw = torch.from_numpy(np.moveaxis(np.asarray(xs), -1, 1).copy())  # [B, Cin, H, W]
    batched = sj.spectral_jacobian_rows(_conv_relu_chw, xs_chw, nu_i, batched=True, **settings)
    for b in range(2):
        _assert_close(batched[b], references_by_image[b][nu_i.numpy()], "float32")
    # The CE gradient of a channels-first head (logits [C, H', W']) on torch labels.
    weights = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
    labels = rng.integers(0, 3, size=(12, 10))
    by_chw = sj.ce_spectral_gradient(
        _head_chw,
        x_chw,
        torch.from_numpy(labels),
        params={"weights": torch.tensor(np.asarray(weights))},
        data_format="CHW",
    )
    _assert_close(by_chw, ce_spectral_gradient(_linear_head(weights), x, labels), "float32")


def test_an_unstated_channels_first_map_is_refused(rng):
    x = np.asarray(_map(rng, (9, 9), 2)).transpose(2, 0, 1).copy()  # [2, 9, 9]
    refused = r"x has shape \(2, 9, 9\), read as \[H, W, C\] with H = 2: channels first\? "
    refused += r"pass data_format='CHW'"
    calls = [
        lambda **kw: sj.spectral_jacobian(_double, x, **kw),
        lambda **kw: sj.spectral_jacobian_rows(_double, x, [0], **kw),
        lambda **kw: sj.spectral_jacobian_columns(_double, x, [0], **kw),
        lambda **kw: sj.spectral_jacobian_band_energy(_double, x, **kw),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=refused):
            call()
        with pytest.raises(ValueError, match=r"data_format must be one of \('HWC', 'CHW'\)"):
            call(data_format="NCHW")
    with pytest.raises(ValueError, match=refused.replace("x has", "features has")):
        sj.ce_spectral_gradient(_double, x, np.zeros((2, 9), int))
    with pytest.raises(ValueError, match=refused):
        sj.spectral_jacobian(_double, x[None], batched=True)  # each map is checked
    # Stated, either layout is computed: J = 2 C I for z -> 2 z (u, v all ones).
    as_hwc = sj.spectral_jacobian(_double, x, data_format="HWC")  # H = 2, W = 9, C = 9
    _assert_close(as_hwc, 2 * 9 * np.eye(18), "float32")
    as_chw = sj.spectral_jacobian(_double, x, data_format="CHW")  # C = 2, H = W = 9
    _assert_close(as_chw, 2 * 2 * np.eye(81), "float32")
    with pytest.raises(ValueError, match=r"data_format='CHW' is for 2-D maps"):
        sj.spectral_jacobian(_double, x[0], data_format="CHW")  # [L, Cin]


def test_torch_tensors_that_cannot_be_read_name_the_argument(rng):
    torch = pytest.importorskip("torch")
    x = torch.zeros((4, 4, 2), requires_grad=True)
    with pytest.raises(TypeError, match=r"x of type Tensor could not be read.*detach\(\)"):
        sj.spectral_jacobian(_double, x)
    with pytest.raises(TypeError, match=r"features of type Tensor could not be read"):
        sj.ce_spectral_gradient(_double, x, np.zeros((4, 4), int))


def test_channels_first_torch_maps_compile_once_per_shape(rng):
    torch = pytest.importorskip("torch")
    kernel = torch.tensor(np.asarray(_kernel(rng, 3, 2, (2, 2))))

    def chw(seed):
        return torch.tensor(np.asarray(_map(np.random.default_rng(seed), (8, 8), 2)))

    call = functools.partial(
        sj.spectral_jacobian_rows, _conv_relu_chw, nu_i=np.array([0, 9]), data_format="CHW"
    )
    compile_counting.assert_compiles_once_per_shape(
        lambda x, k: call(x.permute(2, 0, 1), params={"kernel": k}),
        (chw(0), kernel),
        (chw(1), 2 * kernel),
        (torch.tensor(np.asarray(_map(rng, (9, 9), 2))), kernel),
    )
