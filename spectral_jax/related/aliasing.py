"""Aliasing of feature maps before down-sampling: the aliasing score and the de-aliasing filter.

After *When Semantic Segmentation Meets Frequency Aliasing* (Chen, Gu, Fu, ICLR 2024;
code at github.com/Linwei-Chen/Seg-Aliasing). Down-sampling a map by a stride ``s``
folds every frequency above the Nyquist frequency ``1 / (2 s)`` cycles per sample onto a
lower one. The paper replaces the plain Nyquist frequency by one computed from an
*equivalent sampling rate*; the authors' code and ablation (README: cutoffs
``1/4 x {1.0, 1.1, ..., 1.6}`` for stride 2, best at ``1/4 x sqrt(2)``) use

.. math::

   f_{cut}(s) = \\frac{\\kappa}{2 s}, \\qquad \\kappa = 1.4,

i.e. ``0.25 x 1.4 = 0.35`` cycles per sample before a stride-2 layer
(:data:`EQUIVALENT_SAMPLING_FACTOR`, :func:`nyquist_cutoff`). Our copy of the paper is its
repository page, which gives neither the derivation of ``kappa`` nor the aliasing score's
formula, and the released code only calls (commented out) a score function it does not
define; the definitions below are this module's and are stated exactly where they are
computed.

* :func:`aliasing_score`: the share of a map's spectral energy at or above the cutoff.
* :func:`de_alias`: the de-aliasing filter (DAF), an ideal low-pass keeping the
  frequencies below the cutoff (the authors' ``FLC_Pooling`` with ``freq_thres``).

The scores of a model's down-sampling inputs, captured with a Flax method interceptor,
are in :mod:`spectral_jax.models.anti_aliasing`
(:func:`~spectral_jax.models.anti_aliasing.downsampling_aliasing_scores`).

Frequencies and the square low-frequency region are those of
:mod:`spectral_jax.related.frequency_masking`.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax.related import frequency_masking

# kappa: the authors' equivalent-sampling-rate correction of the Nyquist frequency
# (`freq_thres = 0.25 * 1.4` in their FreqMix and de-aliasing filter configs).
EQUIVALENT_SAMPLING_FACTOR: float = 1.4


def nyquist_cutoff(
    stride: int, *, equivalent_sampling_factor: float = EQUIVALENT_SAMPLING_FACTOR
) -> float:
    """The aliasing cutoff before a down-sampling by ``stride``: ``kappa / (2 * stride)``.

    Args:
      stride: the down-sampling factor (a positive int; 2 for a stride-2 convolution or
        max pool).
      equivalent_sampling_factor: ``kappa``; 1.4 as the authors use, 1.0 for the plain
        Nyquist frequency.

    Returns:
      Cycles per sample, clipped to 0.5 (a stride of 1 aliases nothing).

    Raises:
      ValueError: for a non-positive stride or factor.
    """
    if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}.")
    if not equivalent_sampling_factor > 0:
        raise ValueError(
            f"equivalent_sampling_factor must be positive, got {equivalent_sampling_factor!r}."
        )
    return min(0.5, float(equivalent_sampling_factor) / (2 * int(stride)))


def _resolve_cutoff(stride: int, cutoff: float | None) -> float:
    return nyquist_cutoff(stride) if cutoff is None else cutoff


def aliasing_score(x: chex.Array, *, stride: int = 2, cutoff: float | None = None) -> jax.Array:
    """Share of each image's feature energy that a down-sampling by ``stride`` would alias.

    With :math:`X_{b,c}` the 2-D DFT of channel ``c`` of image ``b`` over the spatial axes
    only (the centred spectrum shifts only those axes), and :math:`\\mathcal{L}` the
    square low-frequency region :math:`|\\nu_h| < f_{cut} H,\\ |\\nu_w| < f_{cut} W` of
    :func:`spectral_jax.related.frequency_masking.low_frequency_mask`,

    .. math::

       \\mathrm{AS}[b] = \\frac{\\sum_c \\sum_{\\nu \\notin \\mathcal{L}} |X_{b,c}(\\nu)|^2}
                             {\\sum_c \\sum_{\\nu} |X_{b,c}(\\nu)|^2},

    the squared-magnitude (power) energy pooled over channels before the ratio, so that
    strong channels weigh more (:func:`spectral_jax.related.frequency_masking.band_energies` gives
    the per-channel energies for other reductions). The zero frequency counts in the
    total, so a constant map scores 0; an all-zero map scores 0 by definition.

    Args:
      x: real maps ``[B, H, W, C]``, the input of the down-sampling layer.
      stride: static down-sampling factor; sets the default cutoff.
      cutoff: static cycles per sample in ``(0, 0.5]``; default
        :func:`nyquist_cutoff` ``(stride)`` = ``1.4 / (2 stride)``.

    Returns:
      ``[B]`` scores in ``[0, 1]`` (float32, or float64 for float64 input).

    Raises:
      ValueError: for a bad shape, stride or cutoff.

    Example:
      >>> i, j = jnp.meshgrid(jnp.arange(8), jnp.arange(8), indexing="ij")
      >>> checkerboard = ((-1.0) ** (i + j))[None, :, :, None]  # frequency (4, 4)
      >>> [round(s, 6) for s in aliasing_score(checkerboard, stride=2).tolist()]
      [1.0]
    """
    cutoff = _resolve_cutoff(stride, cutoff)
    low, high = frequency_masking.band_energies(x, cutoff=cutoff)  # [B, C] each
    high = jnp.sum(high, axis=-1)
    total = jnp.sum(low, axis=-1) + high
    return jnp.where(total > 0, high / jnp.where(total > 0, total, 1), 0)


def de_alias(x: chex.Array, *, stride: int = 2, cutoff: float | None = None) -> jax.Array:
    """The de-aliasing filter (DAF): keeps the frequencies below the cutoff, removes the rest.

    .. math::

       \\mathrm{DAF}(x) = \\mathcal{F}^{-1}\\left[\\mathbb{1}_{\\mathcal{L}}\\,
       \\mathcal{F} x\\right],

    the low part of :func:`spectral_jax.related.frequency_masking.split_frequencies`: an ideal
    (brick-wall) square low-pass on the spatial axes, a real orthogonal projection, so
    ``de_alias(de_alias(x)) == de_alias(x)`` and ``aliasing_score(de_alias(x)) == 0`` at
    the same cutoff. It is placed before a down-sampling and keeps the map's size.
    The authors' filter (``FLC_Pooling``) uses an off-centre window instead of this
    symmetric mask; for even sizes the two differ on one ring of bins, e.g. at
    ``64 x 64``: ours keeps the 176 bins of ``max(|nu_h|, |nu_w|) = 22`` fully, theirs
    halves 174 of them and drops the corners ``(22, -22)`` and ``(-22, 22)`` (module
    docstring of :mod:`spectral_jax.related.frequency_masking`).

    Args:
      x: real maps ``[B, H, W, C]``.
      stride: static down-sampling factor that follows; sets the default cutoff.
      cutoff: static cycles per sample; default :func:`nyquist_cutoff` ``(stride)``.

    Returns:
      ``[B, H, W, C]`` in the dtype of ``x``.
    """
    cutoff = _resolve_cutoff(stride, cutoff)
    low, _ = frequency_masking.split_frequencies(x, cutoff=cutoff)
    return low
