"""Tests of spectral_jax.frequencies: signed frequencies <-> flat DFT indices.

The references are explicit loops over the DFT bins with tests/helpers/references.py's signed
frequencies, and a dense float64 NumPy spectral Jacobian ``F diag(m) F^{-1}`` for the
Jacobian functions that take signed frequencies.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_jax as sj
from spectral_jax import probes
from tests.helpers import references

SHAPES = [(7, 9), (8, 8), (1, 6), (5,), (6,)]


def _reference_signed(shape):
    """``{flat index: signed frequency tuple}`` by a loop over every bin, C order."""
    return {
        flat: tuple(references.signed_frequency(k, n) for k, n in zip(bins, shape, strict=True))
        for flat, bins in enumerate(np.ndindex(*shape))
    }


@pytest.mark.parametrize("shape", SHAPES)
def test_ravel_and_unravel_match_the_loop_over_bins(shape):
    table = _reference_signed(shape)
    flats = np.array(list(table))
    signed = np.array(list(table.values()))  # [M, d]
    np.testing.assert_array_equal(sj.ravel_frequencies(signed, shape), flats)
    np.testing.assert_array_equal(sj.unravel_frequencies(flats, shape), signed)
    np.testing.assert_array_equal(sj.flat_frequency_indices(signed, shape), flats)
    np.testing.assert_array_equal(sj.flat_frequency_indices(flats, shape), flats)


def test_nyquist_is_one_bin_on_even_axes():
    # +4 and -4 are the same bin of an 8-point axis; an odd axis has no such frequency.
    assert sj.ravel_frequencies([(4, 0), (-4, 0), (0, 4)], (8, 8)).tolist() == [32, 32, 4]
    with pytest.raises(ValueError, match=r"\(4, 0\), which a grid of shape \(7, 9\)"):
        sj.ravel_frequencies([(4, 0)], (7, 9))


def test_fig4_frequencies_are_the_flat_input_indices_0_m4_m2():
    for shape in [(9, 9), (16, 16), (7, 10)]:
        m = shape[0] * shape[1]
        table = _reference_signed(shape)
        expected = [table[0], table[m // 4], table[m // 2]]
        assert [tuple(f) for f in sj.fig4_frequencies(shape).tolist()] == expected
    # The x2 up-sampled grid holds the same signed frequencies at other flat indices.
    up = sj.ravel_frequencies(sj.fig4_frequencies((16, 16)), (32, 32))
    assert [_reference_signed((32, 32))[i] for i in up.tolist()] == [(0, 0), (4, 0), (-8, 0)]


@pytest.mark.parametrize(
    ("nu", "error", "message"),
    [
        ([(5, 0)], ValueError, r"nu_i holds \(5, 0\), which a grid of shape \(8, 8\) does not"),
        ([(1.0, 2.0)], TypeError, r"nu_i must hold integer frequencies"),
        ([(1, 2, 3)], ValueError, r"nu_i must be \[K, 2\] signed frequencies"),
        ([[[1, 2]]], ValueError, r"nu_i must be \[K\] flat frequency indices or \[K, 2\]"),
        ([64], ValueError, r"nu_i must lie in \[0, 64\).*got 64; signed frequencies go in"),
        ([-1], ValueError, r"nu_i must lie in \[0, 64\)"),
        ([(1, 2), (3,)], ValueError, r"nu_i must be a rectangular array"),
    ],
)
def test_bad_frequencies_name_the_argument(nu, error, message):
    with pytest.raises(error, match=message):
        sj.flat_frequency_indices(nu, (8, 8), name="nu_i")


# ---------------------------------------------------------------------------------------
# The Jacobian functions take signed frequencies.

SHAPE = (7, 6)
MASK = np.random.default_rng(3).uniform(0.5, 1.5, size=SHAPE)
NU = [(1, 2), (-3, 0), (0, -3)]


def _masked(x):  # [H, W, 1] -> [H, W, 1], linear: J = F diag(m) F^{-1}
    return x * jnp.asarray(MASK, x.dtype)[..., None]


@functools.cache
def _dense_reference():
    def dft(n):
        k = np.arange(n)
        return np.exp(-2j * np.pi * np.outer(k, k) / n)

    forward = np.kron(dft(SHAPE[0]), dft(SHAPE[1]))  # C-order flat index kh * W + kw
    return forward @ np.diag(MASK.ravel()) @ np.linalg.inv(forward)


def _flat(nu):
    table = {v: k for k, v in _reference_signed(SHAPE).items()}
    return np.array([table[f] for f in nu])


def test_jacobian_rows_and_columns_take_signed_frequencies():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(*SHAPE, 1)), jnp.float32)
    dense = _dense_reference()
    rows = sj.spectral_jacobian_rows(_masked, x, NU)  # the call that used to fail
    np.testing.assert_allclose(rows, dense[_flat(NU)], atol=1e-5)
    columns = sj.spectral_jacobian_columns(_masked, x, np.array(NU))
    np.testing.assert_allclose(columns, dense[:, _flat(NU)], atol=1e-5)
    traced = jax.jit(lambda nu: sj.spectral_jacobian_rows(_masked, x, nu))(jnp.array(NU))
    np.testing.assert_allclose(traced, dense[_flat(NU)], atol=1e-5)
    fraction = sj.diagonal_energy_fraction(rows, NU, out_shape=SHAPE, in_shape=SHAPE)
    diagonal = np.abs(dense[_flat(NU), _flat(NU)]) ** 2
    expected = diagonal / np.sum(np.abs(dense[_flat(NU)]) ** 2, -1)
    np.testing.assert_allclose(fraction, expected, rtol=1e-6)


def test_ce_spectral_gradient_takes_signed_frequencies():
    rng = np.random.default_rng(1)
    features = jnp.asarray(rng.normal(size=(*SHAPE, 2)), jnp.float32)
    labels = rng.integers(0, 2, size=SHAPE)
    head = lambda f: f  # noqa: E731  two channels are the logits of two classes
    signed = sj.ce_spectral_gradient(head, features, labels, nu_i=NU)
    flat = sj.ce_spectral_gradient(head, features, labels, nu_i=_flat(NU))
    np.testing.assert_array_equal(signed, flat)
    with pytest.raises(ValueError, match=r"nu_i holds \(4, 0\), which a grid of shape \(7, 6\)"):
        sj.ce_spectral_gradient(head, features, labels, nu_i=[(4, 0)])


def test_upsampling_rows_at_the_same_signed_frequency_are_diagonal():
    """The notebook's x2 up-sampling rows, against the dense float64 ``F_out U F_in^{-1}``.

    Rows chosen by signed frequency (Fig. 4's i = 0, M/4, M/2 of the input) hold their
    energy on the diagonal; the flat indices 4M/4 and 4M/2 of the output grid are the
    frequencies (8, 0) and (-16, 0), which the 16-point input does not hold: 0 there.
    """
    size = 16
    shape, out_shape = (size, size), (2 * size, 2 * size)

    def dft(n):
        k = np.arange(n)
        return np.exp(-2j * np.pi * np.outer(k, k) / n)

    upsampling = np.kron(*(references.bilinear_upsampling_matrix(size, 2),) * 2)
    dense = np.kron(dft(2 * size), dft(2 * size)) @ upsampling
    dense = dense @ np.kron(dft(size), dft(size)).conj().T / size**2  # [4M, M]
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, size=(*shape, 1)), jnp.float32)
    upsample = functools.partial(probes.upsample_bilinear, factor=2)
    out_table = {v: k for k, v in _reference_signed(out_shape).items()}
    in_table = {v: k for k, v in _reference_signed(shape).items()}
    m = size * size
    for nu, expect_diagonal in [
        (sj.fig4_frequencies(shape), True),
        (sj.unravel_frequencies([4 * m // 4, 4 * m // 2], out_shape), False),
    ]:
        flat = sj.ravel_frequencies(nu, out_shape)
        assert flat.tolist() == [out_table[tuple(f)] for f in nu.tolist()]
        rows = sj.spectral_jacobian_rows(upsample, x, nu)
        np.testing.assert_allclose(rows, dense[flat], atol=1e-5)
        fraction = sj.diagonal_energy_fraction(rows, nu, out_shape=out_shape, in_shape=shape)
        energy = np.sum(np.abs(dense[flat]) ** 2, axis=-1)
        diagonal = [
            abs(dense[i, in_table[tuple(f)]]) ** 2 if tuple(f) in in_table else 0.0
            for i, f in zip(flat, nu.tolist(), strict=True)
        ]
        np.testing.assert_allclose(fraction, np.array(diagonal) / energy, rtol=1e-5, atol=1e-7)
        assert (np.min(fraction) > 0.97) if expect_diagonal else np.all(np.asarray(fraction) == 0)
