r"""Frequencies by their signed coordinates, and the flat DFT indices of the Jacobians.

A spectrum of an ``H x W`` map is held in DFT (unshifted) order, and the spectral
Jacobians (:mod:`spectral_jax.spectral_gradient`) flatten its frequencies in C order:
the flat index ``j = kh * W + kw`` is the DFT bin ``(kh, kw)``, whose *signed* frequency
(:func:`spectral_jax.signed_frequencies`) is

.. math::

   \nu_h = \begin{cases} k_h & k_h < \lceil H/2 \rceil \\ k_h - H & \text{otherwise}
   \end{cases}, \qquad k_h = \nu_h \bmod H,

and likewise along ``W`` (in 1-D, ``j = k``). :func:`ravel_frequencies` and
:func:`unravel_frequencies` convert between the two, as ``np.ravel_multi_index`` and
``np.unravel_index`` do between grid and flat indices. An axis of length ``n`` holds the
signed frequencies ``-(n // 2) .. (n - 1) // 2``; for an even ``n``, ``+n/2`` is accepted
as well, the same bin as ``-n/2`` (the Nyquist frequency).

The same signed frequency has different flat indices on grids of different sizes, so
rows of an up-sampling layer's Jacobian must be chosen by their signed frequency, not by
their flat index: on the output grid, flat indices past the input's Nyquist frequency
are frequencies the input cannot hold. :func:`fig4_frequencies` gives the paper's rows
``i = 0, M/4, M/2`` ("Spectral Analysis for Semantic Segmentation with Applications on
Feature Truncation and Weak Annotation", arXiv:2012.14123, Fig. 4; ``M`` the number of
input frequencies) as signed frequencies, to be ravelled on any grid.

:func:`flat_frequency_indices` is the one normalisation of every ``nu_i``/``nu_j``
argument: flat indices ``[K]`` or signed frequencies ``[K, d]`` (a list of
``(nu_h, nu_w)`` pairs) in, checked flat indices out.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import _checks
from spectral_jax import bands as bands_lib


def _check_shape(shape) -> tuple[int, ...]:
    shape = tuple(shape)
    if not shape or any(
        isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1 for n in shape
    ):
        raise ValueError(f"shape must be positive spatial sizes (H, W) or (L,), got {shape!r}.")
    return tuple(int(n) for n in shape)


def _as_integer_array(values, name: str):
    values = _checks.as_array(values, name)
    if not isinstance(values, jax.Array | np.ndarray):
        try:
            values = np.asarray(values)
        except ValueError as error:  # ragged lists
            raise ValueError(f"{name} must be a rectangular array, got {values!r}.") from error
    if not jnp.issubdtype(values.dtype, jnp.integer):
        raise TypeError(
            f"{name} must hold integer frequencies (flat indices or signed (nu_h, nu_w) "
            f"pairs), got dtype {values.dtype}."
        )
    return values


def ravel_frequencies(frequencies: chex.Array, shape: tuple[int, ...]) -> np.ndarray:
    """Flat DFT indices of signed frequencies: ``(nu_h mod H) * W + (nu_w mod W)``.

    Args:
      frequencies: ``[K, d]`` concrete integer signed frequencies, ``d = len(shape)`` (a
        list of ``(nu_h, nu_w)`` pairs), each within ``[-(n // 2), n // 2]`` of its axis.
      shape: spatial shape ``(H, W)`` (or ``(L,)``) of the grid.

    Returns:
      ``[K]`` int64 flat indices in ``[0, H W)``.

    Raises:
      TypeError: non-integer ``frequencies``.
      ValueError: a wrong shape, or a frequency the grid does not hold (naming it).

    Example:
      >>> ravel_frequencies([(0, 0), (1, -2), (-4, 4)], (8, 8)).tolist()
      [0, 14, 36]
    """
    shape = _check_shape(shape)
    frequencies = np.asarray(_as_integer_array(frequencies, "frequencies"))
    return _ravel(frequencies, shape, "frequencies")


def _ravel(frequencies, shape: tuple[int, ...], name: str):
    """Flat indices of ``frequencies [K, d]``; concrete ones are range-checked."""
    if jnp.ndim(frequencies) != 2 or jnp.shape(frequencies)[-1] != len(shape):
        raise ValueError(
            f"{name} must be [K, {len(shape)}] signed frequencies for a grid of shape "
            f"{shape}, got shape {jnp.shape(frequencies)}."
        )
    if not _checks.is_traced(frequencies):
        frequencies = np.asarray(frequencies, np.int64)
        limits = np.array([n // 2 for n in shape])
        bad = np.any(np.abs(frequencies) > limits, axis=-1)
        if bad.any():
            first = tuple(int(v) for v in frequencies[bad][0])
            ranges = ", ".join(f"[{-(n // 2)}, {n // 2}]" for n in shape)
            raise ValueError(
                f"{name} holds {first}, which a grid of shape {shape} does not hold: signed "
                f"frequencies lie in {ranges}."
            )
    xp = np if isinstance(frequencies, np.ndarray) else jnp
    strides = np.array([math.prod(shape[axis + 1 :]) for axis in range(len(shape))])
    return xp.sum((frequencies % np.array(shape)) * strides, axis=-1)


def unravel_frequencies(indices: chex.Array, shape: tuple[int, ...]) -> np.ndarray:
    """Signed frequencies of flat DFT indices: the inverse of :func:`ravel_frequencies`.

    Args:
      indices: ``[K]`` concrete integer flat indices in ``[0, H W)``.
      shape: spatial shape ``(H, W)`` (or ``(L,)``).

    Returns:
      ``[K, d]`` int64 signed frequencies, ``d = len(shape)``; an even axis's Nyquist bin
      reads ``-n/2``.

    Example:
      >>> unravel_frequencies([0, 14, 36], (8, 8)).tolist()
      [[0, 0], [1, -2], [-4, -4]]
    """
    shape = _check_shape(shape)
    indices = np.asarray(_as_integer_array(indices, "indices"), np.int64)
    size = math.prod(shape)
    if indices.ndim != 1 or ((indices < 0) | (indices >= size)).any():
        raise ValueError(f"indices must be [K] flat indices in [0, {size}), got {indices!r}.")
    grid = np.unravel_index(indices, shape)
    signed = [bands_lib.signed_frequencies(n)[k] for n, k in zip(shape, grid, strict=True)]
    return np.stack(signed, axis=-1).astype(np.int64)


def fig4_frequencies(in_shape: tuple[int, ...]) -> np.ndarray:
    """Signed frequencies of the paper's Fig. 4 rows ``i = 0, M/4, M/2``.

    ``M`` is the number of input frequencies (``H W``; "M stands for the size of input
    features"), and ``0, M // 4, M // 2`` are flat indices of the input's DFT layout. On
    an odd ``n x n`` grid they are ``(0, 0)``, about ``(n/4, n/4)`` and
    ``((n-1)/2, (n-1)/2)``. Ravel them on the output grid
    (:func:`ravel_frequencies`) to pick the rows of a layer that changes the grid.

    Args:
      in_shape: the input's spatial shape ``(H, W)`` (or ``(L,)``).

    Returns:
      ``[3, d]`` int64 signed frequencies.

    Example:
      >>> fig4_frequencies((9, 9)).tolist()
      [[0, 0], [2, 2], [4, 4]]
      >>> ravel_frequencies(fig4_frequencies((16, 16)), (32, 32)).tolist()  # x2 output
      [0, 128, 768]
    """
    size = math.prod(_check_shape(in_shape))
    return unravel_frequencies(np.array([0, size // 4, size // 2]), in_shape)


def flat_frequency_indices(
    nu: chex.Array, shape: tuple[int, ...], *, name: str = "nu", spectrum: str = "output"
):
    """Checked flat indices from flat indices ``[K]`` or signed frequencies ``[K, d]``.

    The normalisation of the ``nu_i``/``nu_j`` arguments of the spectral Jacobians: a
    ``[K]`` integer array holds flat indices (``j = kh * W + kw``), a ``[K, d]`` one (a
    list of ``(nu_h, nu_w)`` pairs) signed frequencies, converted by
    :func:`ravel_frequencies`. Arrays of any kind (a PyTorch tensor too) are read; traced
    values are converted but not range-checked (a traced flat index wraps, the DFT being
    periodic).

    Args:
      nu: ``[K]`` flat indices or ``[K, d]`` signed frequencies, ``d = len(shape)``.
      shape: the spatial shape of the spectrum the frequencies index.
      name: the argument's name, for the errors.
      spectrum: which spectrum ``shape`` is (``"output"``, ``"input"``, ``"CE"``), for
        the errors.

    Returns:
      ``[K]`` integer flat indices in ``[0, prod(shape))`` (a NumPy array for concrete
      ``nu``).

    Raises:
      TypeError: naming ``name`` for non-integer values.
      ValueError: naming ``name`` for another rank, a flat index outside
        ``[0, prod(shape))`` or a signed frequency the grid does not hold.

    Example:
      >>> flat_frequency_indices([(1, 2)], (9, 9), name="nu_i").tolist()
      [11]
      >>> flat_frequency_indices(np.array([11]), (9, 9), name="nu_i").tolist()
      [11]
    """
    shape = _check_shape(shape)
    nu = _as_integer_array(nu, name)
    size = math.prod(shape)
    if jnp.ndim(nu) == 2:
        return _ravel(nu, shape, name)
    if jnp.ndim(nu) != 1:
        raise ValueError(
            f"{name} must be [K] flat frequency indices or [K, {len(shape)}] signed "
            f"frequencies, got shape {jnp.shape(nu)}."
        )
    if not _checks.is_traced(nu):
        values = np.asarray(nu)
        bad = (values < 0) | (values >= size)
        if bad.any():
            raise ValueError(
                f"{name} must lie in [0, {size}) (the {size} frequencies of the {spectrum} "
                f"spectrum, flattened), got {int(values[bad][0])}; signed frequencies go in "
                f"as [K, {len(shape)}] pairs."
            )
    return nu
