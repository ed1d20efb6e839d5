"""Dilated ResNet backbones (He et al. 2016) as DeepLab v3+ uses them, in Flax linen.

The layout follows torchvision's ResNet v1.5 (stride on the 3x3 convolution of the
bottleneck, PyTorch-style explicit padding), so that torchvision weights map onto it
one to one. For an output stride of 16 the last stage keeps stride 1 and dilates its
3x3 convolutions by 2; for 8 the last two stages dilate by 2 and 4. As in torchvision's
``replace_stride_with_dilation``, the first block of a dilated stage keeps the previous
stage's dilation.

Maps are channels-last ``[B, H, W, C]``. BatchNorm uses running averages unless
``train=True``; in training, apply with ``mutable=["batch_stats"]``.

Widths. Every model here takes an optional ``widths``: a tuple of ``(layer path,
channels)`` pairs that override the output channels of single convolutions, with paths
as in the parameter tree, e.g. ``("layer1_block0/conv1", 3)``. Only convolutions whose
output goes through their own BatchNorm and ReLU into other convolutions can be
narrowed (the stem and the bottlenecks' ``conv1``/``conv2``); the residual path keeps
its width. ``None`` gives the standard widths. Hard filter pruning
(:mod:`spectral_jax.models.pruning`) builds its smaller models this way.

Stacked blocks. The blocks after the first of a stage are identical (same widths, stride
1, the stage's dilation), so by default (``scan_blocks=True``) they run under
``nn.scan`` as one module ``layer{s}_blocks`` whose variables carry a leading block axis:
``layer3_blocks/conv1/kernel`` is ``[L - 1, 1, 1, 1024, 256]`` for a stage of ``L``
blocks, slice ``i`` being the block that the unrolled model names ``layer3_block{i + 1}``.
XLA then compiles one block per stage instead of ``L``, so compiling ResNet-101 costs
little more than ResNet-50. The first block of a stage (stride, dilation change,
projection shortcut) stays a module of its own, ``layer{s}_block0``. A model with
``widths`` (a hard-pruned one, whose blocks differ in width) always runs unrolled, with
one module ``layer{s}_block{b}`` per block.
:func:`~spectral_jax.models.block_stacking.unstack_blocks` and
:func:`~spectral_jax.models.block_stacking.stack_blocks` convert variables between the
two forms; the per-block paths are
the ones that pruning plans, ``widths`` and torchvision checkpoints use. A method
interceptor sees the stacked blocks as one module traced once inside the scan (values
it captures there are the loop body's tracers); to probe every block, use
``scan_blocks=False`` with ``unstack_blocks`` of the variables. The strided blocks
are always the first of their stages, so the de-aliasing filters and downsampling
probes of :mod:`spectral_jax.models.anti_aliasing` see the same modules in both forms.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from spectral_jax.models.loop_friendly_conv import loop_friendly_conv_general_dilated

OUTPUT_STRIDES: tuple[int, ...] = (8, 16, 32)

# ((layer path, output channels), ...): hashable, so that a model stays a static value.
Widths = tuple[tuple[str, int], ...]


def _widths_under(widths: Widths | None, prefix: str) -> Widths | None:
    """The entries of ``widths`` below ``prefix + "/"``, with that prefix removed."""
    if not widths:
        return None
    head = prefix + "/"
    inner = tuple((path[len(head) :], n) for path, n in widths if path.startswith(head))
    return inner or None


def _check_widths(widths: Widths | None, names, owner: str) -> dict[str, int]:
    """``widths`` as a dict, after checking its form, its paths and its channel counts.

    Raises:
      ValueError: naming ``widths`` for a malformed entry, an unknown path or a
        non-positive channel count.
    """
    if widths is None:
        return {}
    if not isinstance(widths, tuple) or not all(
        isinstance(item, tuple) and len(item) == 2 for item in widths
    ):
        raise ValueError(
            f"widths of {owner} must be a tuple of (path, channels) pairs, got {widths!r}."
        )
    known = set(names)
    for path, channels in widths:
        if path not in known:
            raise ValueError(
                f"widths of {owner}: unknown or non-prunable layer {path!r}; known: {sorted(known)}."
            )
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"widths of {owner}: {path!r} needs a positive int, got {channels!r}.")
    return dict(widths)


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Depth and width of a bottleneck ResNet.

    Attributes:
      stage_sizes: number of bottleneck blocks in each of the four stages.
      width: channels of the stem and of the first stage's bottleneck; stage ``s`` has
        bottleneck width ``width * 2**s`` and ``4 * width * 2**s`` output channels.
    """

    stage_sizes: tuple[int, int, int, int]
    width: int = 64


RESNET_CONFIGS: dict[str, ResNetConfig] = {
    "resnet50": ResNetConfig((3, 4, 6, 3)),
    "resnet101": ResNetConfig((3, 4, 23, 3)),
    # For tests and CPU demos: one block per stage, 4 channels wide.
    "resnet_tiny": ResNetConfig((1, 1, 1, 1), width=4),
}


def stage_dilations(output_stride: int) -> tuple[tuple[int, int], ...]:
    """(stride, dilation) of each of the four stages for an output stride of 8, 16 or 32.

    Raises:
      ValueError: for another output stride.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}.")
    if output_stride == 32:
        return ((1, 1), (2, 1), (2, 1), (2, 1))
    if output_stride == 16:
        return ((1, 1), (2, 1), (2, 1), (1, 2))
    return ((1, 1), (2, 1), (1, 2), (1, 4))


def _batch_norm(
    train: bool, name: str | None = None, dtype: jnp.dtype = jnp.float32
) -> nn.BatchNorm:
    # PyTorch's defaults (momentum 0.1 of the new value, eps 1e-5), so that converted
    # torchvision statistics behave the same. `dtype` is the output's: Flax reduces the
    # batch statistics in float32 and keeps scale, offset and running averages float32.
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name
    )


class Bottleneck(nn.Module):
    """Bottleneck block: 1x1, 3x3 (strided, dilated), 1x1 with ``4 * features`` outputs.

    Attributes:
      features: bottleneck width.
      strides: stride of the 3x3 convolution (and of the projection shortcut).
      dilation: dilation of the 3x3 convolution (its padding equals it).
      dtype: computation dtype of the convolutions and of the BatchNorm outputs
        (parameters and BatchNorm statistics stay float32).
      conv1_features: outputs of ``conv1`` if not ``features`` (a pruned block).
      conv2_features: outputs of ``conv2`` if not ``features`` (a pruned block).
      loop_friendly_convs: convolutions with
        :func:`~spectral_jax.models.loop_friendly_conv.loop_friendly_conv_general_dilated`
        (set for the stacked blocks, which run inside a loop).
      downsample_filter: optional factory of a module ``[B, H, W, C] -> [B, H, W, C]``
        applied to the input of a strided block (feeding both its strided 3x3
        convolution and its strided shortcut), called as
        ``downsample_filter(stride=strides, dtype=dtype, name="downsample_filter")``;
        e.g. :class:`spectral_jax.models.DeAliasingFilter` or
        ``functools.partial(spectral_jax.models.FreqMix, reduction=16)``.
    """

    features: int
    strides: int = 1
    dilation: int = 1
    dtype: jnp.dtype = jnp.float32
    conv1_features: int | None = None
    conv2_features: int | None = None
    loop_friendly_convs: bool = False
    downsample_filter: Callable[..., nn.Module] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """``[B, H, W, Cin] -> [B, ceil(H / strides), ceil(W / strides), 4 * features]``."""
        if self.downsample_filter is not None and self.strides > 1:
            # Before both strided paths, as the de-aliasing filter of Chen et al. (2024).
            x = self.downsample_filter(
                stride=self.strides, dtype=self.dtype, name="downsample_filter"
            )(x)
        if self.loop_friendly_convs:
            conv_function = loop_friendly_conv_general_dilated
        else:
            conv_function = None  # lax.conv_general_dilated
        conv = lambda f, k, **kw: nn.Conv(
            f, k, use_bias=False, dtype=self.dtype, conv_general_dilated=conv_function, **kw
        )
        d = self.dilation
        y = conv(self.conv1_features or self.features, (1, 1), name="conv1")(x)
        y = nn.relu(_batch_norm(train, "bn1", self.dtype)(y))
        y = conv(
            self.conv2_features or self.features,
            (3, 3),
            strides=self.strides,
            padding=((d, d), (d, d)),
            kernel_dilation=d,
            name="conv2",
        )(y)
        y = nn.relu(_batch_norm(train, "bn2", self.dtype)(y))
        y = conv(4 * self.features, (1, 1), name="conv3")(y)
        y = _batch_norm(train, "bn3", self.dtype)(y)
        if x.shape[-1] != 4 * self.features or self.strides != 1:
            x = conv(4 * self.features, (1, 1), strides=self.strides, name="downsample_conv")(x)
            x = _batch_norm(train, "downsample_bn", self.dtype)(x)
        return nn.relu(x + y)


class _StackedBottleneck(Bottleneck):
    """A :class:`Bottleneck` in the ``(carry, x) -> (carry, y)`` form ``nn.scan`` runs."""

    # The (carry, x) form is the point of this subclass, not a substitute for a Bottleneck.
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, None]:  # type: ignore[override]
        return super().__call__(x, train), None


def _stacked_bottlenecks(length: int, remat: bool) -> type[nn.Module]:
    """A module class running ``length`` identical bottlenecks under ``nn.scan``.

    Variables (``params`` and ``batch_stats``) get a leading axis of size ``length``;
    every block draws its own initialisation (``split_rngs``). ``train`` is broadcast
    as a Python value. With ``remat``, each block's activations are recomputed in the
    backward pass (``jax.checkpoint``) instead of being stored.
    """
    block = _StackedBottleneck
    if remat:
        # Argument 2 is `train` (0 is the module). Under scan, CSE across iterations
        # cannot happen, so its prevention is not needed.
        block = nn.remat(block, static_argnums=(2,), prevent_cse=False)
    return nn.scan(
        block,
        variable_axes={"params": 0, "batch_stats": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast,),
        length=length,
    )


def bottleneck_stage(
    x: jax.Array,
    train: bool,
    *,
    stage: int,
    num_blocks: int,
    features: int,
    strides: int,
    dilation: int,
    first_dilation: int,
    dtype: jnp.dtype = jnp.float32,
    widths: Mapping[str, int] | None = None,
    downsample_filter: Callable[..., nn.Module] | None = None,
    scan_blocks: bool = True,
    remat_blocks: bool = False,
    later_dilations: Sequence[int] | None = None,
) -> jax.Array:
    """Runs one stage of bottlenecks; call it inside a parent's ``nn.compact`` method.

    The first block, ``layer{stage + 1}_block0``, has the stage's stride and
    ``first_dilation``; the others stride 1 and ``dilation`` (or ``later_dilations``).
    With ``scan_blocks`` the others run as one scanned module ``layer{stage + 1}_blocks``
    (module docstring), otherwise as ``layer{stage + 1}_block{b}``; ``widths``
    (``{"layer{s}_block{b}/convK": channels}``) needs the unrolled form, and so do
    blocks of different dilations (a multi-grid stage), which always run unrolled.

    Args:
      x: ``[B, H, W, Cin]``.
      train: batch statistics instead of running averages.
      stage: the stage's index, 0 to 3 (names ``layer1`` to ``layer4``).
      num_blocks: blocks in the stage, at least 1.
      features: bottleneck width; the stage outputs ``4 * features`` channels.
      strides: stride of the first block.
      dilation: dilation of the blocks after the first.
      first_dilation: dilation of the first block.
      dtype: computation dtype.
      widths: per-block ``conv1``/``conv2`` output channels; ``None`` or empty for the
        standard widths.
      downsample_filter: module factory for the first block if it is strided
        (see :class:`Bottleneck`).
      scan_blocks: run the blocks after the first under ``nn.scan``.
      remat_blocks: with ``scan_blocks``, recompute each scanned block in the backward
        pass instead of storing its activations.
      later_dilations: the dilations of blocks ``1 .. num_blocks - 1`` (a multi-grid
        stage) instead of ``dilation`` for all of them; ``None`` for ``dilation``.

    Returns:
      ``[B, ceil(H / strides), ceil(W / strides), 4 * features]``.

    Raises:
      ValueError: if ``widths`` is given together with ``scan_blocks``, or
        ``later_dilations`` does not have ``num_blocks - 1`` entries.
    """
    widths = dict(widths or {})
    if widths and scan_blocks:
        raise ValueError("widths needs unrolled blocks: pass scan_blocks=False with widths.")
    if later_dilations is None:
        later_dilations = (dilation,) * (num_blocks - 1)
    later_dilations = tuple(int(d) for d in later_dilations)
    if len(later_dilations) != num_blocks - 1:
        raise ValueError(
            f"later_dilations of layer{stage + 1} needs {num_blocks - 1} entries, got "
            f"{later_dilations!r}."
        )
    if len(set(later_dilations)) > 1:
        scan_blocks = False  # nn.scan needs identical blocks; dilation is static.
    layer = f"layer{stage + 1}"
    x = Bottleneck(
        features,
        strides=strides,
        dilation=first_dilation,
        dtype=dtype,
        conv1_features=widths.get(f"{layer}_block0/conv1"),
        conv2_features=widths.get(f"{layer}_block0/conv2"),
        downsample_filter=downsample_filter,
        name=f"{layer}_block0",
    )(x, train)
    if num_blocks > 1 and scan_blocks:
        blocks = _stacked_bottlenecks(num_blocks - 1, remat_blocks)
        x, _ = blocks(
            features,
            dilation=later_dilations[0],
            dtype=dtype,
            loop_friendly_convs=True,
            name=f"{layer}_blocks",
        )(x, train)
        return x
    for block in range(1, num_blocks):
        name = f"{layer}_block{block}"
        x = Bottleneck(
            features,
            dilation=later_dilations[block - 1],
            dtype=dtype,
            conv1_features=widths.get(f"{name}/conv1"),
            conv2_features=widths.get(f"{name}/conv2"),
            name=name,
        )(x, train)
    return x


FIRST_BLOCK_DILATIONS: tuple[str, ...] = ("previous", "stage")


def check_dilation_settings(
    first_block_dilation: str, multi_grid: Sequence[int] | None, stage_sizes: Sequence[int]
) -> None:
    """Validates ``first_block_dilation`` and ``multi_grid`` (see :func:`bottleneck_stages`).

    Raises:
      ValueError: naming the argument and its value.
    """
    if first_block_dilation not in FIRST_BLOCK_DILATIONS:
        raise ValueError(
            f"first_block_dilation must be one of {FIRST_BLOCK_DILATIONS}, got "
            f"{first_block_dilation!r}."
        )
    if multi_grid is None:
        return
    if (
        not isinstance(multi_grid, tuple)
        or len(multi_grid) != stage_sizes[-1]
        or not all(isinstance(m, int) and m >= 1 for m in multi_grid)
    ):
        raise ValueError(
            f"multi_grid must be a tuple of {stage_sizes[-1]} positive ints (one per block of "
            f"the last stage), got {multi_grid!r}."
        )


def bottleneck_stages(
    x: jax.Array,
    train: bool,
    *,
    stage_sizes: Sequence[int],
    width: int,
    plan: Sequence[tuple[int, int]],
    first_block_dilation: str = "previous",
    multi_grid: Sequence[int] | None = None,
    **stage_settings,
) -> tuple[jax.Array, ...]:
    """Runs every stage (:func:`bottleneck_stage`); call it inside ``nn.compact``.

    Stage ``s`` has bottleneck width ``width * 2**s`` and ``(strides, dilation) =
    plan[s]``; the first block of a dilated stage keeps the previous stage's dilation.

    Args:
      x: ``[B, H, W, Cin]``.
      train: batch statistics instead of running averages.
      stage_sizes: blocks per stage.
      width: the first stage's bottleneck width.
      plan: ``(strides, dilation)`` per stage (:func:`stage_dilations`).
      first_block_dilation: ``"previous"`` (torchvision's rule: the first block of a
        stage keeps the previous stage's dilation) or ``"stage"`` (it has its own
        stage's, as segmentation_models_pytorch and the multi-grid unit dilate).
      multi_grid: multipliers of the last stage's dilation, one per block, first
        included (DeepLab v3's multi-grid, ``(1, 2, 4)``; "Rethinking Atrous
        Convolution for Semantic Image Segmentation", arXiv:1706.05587); ``None`` for
        none.
      **stage_settings: the other arguments of :func:`bottleneck_stage` (``dtype``,
        ``widths``, ``scan_blocks``, ...).

    Returns:
      The output of every stage, in order.

    Raises:
      ValueError: for an unknown ``first_block_dilation``, or a ``multi_grid`` that does
        not have one positive entry per block of the last stage.
    """
    check_dilation_settings(first_block_dilation, multi_grid, stage_sizes)
    previous_dilation = 1
    outputs = []
    last = len(stage_sizes) - 1
    for stage, (num_blocks, (strides, dilation)) in enumerate(zip(stage_sizes, plan, strict=True)):
        first_dilation = previous_dilation if first_block_dilation == "previous" else dilation
        later_dilations = None
        if multi_grid is not None and stage == last:
            first_dilation = dilation * multi_grid[0]
            later_dilations = tuple(dilation * m for m in multi_grid[1:])
        x = bottleneck_stage(
            x,
            train,
            stage=stage,
            num_blocks=num_blocks,
            features=width * 2**stage,
            strides=strides,
            dilation=dilation,
            first_dilation=first_dilation,
            later_dilations=later_dilations,
            **stage_settings,
        )
        previous_dilation = dilation
        outputs.append(x)
    return tuple(outputs)


class ResNet(nn.Module):
    """Dilated bottleneck ResNet returning low-level (stride 4) and high-level features.

    Attributes:
      stage_sizes: blocks per stage, e.g. ``(3, 4, 23, 3)`` for ResNet-101.
      width: stem channels and first bottleneck width (64 for the standard models).
      output_stride: 8, 16 or 32, the input-to-high-level stride.
      dtype: computation dtype.
      widths: output channels of single layers, ``(("conv1", 48),
        ("layer2_block0/conv2", 100), ...)`` (paths :meth:`prunable_layers` lists);
        ``None`` for the standard widths.
      downsample_filter: module factory applied to the input of every strided
        bottleneck (see :class:`Bottleneck`); ``None`` for none.
      scan_blocks: run the blocks after the first of each stage under ``nn.scan``, as
        one module ``layer{s}_blocks`` with stacked variables (module docstring); a
        model with ``widths`` runs unrolled whatever this says (:attr:`stacks_blocks`).
      remat_blocks: recompute the scanned blocks in the backward pass
        (``jax.checkpoint``) instead of storing their activations: less memory, more
        compute.
      first_block_dilation: ``"previous"`` (torchvision: the first block of a dilated
        stage keeps the previous stage's dilation) or ``"stage"``
        (segmentation_models_pytorch: every block of the stage has its dilation).
      multi_grid: per-block multipliers of the last stage's dilation, ``(1, 2, 4)`` in
        DeepLab v3's multi-grid (arXiv:1706.05587); ``None`` for none. Blocks of
        different dilations cannot be stacked: a multi-grid last stage runs unrolled
        (``layer4_block1``, ``layer4_block2``, ...).

    Example:
      Shapes only: ``jax.eval_shape`` traces ``init`` and ``apply`` without running them
      (compiling even the tiny model takes seconds on a CPU).

      >>> model = create_resnet("resnet_tiny", output_stride=16)
      >>> x = jnp.zeros((1, 33, 33, 3))
      >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
      >>> low, high = jax.eval_shape(model.apply, variables, x)  # strides 4 and 16
      >>> low.shape, high.shape
      ((1, 9, 9, 16), (1, 3, 3, 128))
    """

    stage_sizes: Sequence[int]
    width: int = 64
    output_stride: int = 16
    dtype: jnp.dtype = jnp.float32
    widths: Widths | None = None
    downsample_filter: Callable[..., nn.Module] | None = None
    scan_blocks: bool = True
    remat_blocks: bool = False
    first_block_dilation: str = "previous"
    multi_grid: tuple[int, ...] | None = None

    @property
    def stacks_blocks(self) -> bool:
        """Whether the stages run their later blocks under ``nn.scan`` (not with ``widths``)."""
        return self.scan_blocks and not self.widths

    def prunable_layers(self) -> tuple[str, ...]:
        """Paths of the convolutions whose width ``widths`` may set, in program order."""
        paths = ["conv1"]
        for stage, num_blocks in enumerate(self.stage_sizes):
            for block in range(num_blocks):
                paths += [f"layer{stage + 1}_block{block}/conv{i}" for i in (1, 2)]
        return tuple(paths)

    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Runs the backbone.

        Args:
          x: images ``[B, H, W, 3]``.
          train: batch statistics (and their update) instead of running averages.

        Returns:
          ``(low_level, high_level)``: the first stage's output ``[B, H4, W4, 4 * width]``
          with ``H4 = ceil(ceil(H / 2) / 2)`` (129 at 513), and the last stage's output
          ``[B, Hs, Ws, 32 * width]`` at the output stride (33 at 513 for stride 16).
        """
        stages = self.stages(x, train)
        return stages[0], stages[3]

    @nn.compact
    def stages(
        self, x: jax.Array, train: bool = False
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Runs the backbone and returns the output of every stage.

        Args:
          x: images ``[B, H, W, 3]``.
          train: batch statistics (and their update) instead of running averages.

        Returns:
          The four stages' outputs ``[B, Hk, Wk, 4 * width * 2**k]``, ``k = 0..3``, at
          strides 4, 8, 16, 32 for output stride 32 (4, 8, 16, 16 for 16; 4, 8, 8, 8
          for 8): 129, 65, 33, 33 at 513 input and output stride 16.
        """
        chex.assert_rank(x, 4)
        if len(self.stage_sizes) != 4:
            raise ValueError(f"stage_sizes must have four stages, got {self.stage_sizes!r}.")
        plan = stage_dilations(self.output_stride)
        widths = _check_widths(self.widths, self.prunable_layers(), "ResNet")
        x = nn.Conv(
            widths.get("conv1", self.width),
            (7, 7),
            strides=2,
            padding=((3, 3), (3, 3)),
            use_bias=False,
            dtype=self.dtype,
            name="conv1",
        )(x)
        x = nn.relu(_batch_norm(train, "bn1", self.dtype)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        first, second, third, fourth = bottleneck_stages(
            x,
            train,
            stage_sizes=self.stage_sizes,
            width=self.width,
            plan=plan,
            dtype=self.dtype,
            widths=widths,
            downsample_filter=self.downsample_filter,
            scan_blocks=self.stacks_blocks,
            remat_blocks=self.remat_blocks,
            first_block_dilation=self.first_block_dilation,
            multi_grid=self.multi_grid,
        )
        return first, second, third, fourth


def create_resnet(
    name: str,
    *,
    output_stride: int = 16,
    dtype: jnp.dtype = jnp.float32,
    widths: Widths | None = None,
    downsample_filter: Callable[..., nn.Module] | None = None,
    scan_blocks: bool = True,
    remat_blocks: bool = False,
    first_block_dilation: str = "previous",
    multi_grid: tuple[int, ...] | None = None,
) -> ResNet:
    """A ResNet by name: ``"resnet50"``, ``"resnet101"`` or ``"resnet_tiny"``.

    Args:
      name: the configuration in :data:`RESNET_CONFIGS`.
      output_stride: 8, 16 or 32.
      dtype: computation dtype.
      widths: per-layer output channels (see :class:`ResNet`); ``None`` for the standard.
      downsample_filter: module factory before every strided bottleneck (see
        :class:`ResNet`); ``None`` for none.
      scan_blocks: stack the identical blocks of each stage under ``nn.scan`` (see
        :class:`ResNet`; ignored with ``widths``).
      remat_blocks: recompute the scanned blocks in the backward pass.
      first_block_dilation: ``"previous"`` or ``"stage"`` (see :class:`ResNet`).
      multi_grid: the last stage's per-block dilation multipliers, or ``None``.

    Raises:
      ValueError: for an unknown name, output stride or dilation setting.
    """
    if name not in RESNET_CONFIGS:
        raise ValueError(f"backbone must be one of {tuple(RESNET_CONFIGS)}, got {name!r}.")
    stage_dilations(output_stride)
    config = RESNET_CONFIGS[name]
    check_dilation_settings(first_block_dilation, multi_grid, config.stage_sizes)
    return ResNet(
        config.stage_sizes,
        config.width,
        output_stride=output_stride,
        dtype=dtype,
        widths=widths,
        downsample_filter=downsample_filter,
        scan_blocks=scan_blocks,
        remat_blocks=remat_blocks,
        first_block_dilation=first_block_dilation,
        multi_grid=multi_grid,
    )
