"""Frequency modules against aliasing, in Flax linen: the de-aliasing filter and FreqMix.

After *When Semantic Segmentation Meets Frequency Aliasing* (Chen, Gu, Fu, ICLR 2024) and
its code (``mmseg_custom/models/backbones/resnet.py`` of
github.com/Linwei-Chen/Seg-Aliasing). Both modules map ``[B, H, W, C]`` to
``[B, H, W, C]`` and split frequencies with the square mask of
:mod:`spectral_jax.related.frequency_masking` at :func:`spectral_jax.related.aliasing.nyquist_cutoff`
(``0.35`` cycles per sample before a stride-2 layer).

* :class:`DeAliasingFilter`: the parameter-free DAF (:func:`spectral_jax.related.aliasing.de_alias`).
  The authors place it on the input of the strided stages 2-4 of ResNet (the input of the
  first, strided bottleneck, which feeds both its strided 3x3 convolution and its strided
  shortcut), not before the stem max pool. :func:`insert_de_aliasing_filters` does the same
  to our :class:`spectral_jax.models.ResNet` (and any model that contains it) at apply time,
  with a Flax method interceptor, without touching the model code.
* :class:`FreqMix`: frequency mixing, with learned spatial gates and channel attention
  on the low and the high part. Having parameters, it needs a place in the model's
  parameter tree, so it cannot be inserted by an interceptor: a model takes it as a
  module factory, ``factory(stride=s, dtype=d, name="downsample_filter")`` applied to
  the input of each strided block (both modules here accept that call), e.g. through a
  ``downsample_filter`` attribute of ``ResNet`` and ``Bottleneck``. The authors put
  FreqMix elsewhere: after the 3x3 convolution of every bottleneck of stages 2-4.
  :func:`freqmix_params_from_torch` converts one of their trained modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, Literal

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax.models.resnet import Bottleneck, ResNet
from spectral_jax.related import aliasing, frequency_masking

Placement = Literal["block_input", "strided_conv_input"]
PLACEMENTS: tuple[str, ...] = ("block_input", "strided_conv_input")
Descriptor = Literal["spectrum_mean", "spectrum_magnitude"]
DESCRIPTORS: tuple[str, ...] = ("spectrum_mean", "spectrum_magnitude")


class DeAliasingFilter(nn.Module):
    """The de-aliasing filter (DAF): an ideal square low-pass before a down-sampling.

    Attributes:
      stride: the down-sampling factor that follows (sets the default cutoff).
      cutoff: cycles per sample in ``(0, 0.5]``; ``None`` for
        :func:`spectral_jax.related.aliasing.nyquist_cutoff` ``(stride)`` (0.35 for stride 2).
      dtype: dtype of the output (a model passes its computation dtype); ``None`` keeps
        the input's. The FFT itself runs in float32 (float64 for float64 input with
        ``jax_enable_x64``): ``jnp.fft`` has no bfloat16 transform.
    """

    stride: int = 2
    cutoff: float | None = None
    dtype: jnp.dtype | None = None

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, H, W, C] -> [B, H, W, C]``, the frequencies below the cutoff only."""
        low = aliasing.de_alias(x, stride=self.stride, cutoff=self.cutoff)
        return low if self.dtype is None else low.astype(self.dtype)


class _ChannelAttention(nn.Module):
    """Squeeze-and-excitation gates ``[B, C] -> [B, C]``: dense, ReLU, dense, sigmoid.

    The authors' 1x1 convolutions on a pooled ``[B, 1, 1, C]`` descriptor, as dense layers.
    """

    reduction: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, descriptor: jax.Array) -> jax.Array:
        channels = descriptor.shape[-1]
        hidden = max(1, channels // self.reduction)
        y = nn.relu(nn.Dense(hidden, dtype=self.dtype, name="squeeze")(descriptor))
        return nn.sigmoid(nn.Dense(channels, dtype=self.dtype, name="excite")(y))


class FreqMix(nn.Module):
    """Frequency mixing: gated, channel-attended low and high parts, summed.

    With ``low, high`` the parts of ``x`` at the cutoff
    (:func:`spectral_jax.related.frequency_masking.split_frequencies`, ``high = x - low``) and
    ``X_low, X_high`` their spectra (spatial 2-D DFT),

    .. math::

       g = \\sigma(\\mathrm{conv}_{3 \\times 3}(x)) \\in (0, 1)^{B \\times H \\times W \\times 2},
       \\qquad
       y = g_0 \\odot a_{low} \\odot low + g_1 \\odot a_{high} \\odot high,

    where ``g_0, g_1`` are per-pixel spatial gates shared by all channels and
    ``a_low, a_high [B, 1, 1, C]`` per-channel attentions, one squeeze-and-excitation
    network per part. As in the authors' code (``_FrequencyMix`` with
    ``lp_type="freq_channel_att"``), the attention of a part is computed from its
    spectrum: with ``d = mean over frequencies of X_part`` (``"spectrum_mean"``),
    ``a = sqrt(SE(Re d)**2 + SE(Im d)**2 + 1e-8)``, so ``a`` lies in ``(0, sqrt 2)``.
    Note that the mean of a spectrum is the map's value at pixel ``(0, 0)``, and with our
    symmetric mask ``Im d = 0``; ``"spectrum_magnitude"`` uses ``SE(mean |X_part|)``, the
    descriptor of the authors' commented-out variant, a proper energy descriptor. The
    authors use no residual (``channel_res=False``), one gate group
    (``spatial_group=1``), a reduction of 16 (here at least one hidden unit) and place
    the module after the 3x3 convolution of every bottleneck of stages 2-4.

    Inferred or changed: the mask is our symmetric one (module docstring of
    :mod:`spectral_jax.related.frequency_masking`); the authors' ``fftshift`` without ``dim``
    also rolls the batch and channel axes of the spectrum that feeds the channel
    attention (by ``B // 2`` and ``C // 2``), so an image's attention is computed from
    image ``(b - B // 2) mod B`` of the batch and the attention's first layer reads its
    input channels rolled; here each image uses its own spectrum, channels in order.
    Their trained weights therefore need the first layers' input channels rolled back
    (:func:`freqmix_params_from_torch`); the batch roll has no weight equivalent (their
    outputs agree with ours for one image per batch). Initialisation is Flax's default
    (LeCun normal kernels, zero biases), not PyTorch's.

    Attributes:
      stride: the down-sampling the cutoff is set for.
      cutoff: cycles per sample; ``None`` for :func:`spectral_jax.related.aliasing.nyquist_cutoff`.
      reduction: squeeze ratio of the channel attention (16).
      descriptor: ``"spectrum_mean"`` (authors' final code) or ``"spectrum_magnitude"``.
      dtype: computation dtype of the convolution and the attention; the FFTs run in
        float32 (float64 for float64 input) and the output has the dtype of the input.
    """

    stride: int = 2
    cutoff: float | None = None
    reduction: int = 16
    descriptor: Descriptor = "spectrum_mean"
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, H, W, C] -> [B, H, W, C]``."""
        if jnp.ndim(x) != 4:
            raise ValueError(f"x must have shape [B, H, W, C], got shape {jnp.shape(x)}.")
        if self.descriptor not in DESCRIPTORS:
            raise ValueError(f"descriptor must be one of {DESCRIPTORS}, got {self.descriptor!r}.")
        if self.reduction < 1:
            raise ValueError(f"reduction must be a positive int, got {self.reduction!r}.")
        cutoff = aliasing.nyquist_cutoff(self.stride) if self.cutoff is None else self.cutoff
        gates = nn.sigmoid(
            nn.Conv(2, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name="gate_conv")(x)
        )  # [B, H, W, 2]
        low, high = frequency_masking.split_frequencies(x, cutoff=cutoff)
        h, w = x.shape[1:3]
        real_dtype = jnp.float64 if jnp.result_type(x) == jnp.float64 else jnp.float32
        spectrum = jnp.fft.fft2(x.astype(real_dtype), axes=(1, 2))  # [B, H, W, C]
        mask = jnp.asarray(frequency_masking.low_frequency_mask((h, w), cutoff=cutoff))
        mask = mask[None, :, :, None]  # [1, H, W, 1]
        attentions = []
        for part, part_mask in (("low", mask), ("high", ~mask)):
            part_spectrum = jnp.where(part_mask, spectrum, 0)
            attention = _ChannelAttention(self.reduction, self.dtype, name=f"{part}_attention")
            if self.descriptor == "spectrum_mean":
                d = jnp.mean(part_spectrum, axis=(1, 2))  # [B, C] complex
                a = jnp.sqrt(attention(jnp.real(d)) ** 2 + attention(jnp.imag(d)) ** 2 + 1e-8)
            else:
                a = attention(jnp.mean(jnp.abs(part_spectrum), axis=(1, 2)))
            attentions.append(a[:, None, None, :].astype(x.dtype))  # [B, 1, 1, C]
        return (
            gates[..., 0:1].astype(x.dtype) * attentions[0] * low
            + gates[..., 1:2].astype(x.dtype) * attentions[1] * high
        )


def freqmix_params_from_torch(
    state_dict: Mapping[str, np.ndarray], *, prefix: str = ""
) -> dict[str, dict]:
    """:class:`FreqMix` parameters from the authors' ``_FrequencyMix`` state dict.

    For their module with ``lp_type="freq_channel_att"``, ``spatial="conv"``,
    ``spatial_group=1`` (their configuration), ``C`` channels and ``compress_ratio=r``:

    * ``freq_weight_conv.weight [2, C, 3, 3]`` -> ``gate_conv/kernel [3, 3, C, 2]``,
      ``freq_weight_conv.bias [2]`` -> ``gate_conv/bias``;
    * ``channel_att_{p}.1.weight [C/r, C, 1, 1]`` -> ``{p}_attention/squeeze/kernel
      [C, C/r]``, its input channels rolled back (below), ``.1.bias`` -> ``squeeze/bias``;
    * ``channel_att_{p}.3.weight [C, C/r, 1, 1]`` -> ``{p}_attention/excite/kernel
      [C/r, C]``, ``.3.bias`` -> ``excite/bias``;

    for ``p`` in ``low``, ``high``. The roll: their ``torch.fft.fftshift(torch.fft.fft2(x))``
    has no ``dim`` and so also rolls the channel axis of the spectrum the attention pools:
    their channel ``c`` holds our channel ``(c - C // 2) mod C``. The squeeze layer's
    input weights are rolled back, ``W_ours[:, c] = W_theirs[:, (c + C // 2) mod C]``
    (``np.roll(W, -(C // 2))`` along the input axis; for even ``C`` a roll by ``C / 2``
    either way). The spatial part of their shift does not matter (the attention takes
    the mean over frequencies), nor do the output channels (the attentions multiply the
    unshifted parts). Their shift also rolls the batch axis, which no conversion undoes:
    with more than one image per batch their module attends each image with another
    image's spectrum. Their low-frequency window also differs from our symmetric mask at
    some sizes (module docstring of :mod:`spectral_jax.related.frequency_masking`); at
    sizes where the two agree (e.g. 9 x 7 at the cutoff 0.35) the converted module
    computes their function exactly (the tests check it).

    Args:
      state_dict: ``{key: array}`` with the keys above (PyTorch layout), e.g. from
        :func:`spectral_jax.models.pretrained.load_torchvision_state_dict`; keys outside
        ``prefix`` are ignored.
      prefix: the module's key prefix in a larger state dict, e.g.
        ``"backbone.layer2.0.att."``.

    Returns:
      ``{"gate_conv": ..., "low_attention": ..., "high_attention": ...}``, float32 NumPy
      arrays: the ``params`` collection of ``FreqMix(reduction=r)`` (pass it as
      ``{"params": ...}``).

    Raises:
      ValueError: listing missing keys, unexpected ones under ``prefix`` and shapes that
        do not fit one module.
    """
    names = ["freq_weight_conv.weight", "freq_weight_conv.bias"]
    for part in ("low", "high"):
        names += [f"channel_att_{part}.{i}.{leaf}" for i in (1, 3) for leaf in ("weight", "bias")]
    missing = [prefix + name for name in names if prefix + name not in state_dict]
    unexpected = sorted(
        key for key in state_dict if key.startswith(prefix) and key[len(prefix) :] not in names
    )
    if missing or unexpected:
        raise ValueError(
            f"not an authors' FreqMix state dict under prefix {prefix!r}: missing keys "
            f"{missing}, unexpected keys {unexpected}."
        )
    weights = {name: np.asarray(state_dict[prefix + name], np.float32) for name in names}
    gate = weights["freq_weight_conv.weight"]
    channels = gate.shape[1] if gate.ndim == 4 else -1
    hidden = weights["channel_att_low.1.weight"].shape[0]
    expected = {
        "freq_weight_conv.weight": (2, channels, 3, 3),
        "freq_weight_conv.bias": (2,),
    }
    for part in ("low", "high"):
        expected[f"channel_att_{part}.1.weight"] = (hidden, channels, 1, 1)
        expected[f"channel_att_{part}.1.bias"] = (hidden,)
        expected[f"channel_att_{part}.3.weight"] = (channels, hidden, 1, 1)
        expected[f"channel_att_{part}.3.bias"] = (channels,)
    mismatched = [
        f"{prefix + name}: {weights[name].shape}, expected {shape}"
        for name, shape in expected.items()
        if weights[name].shape != shape
    ]
    if mismatched:
        raise ValueError(
            "the authors' FreqMix weights do not fit one module (gate convolution "
            f"[2, C, 3, 3], attentions [C/r, C, 1, 1] and [C, C/r, 1, 1]): {mismatched}."
        )
    params: dict[str, Any] = {
        "gate_conv": {
            "kernel": np.transpose(gate, (2, 3, 1, 0)),  # [2, C, 3, 3] -> [3, 3, C, 2]
            "bias": weights["freq_weight_conv.bias"],
        }
    }
    for part in ("low", "high"):
        squeeze = weights[f"channel_att_{part}.1.weight"][:, :, 0, 0].T  # [C, C/r]
        params[f"{part}_attention"] = {
            "squeeze": {
                # Their input channel c is our channel (c - C // 2) mod C.
                "kernel": np.roll(squeeze, -(channels // 2), axis=0),
                "bias": weights[f"channel_att_{part}.1.bias"],
            },
            "excite": {
                "kernel": weights[f"channel_att_{part}.3.weight"][:, :, 0, 0].T,  # [C/r, C]
                "bias": weights[f"channel_att_{part}.3.bias"],
            },
        }
    return params


@contextlib.contextmanager
def insert_de_aliasing_filters(
    *,
    cutoff: float | None = None,
    equivalent_sampling_factor: float = aliasing.EQUIVALENT_SAMPLING_FACTOR,
    placement: Placement = "block_input",
):
    """Applies the de-aliasing filter before the down-sampling layers of models, at apply time.

    Inside the context, every ``model.apply`` (also under ``jit``: enter the context in
    the traced function) filters, without changing parameters or model code:

    * ``"block_input"`` (the authors' placement): the input of every
      :class:`spectral_jax.models.Bottleneck` with a stride above 1, i.e. the input of
      stages 2-4 at output stride 32 (both the strided 3x3 convolution, through
      ``conv1``, and the strided shortcut see filtered features);
    * ``"strided_conv_input"``: the input of every ``nn.Conv`` with a stride above 1,
      including the stem's 7x7 convolution on the image.

    The stem max pool of :class:`spectral_jax.models.ResNet` is a function inside the
    model's code and is not filtered (nor is it by the authors).

    Args:
      cutoff: cycles per sample for every layer; ``None`` for
        :func:`spectral_jax.related.aliasing.nyquist_cutoff` of each layer's stride.
      equivalent_sampling_factor: ``kappa`` of that default cutoff (1.4).
      placement: ``"block_input"`` or ``"strided_conv_input"``.

    A function compiled outside the context and called inside it (a cached
    :class:`spectral_jax.evaluation.Evaluator` step, any ``jax.jit`` traced before) runs
    without the filters: enter the context inside the traced function, or use the
    model's ``downsample_filter`` attribute.

    Yields:
      Nothing; use as ``with insert_de_aliasing_filters(): model.apply(...)``.

    Raises:
      ValueError: for an unknown placement.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}.")

    def layer_cutoff(stride: int) -> float:
        if cutoff is not None:
            return cutoff
        return aliasing.nyquist_cutoff(
            stride, equivalent_sampling_factor=equivalent_sampling_factor
        )

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or not args:
            return next_fun(*args, **kwargs)
        stride = None
        if placement == "block_input" and _is_strided_block(module):
            stride = int(module.strides)
        elif placement == "strided_conv_input" and isinstance(module, nn.Conv):
            stride = _strides_of(module)
        if stride is None:
            return next_fun(*args, **kwargs)
        filtered = aliasing.de_alias(args[0], cutoff=layer_cutoff(stride))
        return next_fun(filtered, *args[1:], **kwargs)

    with nn.intercept_methods(interceptor):
        yield


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
    return (
        isinstance(module, nn.BatchNorm)
        and module.name == "bn1"
        and isinstance(module.parent, ResNet)
    )


def _is_strided_block(module: nn.Module) -> bool:
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
    equivalent_sampling_factor: float = aliasing.EQUIVALENT_SAMPLING_FACTOR,
    method: str | Callable | None = None,
    **apply_kwargs,
) -> dict[str, jax.Array]:
    """Aliasing score of the input of every down-sampling layer of a model, in one pass.

    Runs ``model.apply(variables, images, method=method, **apply_kwargs)`` under
    :func:`downsampling_inputs_interceptor` and scores each captured input with
    :func:`spectral_jax.related.aliasing.aliasing_score` at
    :func:`spectral_jax.related.aliasing.nyquist_cutoff` ``(stride,
    equivalent_sampling_factor)`` of that layer's stride. Pure and jittable (close over
    ``model`` and the static settings). Applied inside another interceptor context (e.g.
    :func:`spectral_jax.models.anti_aliasing.insert_de_aliasing_filters`), it scores
    the inputs as that interceptor leaves them.

    Args:
      model: a Flax module, e.g. :class:`spectral_jax.models.DeepLabV3Plus` or
        :class:`spectral_jax.models.ResNet`.
      variables: its variables.
      images: ``[B, H, W, 3]``.
      equivalent_sampling_factor: ``kappa`` of :func:`spectral_jax.related.aliasing.nyquist_cutoff`.
      method: the model method to run (default ``__call__``).
      **apply_kwargs: passed on to ``model.apply`` (e.g. ``train=False``).

    Returns:
      ``{layer path: [B] scores}``, in program order when run eagerly (``jax.jit``
      returns dicts sorted by key); a module that runs several times (shared) is
      reported once per call, with ``#1``, ``#2``, ... appended to the later calls.

    Example:
      The layers a ResNet reports. ``jax.eval_shape`` traces the model without running
      it (compiling even the tiny model takes seconds on a CPU) and, like ``jax.jit``,
      returns the dict sorted by key; called directly, the function gives the scores.

      >>> import functools
      >>> model = spectral_jax.models.create_resnet("resnet_tiny", output_stride=32)
      >>> images = jnp.zeros((1, 32, 32, 3))
      >>> variables = jax.eval_shape(model.init, jax.random.key(0), images)
      >>> scores_fn = functools.partial(downsampling_aliasing_scores, model)
      >>> scores = jax.eval_shape(scores_fn, variables, images)
      >>> list(scores)
      ['conv1', 'layer2_block0', 'layer2_block0/conv2', 'layer2_block0/downsample_conv',
       'layer3_block0', 'layer3_block0/conv2', 'layer3_block0/downsample_conv',
       'layer4_block0', 'layer4_block0/conv2', 'layer4_block0/downsample_conv', 'max_pool']
      >>> scores["conv1"].shape  # [B]
      (1,)
    """
    chex.assert_rank(images, 4)
    scores: dict[str, jax.Array] = {}

    def record(name: str, x: jax.Array, stride: int) -> None:
        cutoff = aliasing.nyquist_cutoff(
            stride, equivalent_sampling_factor=equivalent_sampling_factor
        )
        key, copy = name, 1
        while key in scores:
            key, copy = f"{name}#{copy}", copy + 1
        scores[key] = aliasing.aliasing_score(x, cutoff=cutoff)

    with nn.intercept_methods(downsampling_inputs_interceptor(record)):
        model.apply(variables, images, method=method, **apply_kwargs)
    return scores
