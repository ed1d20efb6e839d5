"""DeepLab v3+ (Chen et al. 2018) with feature truncation in the decoder (paper Fig. 3).

Encoder: a dilated ResNet (:mod:`spectral_jax.models.resnet`) and ASPP: a 1x1
convolution, three 3x3 atrous convolutions (rates 6, 12, 18 at output stride 16,
doubled at 8, halved at 32) and image pooling, each with ``aspp_channels`` outputs,
BatchNorm and ReLU, concatenated and projected by a 1x1 convolution (BatchNorm, ReLU,
dropout).

Decoder, run on a static ``feature_size x feature_size`` grid (the paper's feature
truncation, Sec. 3.2): the ASPP output and the backbone's low-level features (stride 4,
before the 48-channel projection, so that the projection also runs on the small grid)
are both resampled to ``feature_size``; the low-level features are projected by a 1x1
convolution to ``low_level_channels`` (48); the two are concatenated (the "decoder
input"), passed through two 3x3 convolutions with ``decoder_channels`` (256) outputs
and a 1x1 classifier, and the logits are up-sampled bilinearly to the input size.
``feature_size=None`` runs the decoder on the low-level grid (129 at 513 input), the
untruncated model. The resampling method is one of
:data:`spectral_jax.truncation.RESAMPLE_METHODS`; the final up-sampling of the logits
is always bilinear, as in the paper.

Widths: ``widths`` overrides the output channels of single layers by their path in the
parameter tree (``"encoder/layer1_block0/conv1"``, ``"aspp/branch1_conv"``,
``"decoder/fuse1_conv"``, ...), which is how :func:`spectral_jax.models.pruning.hard_prune`
builds a filter-pruned model; ``None`` gives the standard widths.

Intermediates: :meth:`DeepLabV3Plus.encode` and :meth:`DeepLabV3Plus.decode` split the
model at the ASPP output, so that a loss can be differentiated with respect to it;
:meth:`DeepLabV3Plus.intermediates` returns every named stage in one pass. Call them
with ``model.apply(variables, x, method=...)``.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from spectral_jax.models.resnet import (
    RESNET_CONFIGS,
    ResNet,
    Widths,
    _batch_norm,
    _check_widths,
    _widths_under,
    create_resnet,
    stage_dilations,
)
from spectral_jax.truncation import RESAMPLE_METHODS, Resample, resize_features


def aspp_rates(output_stride: int) -> tuple[int, int, int]:
    """ASPP atrous rates: (6, 12, 18) at output stride 16, doubled at 8, halved at 32."""
    stage_dilations(output_stride)
    scale = 16 / output_stride
    return tuple(int(r * scale) for r in (6, 12, 18))


def check_model_settings(backbone: str, resample: str, feature_size: int | None) -> None:
    """Validates the settings shared by the segmentation models (DeepLab v3+, DAN, DCT).

    Raises:
      ValueError: for an unknown backbone or resampling method, or a non-positive
        ``feature_size``.
    """
    if backbone not in RESNET_CONFIGS:
        raise ValueError(f"backbone must be one of {tuple(RESNET_CONFIGS)}, got {backbone!r}.")
    if resample not in RESAMPLE_METHODS:
        raise ValueError(f"resample must be one of {RESAMPLE_METHODS}, got {resample!r}.")
    if feature_size is not None and feature_size < 1:
        raise ValueError(f"feature_size must be positive or None, got {feature_size}.")


def decoder_grid(
    feature_size: int | None, low_level_size: tuple[int, int], stride: int = 4
) -> tuple[int, int]:
    """The static decoder grid: ``feature_size`` squared, or the low-level grid if None.

    Args:
      feature_size: the truncated grid ``F`` (``2 nu_max + 1``), or None.
      low_level_size: ``(H_l, W_l)`` of the low-level features, the untruncated grid.
      stride: their stride, for the error message.

    Raises:
      ValueError: when ``feature_size`` exceeds the untruncated grid.
    """
    if feature_size is None:
        return tuple(low_level_size)
    if feature_size > min(low_level_size):
        raise ValueError(
            f"feature_size={feature_size} exceeds the untruncated decoder grid "
            f"{tuple(low_level_size)} (the stride-{stride} low-level features of this input)."
        )
    return feature_size, feature_size


def _check_widths_prefixes(widths: Widths | None, prefixes: tuple[str, ...], owner: str) -> None:
    """Checks that every path of ``widths`` starts with one of the submodules ``prefixes``.

    Raises:
      ValueError: naming ``widths`` for a malformed entry or a path outside ``prefixes``.
    """
    if widths is None:
        return
    if not isinstance(widths, tuple) or not all(
        isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) for item in widths
    ):
        raise ValueError(
            f"widths of {owner} must be a tuple of (path, channels) pairs, got {widths!r}."
        )
    for path, _ in widths:
        if path.split("/", 1)[0] not in prefixes or "/" not in path:
            raise ValueError(
                f"widths of {owner}: {path!r} is not below one of the submodules {prefixes}."
            )


def _conv_bn_relu(x, features, kernel, train, name, dilation=1, dtype=jnp.float32):
    pad = dilation * (kernel - 1) // 2
    x = nn.Conv(
        features,
        (kernel, kernel),
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=dilation,
        use_bias=False,
        dtype=dtype,
        name=f"{name}_conv",
    )(x)
    return nn.relu(_batch_norm(train, f"{name}_bn", dtype)(x))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: ``[B, h, w, Cin] -> [B, h, w, features]``.

    Attributes:
      rates: the three atrous rates of the 3x3 branches.
      features: channels of every branch and of the projection (256).
      dropout_rate: dropout after the projection in training (0.5 in torchvision).
      dtype: computation dtype.
      widths: output channels of single layers (paths in :attr:`PRUNABLE_LAYERS`);
        ``None`` for ``features`` everywhere.
    """

    PRUNABLE_LAYERS = (
        "branch0_conv",
        "branch1_conv",
        "branch2_conv",
        "branch3_conv",
        "pool_conv",
        "project_conv",
    )

    rates: tuple[int, int, int] = (6, 12, 18)
    features: int = 256
    dropout_rate: float = 0.5
    dtype: jnp.dtype = jnp.float32
    widths: Widths | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        widths = _check_widths(self.widths, self.PRUNABLE_LAYERS, "ASPP")
        width = lambda name: widths.get(f"{name}_conv", self.features)
        branches = [_conv_bn_relu(x, width("branch0"), 1, train, "branch0", dtype=self.dtype)]
        for i, rate in enumerate(self.rates):
            name = f"branch{i + 1}"
            branches.append(
                _conv_bn_relu(x, width(name), 3, train, name, dilation=rate, dtype=self.dtype)
            )
        pooled = jnp.mean(x, axis=(1, 2), keepdims=True)  # [B, 1, 1, Cin]
        pooled = _conv_bn_relu(pooled, width("pool"), 1, train, "pool", dtype=self.dtype)
        branches.append(jnp.broadcast_to(pooled, (*x.shape[:3], pooled.shape[-1])))
        y = jnp.concatenate(branches, axis=-1)  # [B, h, w, 5 * features]
        y = _conv_bn_relu(y, width("project"), 1, train, "project", dtype=self.dtype)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(y)


class Decoder(nn.Module):
    """DeepLab v3+ decoder on a static grid; returns logits at that grid.

    Attributes:
      num_classes: output classes ``C``.
      resample: how both inputs reach the grid (``"bilinear"``, ``"area"``, ``"spectral"``).
      low_level_channels: the low-level projection's outputs (48).
      features: channels of the two 3x3 convolutions (256).
      dtype: computation dtype.
      widths: output channels of single layers (paths in :attr:`PRUNABLE_LAYERS`);
        ``None`` for the standard widths.
    """

    PRUNABLE_LAYERS = ("low_level_conv", "fuse1_conv", "fuse2_conv")

    num_classes: int
    resample: Resample = "bilinear"
    low_level_channels: int = 48
    features: int = 256
    dtype: jnp.dtype = jnp.float32
    widths: Widths | None = None

    @nn.compact
    def __call__(
        self,
        aspp: jax.Array,
        low_level: jax.Array,
        size: tuple[int, int],
        train: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """``aspp [B, h, w, Ca]``, ``low_level [B, H4, W4, Cl]`` -> ``(decoder_input, logits)``.

        ``decoder_input`` is ``[B, Fh, Fw, Ca + low_level_channels]`` and ``logits``
        ``[B, Fh, Fw, C]``, with ``(Fh, Fw) = size`` (static).
        """
        widths = _check_widths(self.widths, self.PRUNABLE_LAYERS, "Decoder")
        low_level = resize_features(low_level, size, method=self.resample)
        low_level = _conv_bn_relu(
            low_level,
            widths.get("low_level_conv", self.low_level_channels),
            1,
            train,
            "low_level",
            dtype=self.dtype,
        )
        aspp = resize_features(aspp, size, method=self.resample)
        decoder_input = jnp.concatenate([aspp, low_level], axis=-1)  # [B, F, F, Ca + 48]
        features = lambda name: widths.get(f"{name}_conv", self.features)
        y = _conv_bn_relu(decoder_input, features("fuse1"), 3, train, "fuse1", dtype=self.dtype)
        y = _conv_bn_relu(y, features("fuse2"), 3, train, "fuse2", dtype=self.dtype)
        logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="classifier")(y)
        return decoder_input, logits


def create_aspp(model: nn.Module, widths: Widths | None = None) -> ASPP:
    """The ASPP of a segmentation model, from its shared settings.

    Args:
      model: a module with the fields ``output_stride``, ``aspp_channels``,
        ``dropout_rate`` and ``dtype`` (:class:`DeepLabV3Plus`, DAN, the DCT model).
      widths: the ASPP's own ``widths`` (paths below ``"aspp/"``); ``None`` for the
        standard widths.
    """
    return ASPP(
        aspp_rates(model.output_stride),
        model.aspp_channels,
        model.dropout_rate,
        dtype=model.dtype,
        widths=widths,
    )


def create_encoder_and_aspp(model: nn.Module) -> tuple[ResNet, ASPP]:
    """Validates a segmentation model's shared settings and builds its backbone and ASPP.

    Call it in ``setup`` and assign the two modules to ``self.encoder`` and
    ``self.aspp``, which names them (``"encoder"``, ``"aspp"``) in the parameter tree.

    Args:
      model: a module with the fields of :class:`DeepLabV3Plus` that configure the
        encoder (``backbone``, ``output_stride``, ``feature_size``, ``resample``,
        ``aspp_channels``, ``dropout_rate``, ``dtype``, ``widths``,
        ``downsample_filter``, ``scan_blocks``, ``remat_blocks``): :class:`DeepLabV3Plus`
        or DAN.

    Returns:
      ``(encoder, aspp)``: the dilated ResNet (:func:`create_resnet`) and the
      :class:`ASPP`, each with its part of ``model.widths``.

    Raises:
      ValueError: for widths outside ``encoder``, ``aspp`` and ``decoder`` (naming the
        model's class), and as :func:`check_model_settings`.
    """
    _check_widths_prefixes(model.widths, ("encoder", "aspp", "decoder"), type(model).__name__)
    check_model_settings(model.backbone, model.resample, model.feature_size)
    encoder = create_resnet(
        model.backbone,
        output_stride=model.output_stride,
        dtype=model.dtype,
        widths=_widths_under(model.widths, "encoder"),
        downsample_filter=model.downsample_filter,
        scan_blocks=model.scan_blocks,
        remat_blocks=model.remat_blocks,
    )
    return encoder, create_aspp(model, _widths_under(model.widths, "aspp"))


def upsample_logits(decoder_logits: jax.Array, image_size: tuple[int, int]) -> jax.Array:
    """Bilinear up-sampling of the decoder's logits to the image (always bilinear).

    Args:
      decoder_logits: ``[B, Fh, Fw, C]`` on the decoder grid.
      image_size: static ``(H, W)`` of the input images.

    Returns:
      ``[B, H, W, C]`` in the dtype of ``decoder_logits``.
    """
    batch, *_, num_classes = decoder_logits.shape
    height, width = image_size
    return jax.image.resize(
        decoder_logits,
        (batch, height, width, num_classes),
        method="linear",
        antialias=False,
    )


def decoder_outputs(
    decoder_input: jax.Array, decoder_logits: jax.Array, image_size: tuple[int, int]
) -> dict[str, jax.Array]:
    """The dict returned by the models' ``decode``: the decoder's input and logits on the
    grid ``[B, F, F, Cd]``, ``[B, F, F, C]`` and the up-sampled ``"logits" [B, H, W, C]``.

    The logits leave the model in float32 at least (float64 stays): a bfloat16 model's
    classifier rounds them once, and the up-sampling, the loss and every spectral
    statistic of them run in float32. ``decoder_input`` keeps the computation dtype.
    """
    decoder_logits = decoder_logits.astype(
        jnp.promote_types(decoder_logits.dtype, jnp.float32)
    )  # [B, F, F, C]
    return {
        "decoder_input": decoder_input,
        "decoder_logits": decoder_logits,
        "logits": upsample_logits(decoder_logits, image_size),
    }


class DeepLabV3Plus(nn.Module):
    """DeepLab v3+ with a static decoder grid (feature truncation, paper Sec. 3.2).

    Attributes:
      num_classes: output classes ``C`` (21 for PASCAL VOC).
      backbone: ``"resnet101"``, ``"resnet50"`` or ``"resnet_tiny"``.
      output_stride: 8, 16 or 32.
      feature_size: decoder grid ``F``; ``None`` for the low-level grid (untruncated,
        129 at 513 input); 65 and 33 are the paper's truncations (``nu_max`` = 32, 16,
        ``F = 2 nu_max + 1``).
      resample: ``"bilinear"``, ``"area"`` or ``"spectral"``
        (:func:`spectral_jax.truncation.resize_features`).
      aspp_channels: ASPP channels (256).
      low_level_channels: low-level projection channels (48).
      decoder_channels: channels of the decoder's 3x3 convolutions (256).
      dropout_rate: ASPP dropout in training; with a positive rate, ``train=True``
        needs ``rngs={"dropout": key}``.
      dtype: computation dtype of the convolutions and BatchNorm outputs (``float32``,
        or ``bfloat16`` for mixed precision); parameters and BatchNorm statistics stay
        float32 and the logits are returned in float32 (:func:`decoder_outputs`).
      widths: output channels of single layers, ``((path, channels), ...)`` with paths
        such as ``"encoder/layer1_block0/conv1"``, ``"aspp/project_conv"``,
        ``"decoder/fuse1_conv"`` (a filter-pruned model); ``None`` for the standard.
      downsample_filter: module factory applied to the input of every strided
        bottleneck of the backbone (:class:`spectral_jax.models.DeAliasingFilter`,
        ``functools.partial(FreqMix, reduction=16)``); ``None`` for none.
      scan_blocks: run the identical blocks of each backbone stage under ``nn.scan``,
        with stacked variables (``encoder/layer3_blocks``; see
        :mod:`spectral_jax.models.resnet`): compile time that does not grow with depth.
        A model with encoder ``widths`` (hard-pruned) runs unrolled regardless.
      remat_blocks: recompute the scanned blocks in the backward pass
        (``jax.checkpoint``) instead of storing their activations: less memory, more
        compute.

    Example:
      Shapes only: ``jax.eval_shape`` traces ``init`` and ``apply`` without running them
      (compiling even the tiny model takes seconds on a CPU).

      >>> model = DeepLabV3Plus(num_classes=3, backbone="resnet_tiny", feature_size=5)
      >>> x = jnp.zeros((2, 33, 33, 3))
      >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
      >>> jax.eval_shape(model.apply, variables, x).shape  # [B, H, W, num_classes]
      (2, 33, 33, 3)
    """

    num_classes: int = 21
    backbone: str = "resnet101"
    output_stride: int = 16
    feature_size: int | None = None
    resample: Resample = "bilinear"
    aspp_channels: int = 256
    low_level_channels: int = 48
    decoder_channels: int = 256
    dropout_rate: float = 0.5
    dtype: jnp.dtype = jnp.float32
    widths: Widths | None = None
    downsample_filter: Callable[..., nn.Module] | None = None
    scan_blocks: bool = True
    remat_blocks: bool = False

    def setup(self):
        self.encoder, self.aspp = create_encoder_and_aspp(self)
        self.decoder = Decoder(
            self.num_classes,
            self.resample,
            self.low_level_channels,
            self.decoder_channels,
            dtype=self.dtype,
            widths=_widths_under(self.widths, "decoder"),
        )

    def encode(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Backbone and ASPP.

        Args:
          x: images ``[B, H, W, 3]``.
          train: BatchNorm batch statistics and dropout.

        Returns:
          ``(aspp, low_level)``: ``[B, Hs, Ws, aspp_channels]`` at the output stride and
          ``[B, H4, W4, 4 * width]`` at stride 4 (33 and 129 at 513 input, stride 16).
        """
        if jnp.ndim(x) != 4:
            raise ValueError(f"x must have shape [B, H, W, 3], got {jnp.shape(x)}.")
        low_level, high_level = self.encoder(x, train)
        return self.aspp(high_level, train), low_level

    def decode(
        self,
        aspp: jax.Array,
        low_level: jax.Array,
        image_size: tuple[int, int],
        train: bool = False,
    ) -> dict[str, jax.Array]:
        """Decoder on the ``F x F`` grid and bilinear up-sampling to the image.

        ``F = feature_size``; with ``feature_size=None`` the decoder runs on the
        low-level grid ``H4 x W4`` instead.

        Args:
          aspp: ``[B, Hs, Ws, aspp_channels]`` from :meth:`encode`.
          low_level: ``[B, H4, W4, Cl]`` from :meth:`encode`.
          image_size: static ``(H, W)`` of the input images.
          train: BatchNorm batch statistics.

        Returns:
          ``{"decoder_input": [B, F, F, aspp_channels + low_level_channels],
          "decoder_logits": [B, F, F, C], "logits": [B, H, W, C]}``.
        """
        size = decoder_grid(self.feature_size, low_level.shape[1:3])
        return decoder_outputs(*self.decoder(aspp, low_level, size, train), image_size)

    def intermediates(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """One forward pass returning ``"aspp"``, ``"low_level"`` and :meth:`decode`'s dict."""
        aspp, low_level = self.encode(x, train)
        outputs = self.decode(aspp, low_level, x.shape[1:3], train)
        return {"aspp": aspp, "low_level": low_level, **outputs}

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits ``[B, H, W, C]`` for images ``x [B, H, W, 3]``."""
        return self.intermediates(x, train)["logits"]
