"""Frequency grids and bands of a 2-D DFT.

Frequencies are the DFT indices over the spatial axes ``(H, W)``, taken *signed*:
row index ``h`` is the frequency ``nu_h = h`` for ``h < ceil(H/2)`` and ``h - H``
otherwise (``numpy.fft.fftfreq(H) * H``). A frequency's *band* is its radius:

* ``"chebyshev"`` (default): ``max(|nu_h|, |nu_w|)``. Band limit ``nu_max`` then keeps
  exactly the frequencies that a ``(2 * nu_max + 1)``-sized grid can hold, so the
  paper's 513 -> 129 -> 65 -> 33 grids are ``nu_max`` = 256, 64, 32, 16
  (:func:`band_limit_of_grid`).
* ``"euclidean"``: ``ceil(sqrt(nu_h**2 + nu_w**2))``. The ceiling makes
  "band <= nu_max" mean exactly "radius <= nu_max" for an integer ``nu_max``.

All functions here depend only on static shapes and return NumPy arrays, which become
compile-time constants under ``jax.jit``.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax.numpy as jnp
import numpy as np

from spectral_jax import _checks

Radius = Literal["chebyshev", "euclidean"]
RADII: tuple[str, ...] = ("chebyshev", "euclidean")


def _check_radius(radius: str) -> None:
    if radius not in RADII:
        raise ValueError(f"radius must be one of {RADII}, got {radius!r}.")


def _check_spatial_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(n) < 1 for n in shape):
        raise ValueError(f"spatial shape must be two positive sizes (H, W), got {shape!r}.")
    return int(shape[0]), int(shape[1])


def signed_frequencies(n: int) -> np.ndarray:
    """Signed DFT frequency indices of an axis of length ``n``, in DFT order.

    Args:
      n: axis length.

    Returns:
      Integer array ``[n]``: ``0, 1, ..., ceil(n/2) - 1, -floor(n/2), ..., -1``.
    """
    return np.rint(np.fft.fftfreq(n) * n).astype(np.int64)


def _radius_of(abs_h: np.ndarray, abs_w: np.ndarray, radius: str) -> np.ndarray:
    if radius == "chebyshev":
        return np.maximum(abs_h, abs_w)
    # Integer-exact ceil(sqrt(r2)), so that perfect squares are never rounded up.
    r2 = abs_h**2 + abs_w**2
    root = np.floor(np.sqrt(r2.astype(np.float64))).astype(np.int64)  # floor, up to rounding
    root -= (root * root > r2).astype(np.int64)
    root += ((root + 1) ** 2 <= r2).astype(np.int64)
    return root + (root * root < r2).astype(np.int64)


@functools.lru_cache(maxsize=64)
def _band_index_cached(h: int, w: int, radius: str, half: bool) -> np.ndarray:
    abs_h = np.abs(signed_frequencies(h))[:, None]
    if half:
        abs_w = np.arange(w // 2 + 1)[None, :]
    else:
        abs_w = np.abs(signed_frequencies(w))[None, :]
    out = _radius_of(abs_h, abs_w, radius).astype(np.int32)
    out.setflags(write=False)
    return out


def band_index(shape: tuple[int, int], *, radius: Radius = "chebyshev") -> np.ndarray:
    """Band of every frequency of an ``H x W`` DFT, in DFT (unshifted) order.

    Args:
      shape: spatial shape ``(H, W)``.
      radius: ``"chebyshev"`` or ``"euclidean"`` (see the module docstring).

    Returns:
      Integer array ``[H, W]`` with values in ``[0, num_bands(shape, radius) - 1]``.

    Example:
      >>> band_index((4, 4))[:, 0]
      array([0, 1, 2, 1], dtype=int32)
    """
    _check_radius(radius)
    h, w = _check_spatial_shape(shape)
    return _band_index_cached(h, w, radius, False)


def half_band_index(shape: tuple[int, int], *, radius: Radius = "chebyshev") -> np.ndarray:
    """Band of every frequency of the half spectrum that ``rfft2`` returns.

    Args:
      shape: spatial shape ``(H, W)`` of the real input.
      radius: ``"chebyshev"`` or ``"euclidean"``.

    Returns:
      Integer array ``[H, Kw]`` with ``Kw = W // 2 + 1``.
    """
    _check_radius(radius)
    h, w = _check_spatial_shape(shape)
    return _band_index_cached(h, w, radius, True)


def half_spectrum_weights(shape: tuple[int, int]) -> np.ndarray:
    """Multiplicity of each ``rfft2`` column in the full spectrum.

    The half spectrum of a real map holds column ``k`` for ``0 <= k <= W // 2``; every
    column except ``k = 0`` (and ``k = W / 2`` for even ``W``) stands for itself and its
    mirror ``-k``, whose value is the complex conjugate. A sum over all ``H * W``
    frequencies of a quantity that is even under ``nu -> -nu`` (such as the real part of
    ``conj(b(nu)) a(nu)``) is therefore the half-spectrum sum weighted by this array.

    Args:
      shape: spatial shape ``(H, W)``.

    Returns:
      Float array ``[Kw]`` of ones and twos, ``Kw = W // 2 + 1``.
    """
    _, w = _check_spatial_shape(shape)
    weights = np.full(w // 2 + 1, 2.0)
    weights[0] = 1.0
    if w % 2 == 0:
        weights[-1] = 1.0
    return weights


def num_bands(shape: tuple[int, int], *, radius: Radius = "chebyshev") -> int:
    """Number of bands ``R`` of an ``H x W`` DFT (bands ``0`` to ``R - 1``).

    Args:
      shape: spatial shape ``(H, W)``.
      radius: ``"chebyshev"`` or ``"euclidean"``.

    Returns:
      ``max(H // 2, W // 2) + 1`` for the Chebyshev radius; for the Euclidean radius,
      ``ceil(sqrt((H // 2)**2 + (W // 2)**2)) + 1``.
    """
    return int(half_band_index(shape, radius=radius).max()) + 1


def band_sizes(shape: tuple[int, int], *, radius: Radius = "chebyshev") -> np.ndarray:
    """Number of DFT frequencies in each band.

    Returns:
      Integer array ``[R]``; it sums to ``H * W``.
    """
    index = band_index(shape, radius=radius)
    return np.bincount(index.ravel(), minlength=num_bands(shape, radius=radius))


def band_limit_of_grid(grid_size: int) -> int:
    """The Chebyshev band limit a ``grid_size``-point grid can hold: ``(grid_size - 1) // 2``.

    The paper's 513, 129, 65 and 33 grids hold band limits 256, 64, 32 and 16.
    """
    if grid_size < 1:
        raise ValueError(f"grid_size must be positive, got {grid_size}.")
    return (int(grid_size) - 1) // 2


def grid_of_band_limit(band_limit: int) -> int:
    """The smallest odd grid that holds a Chebyshev band limit: ``2 * band_limit + 1``."""
    if band_limit < 0:
        raise ValueError(f"band_limit must be non-negative, got {band_limit}.")
    return 2 * int(band_limit) + 1


def centered_spectrum(spectrum: jnp.ndarray) -> jnp.ndarray:
    """Centred view of a spectrum for plotting: ``fftshift`` over the last two axes.

    This is a view for display, not another convention: every function of
    ``spectral_jax`` takes and returns spectra in DFT (unshifted) order. After the
    shift the zero frequency sits at row ``H // 2``, column ``W // 2``, and the signed
    frequencies along each axis increase from left to right
    (:func:`centered_frequencies`).

    Args:
      spectrum: array ``[..., H, W]`` in DFT order.

    Returns:
      Array ``[..., H, W]``, shifted.
    """
    spectrum = _checks.as_array(spectrum, "spectrum")  # a CPU PyTorch tensor, say
    return jnp.fft.fftshift(spectrum, axes=(-2, -1))


def centered_frequencies(n: int) -> np.ndarray:
    """Signed frequencies of an axis of length ``n`` in centred order (ascending)."""
    return np.fft.fftshift(signed_frequencies(n))
