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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

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
    downsample_filter: Callable[..., nn.Module] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """``[B, H, W, Cin] -> [B, ceil(H / strides), ceil(W / strides), 4 * features]``."""
        if self.downsample_filter is not None and self.strides > 1:
            # Before both strided paths, as the de-aliasing filter of Chen et al. (2024).
            x = self.downsample_filter(
                stride=self.strides, dtype=self.dtype, name="downsample_filter"
            )(x)
        conv = lambda f, k, **kw: nn.Conv(f, k, use_bias=False, dtype=self.dtype, **kw)
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
        previous_dilation = 1
        outputs = []
        for stage, (num_blocks, (strides, dilation)) in enumerate(
            zip(self.stage_sizes, plan, strict=True)
        ):
            for block in range(num_blocks):
                name = f"layer{stage + 1}_block{block}"
                x = Bottleneck(
                    self.width * 2**stage,
                    strides=strides if block == 0 else 1,
                    # The first block of a dilated stage keeps the previous dilation.
                    dilation=previous_dilation if block == 0 else dilation,
                    dtype=self.dtype,
                    conv1_features=widths.get(f"{name}/conv1"),
                    conv2_features=widths.get(f"{name}/conv2"),
                    downsample_filter=self.downsample_filter,
                    name=name,
                )(x, train)
            previous_dilation = dilation
            outputs.append(x)
        return tuple(outputs)


def create_resnet(
    name: str,
    *,
    output_stride: int = 16,
    dtype: jnp.dtype = jnp.float32,
    widths: Widths | None = None,
    downsample_filter: Callable[..., nn.Module] | None = None,
) -> ResNet:
    """A ResNet by name: ``"resnet50"``, ``"resnet101"`` or ``"resnet_tiny"``.

    Args:
      name: the configuration in :data:`RESNET_CONFIGS`.
      output_stride: 8, 16 or 32.
      dtype: computation dtype.
      widths: per-layer output channels (see :class:`ResNet`); ``None`` for the standard.
      downsample_filter: module factory before every strided bottleneck (see
        :class:`ResNet`); ``None`` for none.

    Raises:
      ValueError: for an unknown name or output stride.
    """
    if name not in RESNET_CONFIGS:
        raise ValueError(f"backbone must be one of {tuple(RESNET_CONFIGS)}, got {name!r}.")
    stage_dilations(output_stride)
    config = RESNET_CONFIGS[name]
    return ResNet(
        config.stage_sizes,
        config.width,
        output_stride=output_stride,
        dtype=dtype,
        widths=widths,
        downsample_filter=downsample_filter,
    )
