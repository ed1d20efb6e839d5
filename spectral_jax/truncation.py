"""Feature truncation: resampling decoder features to a static grid (Sec. 3.2).

The paper truncates the decoder features of DeepLab v3+ from ``129 x 129`` to ``65 x 65``
or ``33 x 33``. A grid of ``n`` points holds the Chebyshev band limit
``nu_max = (n - 1) // 2`` (:func:`spectral_jax.band_limit_of_grid`), so a feature size
of ``2 * nu_max + 1`` keeps exactly the frequencies ``|nu_h|, |nu_w| <= nu_max``.

Three resampling methods are offered, all on channels-last maps ``[B, H, W, C]``:

* ``"bilinear"``: ``jax.image.resize(method="linear", antialias=False)``, i.e. plain
  bilinear interpolation with half-pixel centres (PyTorch's
  ``F.interpolate(mode="bilinear", align_corners=False)``), no low-pass when shrinking.
* ``"area"``: average pooling with a ``(H / h) x (W / w)`` window when both ratios are
  integers; otherwise ``jax.image.resize(method="linear", antialias=True)``, a triangle
  filter widened by the scale factor when shrinking (the anti-aliased "area-like"
  resize of PIL / TensorFlow) and plain bilinear when enlarging. ``129 -> 65`` and
  ``129 -> 33`` are not integer ratios, so they take the second branch.
* ``"spectral"``: the ideal low-pass of :func:`spectral_resize`.

All sizes are static Python integers.
"""

from __future__ import annotations

from typing import Literal

import chex
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import _checks

Resample = Literal["bilinear", "area", "spectral"]
RESAMPLE_METHODS: tuple[str, ...] = ("bilinear", "area", "spectral")


def _check_size(size) -> tuple[int, int]:
    if isinstance(size, int | np.integer):
        size = (int(size), int(size))
    if len(size) != 2 or any(int(n) < 1 for n in size):
        raise ValueError(f"size must be a positive int or a pair (h, w), got {size!r}.")
    return int(size[0]), int(size[1])


def _spectral_resize_axis(x: jax.Array, axis: int, n_out: int) -> jax.Array:
    """Ideal low-pass and trigonometric resampling of one axis of a complex array."""
    n_in = x.shape[axis]
    band_limit = (min(n_in, n_out) - 1) // 2
    nu = np.arange(-band_limit, band_limit + 1)  # [2 nu_max + 1] signed frequencies
    # Half-pixel centres, as jax.image.resize: output sample j sits at input coordinate
    # (j + 1/2) n_in / n_out - 1/2, a shift of s = 1/(2 n_out) - 1/(2 n_in) periods.
    shift = 0.5 / n_out - 0.5 / n_in
    phase = np.exp(2j * np.pi * nu * shift) * (n_out / n_in)  # amplitude keeps constants
    spectrum = jnp.fft.fft(x, axis=axis)
    kept = jnp.take(spectrum, nu % n_in, axis=axis)  # [..., 2 nu_max + 1, ...]
    shape = [1] * x.ndim
    shape[axis] = nu.size
    kept = kept * jnp.asarray(phase.reshape(shape), kept.dtype)
    out_shape = list(x.shape)
    out_shape[axis] = n_out
    index: list[slice | np.ndarray] = [slice(None)] * x.ndim
    index[axis] = nu % n_out
    out = jnp.zeros(out_shape, kept.dtype).at[tuple(index)].set(kept)
    return jnp.fft.ifft(out, axis=axis)


def spectral_resize(x: chex.Array, size: int | tuple[int, int]) -> jax.Array:
    """Resamples maps by an ideal low-pass: crop the spectrum, inverse FFT on the new grid.

    Along each spatial axis of length ``n`` resampled to ``m`` points the kept band is
    ``|nu| <= nu_max = (min(n, m) - 1) // 2`` (for shrinking, ``nu_max`` is
    :func:`spectral_jax.band_limit_of_grid` of the output size, so ``m = 2 nu_max + 1``
    for the paper's odd grids). Writing ``X(nu)`` for the DFT of the input, the output is

    .. math::

       y[j] = \\frac{1}{n} \\sum_{|\\nu| \\le \\nu_{max}} X(\\nu)
              \\exp\\left(2 \\pi i \\nu \\frac{t_j}{n}\\right),
       \\qquad t_j = (j + \\tfrac12) \\frac{n}{m} - \\tfrac12,

    the trigonometric interpolant of the low-passed input evaluated at the half-pixel
    centres ``t_j`` that ``jax.image.resize`` uses. Hence a constant map stays constant,
    and a map band-limited to ``nu_max`` (a trigonometric polynomial ``f`` of period
    ``n`` with ``x[i] = f(i)``) is reproduced exactly: ``y[j] = f(t_j)``. The crop is
    separable, i.e. the square (Chebyshev) band of :mod:`spectral_jax.bands`. When an
    even-length axis is enlarged, its Nyquist term ``nu = n / 2`` is dropped (it has no
    unique real interpolant).

    Args:
      x: real maps ``[B, H, W, C]``.
      size: output grid ``h`` (square) or ``(h, w)``.

    Returns:
      ``[B, h, w, C]`` in the dtype of ``x``: a layer of a bfloat16 model stays
      bfloat16. Computed in complex64 (float16 and bfloat16 are upcast), or complex128
      for float64 input with ``jax_enable_x64``.

    Raises:
      TypeError: non-floating ``x``.
      ValueError: a bad ``size``; float64 ``x`` on a backend without float64 (TPU).

    Example:
      >>> n, m = 9, 5
      >>> f = lambda t: jnp.cos(2 * jnp.pi * t / n)  # band-limited: nu = 1 <= (m - 1) // 2
      >>> x = jnp.broadcast_to(f(jnp.arange(n))[None, :, None, None], (1, n, n, 1))
      >>> y = spectral_resize(x, m)  # [1, 5, 5, 1]
      >>> t = (jnp.arange(m) + 0.5) * n / m - 0.5  # half-pixel centres of the output
      >>> bool(jnp.allclose(y[0, :, :, 0], f(t)[:, None], atol=1e-5))
      True
    """
    x = _checks.as_array(x, "x")  # a CPU PyTorch tensor, say
    chex.assert_rank(x, 4)
    h, w = _check_size(size)
    dtype = jnp.result_type(x)
    real_dtype = _checks.check_floating(x, "x")
    complex_dtype = jnp.complex128 if real_dtype == jnp.float64 else jnp.complex64
    y = x.astype(complex_dtype)
    if h != x.shape[1]:
        y = _spectral_resize_axis(y, 1, h)
    if w != x.shape[2]:
        y = _spectral_resize_axis(y, 2, w)
    return jnp.real(y).astype(dtype)


def resize_features(
    x: chex.Array, size: int | tuple[int, int], *, method: Resample = "bilinear"
) -> jax.Array:
    """Resamples maps ``[B, H, W, C]`` to ``[B, h, w, C]`` by one of the module's methods.

    Args:
      x: maps ``[B, H, W, C]``.
      size: output grid ``h`` (square) or ``(h, w)``; static.
      method: ``"bilinear"``, ``"area"`` or ``"spectral"`` (see the module docstring).

    Returns:
      ``[B, h, w, C]``; ``x`` itself when the grid is unchanged.

    Raises:
      ValueError: for an unknown ``method`` or a bad ``size``.
    """
    if method not in RESAMPLE_METHODS:
        raise ValueError(f"method must be one of {RESAMPLE_METHODS}, got {method!r}.")
    x = _checks.as_array(x, "x")
    chex.assert_rank(x, 4)
    h, w = _check_size(size)
    batch, height, width, channels = x.shape
    if (h, w) == (height, width):
        return x
    if method == "spectral":
        return spectral_resize(x, (h, w))
    if method == "area" and height % h == 0 and width % w == 0:
        window = (height // h, width // w)
        pooled = jax.lax.reduce_window(
            x, jnp.zeros((), x.dtype), jax.lax.add, (1, *window, 1), (1, *window, 1), "VALID"
        )
        return pooled / (window[0] * window[1])
    antialias = method == "area"
    return jax.image.resize(x, (batch, h, w, channels), method="linear", antialias=antialias)
