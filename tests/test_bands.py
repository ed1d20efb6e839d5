"""Tests for spectral_jax.bands: frequency grids, bands and their sizes.

References are explicit loops over signed DFT indices (tests/helpers/references.py) and closed
forms; everything here is integer-exact, so comparisons are exact.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax import bands
from tests.helpers import references

SHAPES = [(1, 1), (1, 6), (5, 1), (4, 4), (7, 9), (8, 8), (16, 12), (33, 33)]
RADII = ["chebyshev", "euclidean"]


@pytest.mark.parametrize("n", range(1, 12))
def test_signed_frequencies_match_definition(n):
    expected = [references.signed_frequency(k, n) for k in range(n)]
    np.testing.assert_array_equal(bands.signed_frequencies(n), expected)
    # Every frequency -floor(n/2) .. ceil(n/2) - 1 exactly once.
    assert sorted(expected) == list(range(-(n // 2), (n + 1) // 2))


@pytest.mark.parametrize("n", range(1, 12))
def test_centered_frequencies_ascend_through_zero_at_n_over_two(n):
    centered = bands.centered_frequencies(n)
    np.testing.assert_array_equal(centered, np.arange(-(n // 2), (n + 1) // 2))
    assert centered[n // 2] == 0


@pytest.mark.parametrize("radius", RADII)
@pytest.mark.parametrize("shape", SHAPES)
def test_band_index_matches_loops(shape, radius):
    expected = references.band_index(shape, radius)
    got = bands.band_index(shape, radius=radius)
    assert got.shape == shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("radius", RADII)
@pytest.mark.parametrize("shape", SHAPES)
def test_half_band_index_is_first_rfft_columns(shape, radius):
    height, width = shape
    expected = references.band_index(shape, radius)[:, : width // 2 + 1]
    got = bands.half_band_index(shape, radius=radius)
    assert got.shape == (height, width // 2 + 1)
    np.testing.assert_array_equal(got, expected)


def test_band_index_docstring_example():
    np.testing.assert_array_equal(bands.band_index((4, 4))[:, 0], [0, 1, 2, 1])


def test_euclidean_radius_is_an_exact_integer_ceiling():
    index = bands.band_index((16, 16), radius="euclidean")
    # Perfect squares are not rounded up; anything above them is.
    assert index[3, 4] == 5 and index[-3, -4] == 5 and index[0, 5] == 5
    assert index[1, 1] == 2  # sqrt(2) -> 2
    assert index[5, 5] == 8  # sqrt(50) = 7.07 -> 8
    assert index[6, 8] == 10  # sqrt(100)


@pytest.mark.parametrize("radius", RADII)
@pytest.mark.parametrize("shape", SHAPES)
def test_num_bands_closed_form(shape, radius):
    half_h, half_w = shape[0] // 2, shape[1] // 2
    if radius == "chebyshev":
        expected = max(half_h, half_w) + 1
    else:
        expected = references.band_of(half_h, half_w, "euclidean") + 1
    assert bands.num_bands(shape, radius=radius) == expected
    assert expected == references.band_index(shape, radius).max() + 1


@pytest.mark.parametrize("radius", RADII)
@pytest.mark.parametrize("shape", SHAPES)
def test_band_sizes_count_frequencies(shape, radius):
    sizes = bands.band_sizes(shape, radius=radius)
    expected = np.bincount(references.band_index(shape, radius).ravel())
    np.testing.assert_array_equal(sizes, expected)
    assert sizes.sum() == shape[0] * shape[1]
    assert len(sizes) == bands.num_bands(shape, radius=radius)


@pytest.mark.parametrize("n", [0, 1, 2, 5, 16])
def test_odd_grid_holds_exactly_its_band_limit(n):
    grid = bands.grid_of_band_limit(n)
    assert grid == 2 * n + 1
    assert bands.band_limit_of_grid(grid) == n
    index = bands.band_index((grid, grid))
    assert index.max() == n
    # Chebyshev band r of a (2n+1)^2 grid is the ring (2r+1)^2 - (2r-1)^2 = 8r.
    expected = [1] + [8 * r for r in range(1, n + 1)]
    np.testing.assert_array_equal(bands.band_sizes((grid, grid)), expected)


@pytest.mark.parametrize(("grid", "band_limit"), [(513, 256), (129, 64), (65, 32), (33, 16)])
def test_band_limits_of_the_papers_grids(grid, band_limit):
    assert bands.band_limit_of_grid(grid) == band_limit
    assert bands.grid_of_band_limit(band_limit) == grid


def test_band_limit_of_even_grid_rounds_down():
    # An even grid holds the frequency -n/2 but not +n/2: only n/2 - 1 is complete.
    assert bands.band_limit_of_grid(64) == 31
    assert bands.band_limit_of_grid(1) == 0


@pytest.mark.parametrize("shape", SHAPES)
def test_half_spectrum_weights_count_mirrored_columns(shape):
    width = shape[1]
    weights = bands.half_spectrum_weights(shape)
    # Column k of the half spectrum stands for every full column j with |nu_j| == k.
    expected = [
        sum(abs(references.signed_frequency(j, width)) == k for j in range(width))
        for k in range(width // 2 + 1)
    ]
    np.testing.assert_array_equal(weights, expected)
    assert weights.sum() == width


@pytest.mark.parametrize("shape", SHAPES)
def test_half_spectrum_weights_reproduce_a_full_even_sum(shape, rng):
    # |X(nu)|^2 of a real map is even in nu: its full sum is the weighted half sum.
    image = rng.normal(size=shape)
    full = np.sum(np.abs(np.fft.fft2(image)) ** 2)
    half = np.sum(np.abs(np.fft.rfft2(image)) ** 2 * bands.half_spectrum_weights(shape))
    np.testing.assert_allclose(half, full, rtol=1e-12)


@pytest.mark.parametrize("shape", [(4, 4), (7, 9), (8, 5), (1, 6)])
def test_centered_spectrum_puts_zero_frequency_at_the_centre(shape):
    height, width = shape
    spectrum = np.zeros((2, 3, height, width))
    spectrum[..., 0, 0] = 1.0  # nu = 0 in DFT order
    centered = np.asarray(bands.centered_spectrum(jnp.asarray(spectrum)))
    assert centered.shape == spectrum.shape
    expected = np.zeros_like(spectrum)
    expected[..., height // 2, width // 2] = 1.0
    np.testing.assert_array_equal(centered, expected)


@pytest.mark.parametrize("shape", [(4, 4), (7, 9), (8, 5)])
def test_centered_spectrum_matches_centered_frequencies(shape):
    # Entry [i, j] of the centred band index is the band of the centred frequencies.
    centered = np.asarray(bands.centered_spectrum(bands.band_index(shape)))
    freq_h = bands.centered_frequencies(shape[0])
    freq_w = bands.centered_frequencies(shape[1])
    expected = np.maximum(np.abs(freq_h)[:, None], np.abs(freq_w)[None, :])
    np.testing.assert_array_equal(centered, expected)


def test_bad_radius_raises():
    with pytest.raises(ValueError, match="radius"):
        bands.band_index((4, 4), radius="manhattan")
    with pytest.raises(ValueError, match="radius"):
        bands.num_bands((4, 4), radius="l1")


@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (4,), (2, 3, 4), (-1, 3)])
def test_bad_spatial_shape_raises(shape):
    with pytest.raises(ValueError, match="shape"):
        bands.band_index(shape)
    with pytest.raises(ValueError, match="shape"):
        bands.half_spectrum_weights(shape)


def test_bad_grid_and_band_limit_raise():
    with pytest.raises(ValueError, match="grid_size"):
        bands.band_limit_of_grid(0)
    with pytest.raises(ValueError, match="band_limit"):
        bands.grid_of_band_limit(-1)
