"""Soft filter pruning (He et al. 2018, 2019) and its hard-pruned export, for DeepLab v3+ and DAN.

The paper combines feature truncation with soft filter pruning (SFP), pruning 20-60 % of
the encoder's filters and 20 % of the decoder's (Table 2). SFP, at the end of every
training epoch, zeroes in every pruned layer the ``floor(rate * C_out)`` filters of
smallest L2 norm and keeps training all weights, so that a zeroed filter may grow back
(the "soft" in its name); after the last epoch the zeroed filters are removed, giving a
genuinely smaller network.

Which layers. A convolution is prunable when its output goes through its own BatchNorm
and ReLU into other convolutions only: then a zero channel stays zero up to those
convolutions, and removing it together with the matching input channels of its
consumers leaves the function unchanged. In both models these are the ResNet stem,
every bottleneck's ``conv1`` and ``conv2``, the ASPP branches and its projection (the
encoder group), and the decoder's projections and 3x3 convolutions (the decoder group).
Not prunable: the bottlenecks' ``conv3`` and ``downsample_conv`` (their outputs are
added on the residual path, whose channels every block shares) and the classifier.
Max pooling, dropout, concatenation and every resampling method of
:func:`spectral_jax.truncation.resize_features` act channel by channel and map a zero
channel to zero.

Why BatchNorm is touched too. With only the filter zeroed, BatchNorm in inference mode
outputs ``scale * (0 - mean) / sqrt(var + eps) + bias``, a nonzero constant in general,
so removing the channel would change the outputs. :func:`soft_prune` therefore also
zeroes that channel's BatchNorm ``bias`` and running ``mean``; the output is then
exactly 0 in inference mode and, since the batch mean of a zero map is 0, in training
mode too, and :func:`hard_prune` reproduces the soft-pruned model exactly.

How the pruned filters grow back. A channel that is exactly 0 before the ReLU gets no
gradient (``relu'(0) = 0``), so plain SGD would leave it at zero. Nothing is masked,
though: the optimizer's momentum (SGD with momentum as in the paper, or Adam), which
:func:`soft_prune` leaves alone as SFP's reference code does, moves the filter off zero
in the next step, and from then on BatchNorm normalises the small filter's output back
to a full-size signal and the gradient flows. This is why BatchNorm's ``scale`` (and
``var``) is kept: with ``scale = 0`` no gradient would reach the filter (and ``scale``'s
own gradient would be 0 while the filter is), so recovery would need a further step.

Usage in training (the plan is a hashable, static value)::

    plan = pruning_plan(model, PruningRates(encoder=0.4, decoder=0.2))
    prune = jax.jit(soft_prune, static_argnums=1)
    for epoch in range(num_epochs):
        variables = train_one_epoch(variables)
        variables, masks = prune(variables, plan)
    small_model, small_variables = hard_prune(model, variables, masks)

All paths are the ``"/"``-joined keys of the per-block parameter tree, e.g.
``"encoder/layer1_block0/conv1"``; BatchNorm statistics live at the same paths under
``"batch_stats"``. A model with stacked blocks (``scan_blocks=True``, the default) keeps
``encoder/layer3_block5`` as slice 4 of ``encoder/layer3_blocks``: the functions here
read and write its variables through :func:`spectral_jax.models.block_stacking.unstack_blocks`
and :func:`~spectral_jax.models.block_stacking.stack_blocks`, so plans, masks and ``widths``
use the per-block paths whichever the layout, and variables come back in the layout
they came in (or, from :func:`hard_prune`, in that of the pruned model).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax.models.block_stacking import stack_blocks, unstack_blocks
from spectral_jax.models.dan import DAN, AggregationDecoder
from spectral_jax.models.deeplab import ASPP, Decoder, DeepLabV3Plus
from spectral_jax.models.resnet import RESNET_CONFIGS

GROUPS: tuple[str, ...] = ("encoder", "decoder")


def _check_rate(rate: Any, name: str) -> None:
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
        raise ValueError(f"{name} must be a pruning rate in [0, 1), got {rate!r}.")


@dataclasses.dataclass(frozen=True)
class PrunableConv:
    """One prunable convolution and its BatchNorm.

    Attributes:
      path: the convolution's path, e.g. ``"aspp/branch1_conv"``.
      batch_norm: its BatchNorm's path, e.g. ``"aspp/branch1_bn"``.
      group: ``"encoder"`` (backbone and ASPP) or ``"decoder"``.
      rate: the fraction of filters to prune, in ``[0, 1)``.

    Raises:
      ValueError: naming the layer for a rate outside ``[0, 1)`` or an unknown group.
    """

    path: str
    batch_norm: str
    group: str
    rate: float = 0.0

    def __post_init__(self):
        if self.group not in GROUPS:
            raise ValueError(f"group of {self.path} must be one of {GROUPS}, got {self.group!r}.")
        _check_rate(self.rate, f"rate of {self.path}")


@dataclasses.dataclass(frozen=True)
class ConvInputs:
    """A convolution whose input is the concatenation of prunable convolutions' outputs.

    Attributes:
      path: the consuming convolution, e.g. ``"aspp/project_conv"``.
      producers: the prunable convolutions whose outputs (after BatchNorm, ReLU and
        channel-wise operations) are concatenated, in order, into its input.
    """

    path: str
    producers: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class PruningRates:
    """Pruning rates by group, with optional per-layer overrides.

    Attributes:
      encoder: rate of every prunable encoder layer (backbone and ASPP); the paper uses
        0.2, 0.4 and 0.6.
      decoder: rate of every prunable decoder layer; the paper uses 0.2.
      layers: ``((path, rate), ...)`` overriding single layers.

    Raises:
      ValueError: naming the rate that lies outside ``[0, 1)``.
    """

    encoder: float = 0.0
    decoder: float = 0.0
    layers: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        _check_rate(self.encoder, "encoder")
        _check_rate(self.decoder, "decoder")
        for item in self.layers:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise ValueError(f"layers must hold (path, rate) pairs, got {item!r}.")
            _check_rate(item[1], f"layers rate of {item[0]}")


@dataclasses.dataclass(frozen=True)
class PruningPlan:
    """Which convolutions are pruned, at which rate, and where their outputs go.

    A pure description of the model (no arrays): hashable, so it can be a static
    argument of ``jax.jit``.

    Attributes:
      convs: the prunable convolutions, with their rates, in program order.
      inputs: the convolutions that consume them, whose input channels follow.
    """

    convs: tuple[PrunableConv, ...]
    inputs: tuple[ConvInputs, ...]

    def conv(self, path: str) -> PrunableConv:
        """The :class:`PrunableConv` at ``path``.

        Raises:
          ValueError: naming ``path`` if it is not a prunable convolution.
        """
        for conv in self.convs:
            if conv.path == path:
                return conv
        raise ValueError(f"{path!r} is not a prunable convolution of this plan.")


def _conv_bn(path: str, group: str) -> PrunableConv:
    # Our layers are named "<name>_conv" / "<name>_bn", the ResNet's "convK" / "bnK".
    head, _, name = path.rpartition("/")
    batch_norm = name[: -len("_conv")] + "_bn" if name.endswith("_conv") else "bn" + name[4:]
    return PrunableConv(path, f"{head}/{batch_norm}", group)


def _resnet_structure(backbone: str) -> tuple[list[PrunableConv], list[ConvInputs]]:
    stage_sizes = RESNET_CONFIGS[backbone].stage_sizes
    convs = [_conv_bn("encoder/conv1", "encoder")]
    # The stem feeds the first block's conv1 and its projection shortcut (which always
    # exists there: the stem has `width` channels, the block's output 4 * width).
    inputs = [
        ConvInputs("encoder/layer1_block0/conv1", ("encoder/conv1",)),
        ConvInputs("encoder/layer1_block0/downsample_conv", ("encoder/conv1",)),
    ]
    for stage, num_blocks in enumerate(stage_sizes):
        for block in range(num_blocks):
            prefix = f"encoder/layer{stage + 1}_block{block}"
            convs += [
                _conv_bn(f"{prefix}/conv1", "encoder"),
                _conv_bn(f"{prefix}/conv2", "encoder"),
            ]
            inputs += [
                ConvInputs(f"{prefix}/conv2", (f"{prefix}/conv1",)),
                ConvInputs(f"{prefix}/conv3", (f"{prefix}/conv2",)),
            ]
    return convs, inputs


def _aspp_structure() -> tuple[list[PrunableConv], list[ConvInputs]]:
    convs = [_conv_bn(f"aspp/{name}", "encoder") for name in ASPP.PRUNABLE_LAYERS]
    branches = tuple(conv.path for conv in convs if conv.path != "aspp/project_conv")
    return convs, [ConvInputs("aspp/project_conv", branches)]


# DeepLabV3Plus options whose layer graph pruning does not know: it holds for these
# defaults only. (Dilations, rates, resampling, multi-grid, the DeepLab v3 and FCN heads
# and the auxiliary head keep a graph it knows.)
_STRUCTURAL_DEFAULTS = {
    "separable_aspp": False,
    "separable_decoder": False,
    "aspp_output_conv": False,
    "decoder_convs": 2,
}


def _check_prunable_options(model: DeepLabV3Plus) -> None:
    """Raises ``ValueError`` naming the options whose layer graph pruning does not know."""
    differing = {
        name: getattr(model, name)
        for name, default in _STRUCTURAL_DEFAULTS.items()
        if getattr(model, name) != default
    }
    if differing:
        raise ValueError(
            "pruning knows the DeepLab v3+ layer graph with "
            f"{_STRUCTURAL_DEFAULTS}; the model sets {differing} (separable or extra "
            "convolutions), which it cannot prune."
        )


def _head_structure(model, convs, inputs) -> tuple[list[PrunableConv], list[ConvInputs]]:
    """The DeepLab v3 head (ASPP, 3x3 convolution, classifier) or the FCN head (3x3
    convolution on the last stage, classifier), and the auxiliary head if any."""
    if model.head == "deeplabv3":
        aspp_convs, aspp_inputs = _aspp_structure()
        convs, inputs = convs + aspp_convs, inputs + aspp_inputs
        inputs.append(ConvInputs("decoder/hidden_conv", ("aspp/project_conv",)))
    # The FCN head reads the last stage's output, the residual path: nothing to slice.
    heads = ["decoder", *(["aux_decoder"] if model.aux_head else [])]
    for head in heads:
        convs.append(_conv_bn(f"{head}/hidden_conv", "decoder"))
        inputs.append(ConvInputs(f"{head}/classifier", (f"{head}/hidden_conv",)))
    return convs, inputs


def _structure(model) -> tuple[list[PrunableConv], list[ConvInputs]]:
    if not isinstance(model, DeepLabV3Plus | DAN):
        raise ValueError(f"model must be a DeepLabV3Plus or a DAN, got {type(model).__name__}.")
    if model.backbone not in RESNET_CONFIGS:
        raise ValueError(
            f"backbone must be one of {tuple(RESNET_CONFIGS)}, got {model.backbone!r}."
        )
    if isinstance(model, DeepLabV3Plus):
        _check_prunable_options(model)
    convs, inputs = _resnet_structure(model.backbone)
    if isinstance(model, DeepLabV3Plus) and model.head != "deeplabv3plus":
        return _head_structure(model, convs, inputs)
    aspp_convs, aspp_inputs = _aspp_structure()
    convs += aspp_convs
    inputs += aspp_inputs
    names: tuple[str, ...]
    skips: tuple[str, ...]
    if isinstance(model, DeepLabV3Plus):
        names = Decoder.PRUNABLE_LAYERS  # low_level, fuse1, fuse2
        skips = ("decoder/low_level_conv",)
    else:
        names = AggregationDecoder.PRUNABLE_LAYERS  # stage1..3, fuse1, fuse2
        skips = ("decoder/stage1_conv", "decoder/stage2_conv", "decoder/stage3_conv")
    convs += [_conv_bn(f"decoder/{name}", "decoder") for name in names]
    inputs += [
        # The decoder input is [ASPP output, projected skips] (see the models).
        ConvInputs("decoder/fuse1_conv", ("aspp/project_conv", *skips)),
        ConvInputs("decoder/fuse2_conv", ("decoder/fuse1_conv",)),
        ConvInputs("decoder/classifier", ("decoder/fuse2_conv",)),
    ]
    return convs, inputs


def pruning_plan(model, rates: PruningRates | None = None) -> PruningPlan:
    """The prunable convolutions of a DeepLab v3+ or DAN, with their pruning rates.

    Args:
      model: a :class:`~spectral_jax.models.DeepLabV3Plus` or :class:`~spectral_jax.models.DAN`
        (possibly already hard-pruned: the plan depends only on the layer names).
      rates: rates by group and layer; ``None`` prunes nothing (all rates 0).

    Returns:
      A :class:`PruningPlan`.

    Raises:
      ValueError: for another model, or naming ``rates.layers`` for a path that is not a
        prunable convolution.

    Example:
      >>> from spectral_jax.models import DeepLabV3Plus
      >>> plan = pruning_plan(DeepLabV3Plus(), PruningRates(encoder=0.4, decoder=0.2))
      >>> plan.conv("decoder/fuse1_conv").rate
      0.2
    """
    rates = PruningRates() if rates is None else rates
    convs, inputs = _structure(model)
    overrides = dict(rates.layers)
    known = {conv.path for conv in convs}
    for path in overrides:
        if path not in known:
            raise ValueError(f"rates.layers: {path!r} is not a prunable convolution of the model.")
    by_group = {"encoder": rates.encoder, "decoder": rates.decoder}
    convs = [
        dataclasses.replace(conv, rate=overrides.get(conv.path, by_group[conv.group]))
        for conv in convs
    ]
    return PruningPlan(tuple(convs), tuple(inputs))


def num_pruned(rate: float, channels: int) -> int:
    """``floor(rate * channels)``, the number of filters a layer loses.

    The product is rounded to 9 decimals first, so that, e.g., ``0.29 * 100`` (which is
    ``28.999999999999996`` in binary floating point) prunes 29 filters. Since
    ``rate < 1``, at least one filter always stays.

    Raises:
      ValueError: naming ``rate`` outside ``[0, 1)``.
    """
    _check_rate(rate, "rate")
    return min(math.floor(round(rate * channels, 9)), channels - 1)


def filter_norms(kernel: jax.Array) -> jax.Array:
    """L2 norms of a convolution's filters: kernel ``[Kh, Kw, Cin, Cout]`` -> ``[Cout]``.

    .. math::

       \\|W_j\\|_2 = \\Big(\\sum_{a, b, i} W[a, b, i, j]^2\\Big)^{1/2}

    computed in float32 (or float64 for float64 kernels).
    """
    dtype = jnp.promote_types(kernel.dtype, jnp.float32)
    kernel = kernel.astype(dtype)
    return jnp.sqrt(jnp.sum(kernel * kernel, axis=tuple(range(kernel.ndim - 1))))


def pruning_mask(kernel: jax.Array, rate: float) -> jax.Array:
    """Which filters survive: False for the ``floor(rate * Cout)`` of smallest L2 norm.

    Ties are broken by position: among equal norms the filter with the lower index is
    pruned first (a stable sort), so the mask is deterministic.

    Args:
      kernel: ``[..., Cin, Cout]``.
      rate: the pruning rate in ``[0, 1)`` (static).

    Returns:
      Boolean keep-mask ``[Cout]`` with exactly ``Cout - floor(rate * Cout)`` True.
    """
    channels = kernel.shape[-1]
    order = jnp.argsort(filter_norms(kernel), stable=True)  # [Cout], smallest norm first
    pruned = order[: num_pruned(rate, channels)]
    return jnp.ones((channels,), bool).at[pruned].set(False)


def _flatten(variables) -> dict[str, Any]:
    variables = flax.core.unfreeze(variables)
    if not isinstance(variables, Mapping) or not {"params", "batch_stats"} <= set(variables):
        raise ValueError("variables must hold 'params' and 'batch_stats' (from model.init).")
    return flax.traverse_util.flatten_dict(variables, sep="/")


def _unflatten(flat: dict[str, Any], like):
    variables = flax.traverse_util.unflatten_dict(flat, sep="/")
    return flax.core.freeze(variables) if isinstance(like, flax.core.FrozenDict) else variables


def _get(flat: dict[str, Any], key: str) -> jax.Array:
    if key not in flat:
        raise ValueError(f"variables have no {key!r}; do the plan and the model match?")
    return flat[key]


def soft_prune(variables, plan: PruningPlan) -> tuple[Any, dict[str, jax.Array]]:
    """One step of soft filter pruning: zeroes the smallest filters of every planned layer.

    For each :class:`PrunableConv` with rate ``r`` and ``C`` filters, the
    ``floor(r * C)`` filters of smallest L2 norm (:func:`pruning_mask`) are set to 0,
    together with the matching BatchNorm ``bias`` and running ``mean``, so that the
    channel's activation after BatchNorm and ReLU is exactly 0 in training and in
    inference (see the module docstring for why, and why ``scale`` is kept). Nothing is
    frozen or masked: all weights stay trainable. Layers with rate 0 are returned
    unchanged.

    Pure and jittable with ``plan`` static: ``jax.jit(soft_prune, static_argnums=1)``.

    Args:
      variables: ``{"params": ..., "batch_stats": ...}`` of the planned model, stacked
        or per-block (module docstring).
      plan: from :func:`pruning_plan`.

    Returns:
      ``(variables, masks)``: the pruned variables (same structure and shapes) and, for
      every layer of the plan, its boolean keep-mask ``[C]``, keyed by per-block path.

    Raises:
      ValueError: if ``variables`` lack a layer of the plan.
    """
    per_block = unstack_blocks(variables)
    flat = _flatten(per_block)
    masks = {}
    for conv in plan.convs:
        kernel_key = f"params/{conv.path}/kernel"
        kernel = _get(flat, kernel_key)
        keep = pruning_mask(kernel, conv.rate)
        masks[conv.path] = keep
        if num_pruned(conv.rate, kernel.shape[-1]) == 0:
            continue
        flat[kernel_key] = jnp.where(keep, kernel, jnp.zeros((), kernel.dtype))
        for key in (f"params/{conv.batch_norm}/bias", f"batch_stats/{conv.batch_norm}/mean"):
            value = _get(flat, key)
            flat[key] = jnp.where(keep, value, jnp.zeros((), value.dtype))
    return stack_blocks(_unflatten(flat, per_block), like=variables), masks


def _variable_shapes(model) -> dict[str, Any]:
    """``jax.eval_shape`` of the model's variables, in its layout (stacked or not)."""
    # Channel counts depend neither on the input size nor on the decoder grid; a small
    # input keeps this cheap.
    x = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32)
    return jax.eval_shape(model.clone(feature_size=None).init, jax.random.key(0), x)


def hard_pruned_model(model, plan: PruningPlan):
    """The narrower model :func:`hard_prune` returns for ``plan``, without any variables.

    Every planned layer with ``C`` filters keeps ``C - floor(rate * C)``; which filters
    survive does not change the architecture, so FLOPs and parameter counts of a pruned
    model (paper Table 2) follow from the plan alone, e.g. with
    :func:`spectral_jax.count_flops` or :func:`spectral_jax.conv_layers`.

    Args:
      model: a :class:`~spectral_jax.models.DeepLabV3Plus` or :class:`~spectral_jax.models.DAN`.
      plan: from :func:`pruning_plan` for this model.

    Returns:
      ``model.clone(widths=...)``.
    """
    flat = _flatten(unstack_blocks(_variable_shapes(model)))
    widths = dict(model.widths or ())
    for conv in plan.convs:
        channels = _get(flat, f"params/{conv.path}/kernel").shape[-1]
        if num_pruned(conv.rate, channels):
            widths[conv.path] = channels - num_pruned(conv.rate, channels)
    return model.clone(widths=tuple(sorted(widths.items())) or None)


def hard_prune(model, variables, pruning: PruningPlan | Mapping[str, Any]) -> tuple[Any, Any]:
    """Removes pruned filters for good: a narrower model and its sliced variables.

    Each pruned layer keeps only its surviving filters (and their BatchNorm parameters
    and statistics); each consumer (:class:`ConvInputs`) keeps only the matching input
    channels. The new model is ``model.clone(widths=...)`` with the surviving widths
    (merged with the model's own ``widths``). If the removed channels are zero after
    BatchNorm and ReLU, as :func:`soft_prune` leaves them, the small model computes the
    same function as the soft-pruned one, with fewer FLOPs; its ``"aspp"`` and
    ``"decoder_input"`` intermediates lose the pruned channels. A pruned backbone has
    blocks of different widths and runs unrolled (``layer{s}_block{b}``); the returned
    variables have the pruned model's layout.

    Not jittable (it sets shapes); run it once, after training.

    Args:
      model: the :class:`~spectral_jax.models.DeepLabV3Plus` or :class:`~spectral_jax.models.DAN`.
      variables: its variables (stacked or per-block); soft-pruned ones if a mapping of
        masks is given.
      pruning: a :class:`PruningPlan` (then :func:`soft_prune` is applied first) or the
        masks :func:`soft_prune` returned (``{path: bool [C]}``, True = keep; layers
        left out keep all filters).

    Returns:
      ``(pruned_model, pruned_variables)``.

    Raises:
      ValueError: naming ``pruning`` for a path that is not prunable, a mask of the
        wrong length or one that removes every filter.
    """
    if isinstance(pruning, PruningPlan):
        # hard_prune runs on the host and cannot be transformed anyway; compiling
        # soft_prune once is cheaper than dispatching its few hundred ops one by one.
        variables, masks = jax.jit(soft_prune, static_argnums=1)(variables, pruning)
    elif isinstance(pruning, Mapping):
        masks = pruning
    else:
        raise ValueError(f"pruning must be a PruningPlan or a mapping of masks, got {pruning!r}.")
    plan = pruning_plan(model)
    per_block = unstack_blocks(variables)
    flat = _flatten(per_block)
    out_channels = {
        conv.path: _get(flat, f"params/{conv.path}/kernel").shape[-1] for conv in plan.convs
    }
    keeps = {}
    for path, mask in masks.items():
        if path not in out_channels:
            raise ValueError(f"pruning: {path!r} is not a prunable convolution of the model.")
        keep = np.asarray(mask, dtype=bool)
        if keep.shape != (out_channels[path],):
            raise ValueError(
                f"pruning: the mask of {path!r} has shape {keep.shape}, "
                f"expected ({out_channels[path]},)."
            )
        if not keep.any():
            raise ValueError(f"pruning: the mask of {path!r} removes every filter.")
        keeps[path] = keep

    def take(key: str, keep: np.ndarray, axis: int) -> None:
        # On the host: slicing a few hundred small arrays op by op on the device costs
        # seconds of dispatch; the results are the same.
        flat[key] = jnp.asarray(np.take(np.asarray(flat[key]), np.flatnonzero(keep), axis=axis))

    for consumer in plan.inputs:
        # Input channels of the consumer: the producers' channels, concatenated in order.
        in_keep = np.concatenate(
            [keeps.get(p, np.ones(out_channels[p], bool)) for p in consumer.producers]
        )
        kernel_key = f"params/{consumer.path}/kernel"
        if _get(flat, kernel_key).shape[-2] != in_keep.size:
            raise ValueError(
                f"{consumer.path} has {flat[kernel_key].shape[-2]} input channels, but its "
                f"producers {consumer.producers} give {in_keep.size}."
            )
        take(kernel_key, in_keep, axis=-2)
    for conv in plan.convs:
        if conv.path not in keeps:
            continue
        keep = keeps[conv.path]
        take(f"params/{conv.path}/kernel", keep, axis=-1)
        for key in (
            "params/{}/scale",
            "params/{}/bias",
            "batch_stats/{}/mean",
            "batch_stats/{}/var",
        ):
            take(key.format(conv.batch_norm), keep, axis=0)

    widths = dict(model.widths or ())
    widths.update({path: int(keep.sum()) for path, keep in keeps.items() if not keep.all()})
    pruned_model = model.clone(widths=tuple(sorted(widths.items())) or None)
    # Stacked where the pruned model stacks: a backbone that lost no filter keeps its
    # stacked blocks, a pruned one runs unrolled.
    pruned_variables = stack_blocks(
        _unflatten(flat, per_block), like=_variable_shapes(pruned_model)
    )
    return pruned_model, pruned_variables
