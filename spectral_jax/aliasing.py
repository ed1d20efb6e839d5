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
* :func:`downsampling_aliasing_scores`: the score of the input of every down-sampling
  layer of a Flax model, captured with :func:`flax.linen.intercept_methods`.

Frequencies and the square low-frequency region are those of
:mod:`spectral_jax.frequency_masking`.
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import frequency_masking

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
    :func:`spectral_jax.frequency_masking.low_frequency_mask`,

    .. math::

       \\mathrm{AS}[b] = \\frac{\\sum_c \\sum_{\\nu \\notin \\mathcal{L}} |X_{b,c}(\\nu)|^2}
                             {\\sum_c \\sum_{\\nu} |X_{b,c}(\\nu)|^2},

    the squared-magnitude (power) energy pooled over channels before the ratio, so that
    strong channels weigh more (:func:`spectral_jax.frequency_masking.band_energies` gives
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

    the low part of :func:`spectral_jax.frequency_masking.split_frequencies`: an ideal
    (brick-wall) square low-pass on the spatial axes, a real orthogonal projection, so
    ``de_alias(de_alias(x)) == de_alias(x)`` and ``aliasing_score(de_alias(x)) == 0`` at
    the same cutoff. It is placed before a down-sampling and keeps the map's size.

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


def _strides_of(module: nn.Module) -> int | None:
    """The single stride of a strided ``nn.Conv`` (``None`` for stride 1)."""
    strides = module.strides
    if strides is None:
        return None
    pair = (strides, strides) if isinstance(strides, int) else tuple(strides)
    if all(s == 1 for s in pair):
        return None
    if len(set(pair)) != 1:
        raise ValueError(
            f"layer {'/'.join(module.path)} has unequal strides {pair}; the aliasing score "
            "needs one stride."
        )
    return int(pair[0])


def _is_resnet_stem_norm(module: nn.Module) -> bool:
    from spectral_jax.models.resnet import ResNet  # The models import this package.

    return (
        isinstance(module, nn.BatchNorm)
        and module.name == "bn1"
        and isinstance(module.parent, ResNet)
    )


def _is_strided_block(module: nn.Module) -> bool:
    from spectral_jax.models.resnet import Bottleneck

    return isinstance(module, Bottleneck) and module.strides > 1


def downsampling_inputs_interceptor(record: Callable[[str, jax.Array, int], None]):
    """A Flax method interceptor that reports the input of every down-sampling layer.

    ``record(name, x, stride)`` is called with ``x [B, H, W, C]`` for:

    * every ``nn.Conv`` with a stride above 1: ``name`` is its path (``"encoder/conv1"``,
      ``"encoder/layer2_block0/conv2"``, ``"encoder/layer2_block0/downsample_conv"``);
    * every :class:`spectral_jax.models.Bottleneck` with a stride above 1, whose input
      feeds both its strided 3x3 convolution (through ``conv1``) and its strided
      shortcut: ``name`` is the block's path (``"encoder/layer2_block0"``). This is where
      the authors measure and filter;
    * the stem max pool of :class:`spectral_jax.models.ResNet` (3x3, stride 2), which is a
      function, not a module: its input is ``relu(bn1(...))``, taken from the stem
      BatchNorm's output; ``name`` is ``".../max_pool"``.

    Other pooling written as a function (``nn.max_pool``, ``nn.avg_pool``) is invisible to
    method interceptors and is not reported.

    Args:
      record: callback; it runs at trace time, with traced arrays under ``jit``.

    Returns:
      The interceptor, for :func:`flax.linen.intercept_methods`.
    """

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        path = "/".join(module.path)
        if isinstance(module, nn.Conv):
            stride = _strides_of(module)
            if stride is not None:
                record(path, args[0], stride)
        elif _is_strided_block(module):
            record(path, args[0], int(module.strides))
        out = next_fun(*args, **kwargs)
        if _is_resnet_stem_norm(module):
            parent = "/".join(module.parent.path)
            record(f"{parent}/max_pool" if parent else "max_pool", jax.nn.relu(out), 2)
        return out

    return interceptor


def downsampling_aliasing_scores(
    model: nn.Module,
    variables,
    images: chex.Array,
    *,
    equivalent_sampling_factor: float = EQUIVALENT_SAMPLING_FACTOR,
    method: str | Callable | None = None,
    **apply_kwargs,
) -> dict[str, jax.Array]:
    """Aliasing score of the input of every down-sampling layer of a model, in one pass.

    Runs ``model.apply(variables, images, method=method, **apply_kwargs)`` under
    :func:`downsampling_inputs_interceptor` and scores each captured input with
    :func:`aliasing_score` at :func:`nyquist_cutoff` ``(stride,
    equivalent_sampling_factor)`` of that layer's stride. Pure and jittable (close over
    ``model`` and the static settings). Applied inside another interceptor context (e.g.
    :func:`spectral_jax.models.frequency_modules.insert_de_aliasing_filters`), it scores
    the inputs as that interceptor leaves them.

    Args:
      model: a Flax module, e.g. :class:`spectral_jax.models.DeepLabV3Plus` or
        :class:`spectral_jax.models.ResNet`.
      variables: its variables.
      images: ``[B, H, W, 3]``.
      equivalent_sampling_factor: ``kappa`` of :func:`nyquist_cutoff`.
      method: the model method to run (default ``__call__``).
      **apply_kwargs: passed on to ``model.apply`` (e.g. ``train=False``).

    Returns:
      ``{layer path: [B] scores}``, in program order when run eagerly (``jax.jit``
      returns dicts sorted by key); a module that runs several times (shared) is
      reported once per call, with ``#1``, ``#2``, ... appended to the later calls.

    Example:
      >>> model = spectral_jax.models.create_resnet("resnet_tiny", output_stride=32)
      >>> images = jnp.zeros((1, 32, 32, 3))
      >>> variables = model.init(jax.random.key(0), images)
      >>> scores = downsampling_aliasing_scores(model, variables, images)
      >>> list(scores)[:4]
      ['conv1', 'max_pool', 'layer2_block0', 'layer2_block0/conv2']
    """
    chex.assert_rank(images, 4)
    scores: dict[str, jax.Array] = {}

    def record(name: str, x: jax.Array, stride: int) -> None:
        cutoff = nyquist_cutoff(stride, equivalent_sampling_factor=equivalent_sampling_factor)
        key, copy = name, 1
        while key in scores:
            key, copy = f"{name}#{copy}", copy + 1
        scores[key] = aliasing_score(x, cutoff=cutoff)

    with nn.intercept_methods(downsampling_inputs_interceptor(record)):
        model.apply(variables, images, method=method, **apply_kwargs)
    return scores
