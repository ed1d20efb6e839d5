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
from typing import cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
    return int(6 * scale), int(12 * scale), int(18 * scale)


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
    feature_size: int | None, low_level_size: tuple[int, ...], stride: int = 4
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
        height, width = low_level_size
        return height, width
    if feature_size > min(low_level_size):
        raise ValueError(
            f"feature_size={feature_size} exceeds the untruncated decoder grid "
            f"{tuple(low_level_size)} (the stride-{stride} low-level features of this input)."
        )
    return feature_size, feature_size


HEADS: tuple[str, ...] = ("deeplabv3plus", "deeplabv3", "fcn")


def _align_corners_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``[size_out, size_in]`` linear interpolation with the corner samples aligned."""
    source: np.ndarray
    if size_out == 1:
        source = np.zeros(1)
    else:
        source = np.arange(size_out) * ((size_in - 1) / (size_out - 1))
    low = np.clip(np.floor(source).astype(int), 0, size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    weight = source - low
    matrix = np.zeros((size_out, size_in))
    np.add.at(matrix, (np.arange(size_out), low), 1.0 - weight)
    np.add.at(matrix, (np.arange(size_out), high), weight)
    return matrix


def resize_bilinear(x: jax.Array, size: tuple[int, ...], *, align_corners: bool) -> jax.Array:
    r"""Bilinear resizing ``[B, H, W, C] -> [B, h, w, C]`` in either of PyTorch's conventions.

    ``align_corners=False`` samples output pixel ``i`` at ``(i + 1/2) H / h - 1/2``
    (``jax.image.resize``, no anti-aliasing); ``align_corners=True`` at
    ``i (H - 1) / (h - 1)``, so that the corner pixels of both grids coincide (PyTorch's
    ``F.interpolate(..., align_corners=True)``, which the reference DeepLab v3+ and
    segmentation_models_pytorch use):

    .. math::

       y = M_h\, x\, M_w^{\top}, \qquad M[i, \lfloor s_i \rfloor] = 1 - (s_i -
       \lfloor s_i \rfloor), \quad M[i, \lfloor s_i \rfloor + 1] = s_i - \lfloor s_i
       \rfloor, \quad s_i = i \frac{H - 1}{h - 1}.

    Args:
      x: maps ``[B, H, W, C]``.
      size: static ``(h, w)``.
      align_corners: the convention.

    Returns:
      ``[B, h, w, C]`` in the dtype of ``x``.
    """
    batch, height, width, channels = x.shape
    h, w = size
    if (h, w) == (height, width):
        return x
    if not align_corners:
        return jax.image.resize(x, (batch, h, w, channels), method="linear", antialias=False)
    rows = jnp.asarray(_align_corners_matrix(height, h), x.dtype)  # [h, H]
    columns = jnp.asarray(_align_corners_matrix(width, w), x.dtype)  # [w, W]
    precision = jax.lax.Precision.HIGHEST
    y = jnp.einsum("oh,bhwc->bowc", rows, x, precision=precision)  # [B, h, W, C]
    return jnp.einsum("pw,bowc->bopc", columns, y, precision=precision)  # [B, h, w, C]


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


def _conv_bn_relu(x, features, kernel, train, name, dilation=1, dtype=jnp.float32, separable=False):
    pad = dilation * (kernel - 1) // 2
    if separable and kernel > 1:
        # Depthwise-separable: a per-channel k x k convolution, then the 1x1 `_conv`.
        x = nn.Conv(
            x.shape[-1],
            (kernel, kernel),
            padding=((pad, pad), (pad, pad)),
            kernel_dilation=dilation,
            feature_group_count=x.shape[-1],
            use_bias=False,
            dtype=dtype,
            name=f"{name}_depthwise",
        )(x)
        kernel, pad, dilation = 1, 0, 1
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
      separable: depthwise-separable atrous branches (a depthwise 3x3
        ``branch{i}_depthwise`` before the 1x1 ``branch{i}_conv``), as in DeepLab v3+'s
        Xception variant ("Encoder-Decoder with Atrous Separable Convolution for
        Semantic Image Segmentation", arXiv:1802.02611).
      output_conv: a 3x3 convolution, BatchNorm and ReLU (``output_conv``,
        ``output_bn``) after the projection, as segmentation_models_pytorch's DeepLab v3+.
      separable_output_conv: that convolution depthwise-separable (``output_depthwise``).
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
    separable: bool = False
    output_conv: bool = False
    separable_output_conv: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        widths = _check_widths(self.widths, self.PRUNABLE_LAYERS, "ASPP")
        width = lambda name: widths.get(f"{name}_conv", self.features)
        branches = [_conv_bn_relu(x, width("branch0"), 1, train, "branch0", dtype=self.dtype)]
        for i, rate in enumerate(self.rates):
            name = f"branch{i + 1}"
            branches.append(
                _conv_bn_relu(
                    x,
                    width(name),
                    3,
                    train,
                    name,
                    dilation=rate,
                    dtype=self.dtype,
                    separable=self.separable,
                )
            )
        pooled = jnp.mean(x, axis=(1, 2), keepdims=True)  # [B, 1, 1, Cin]
        pooled = _conv_bn_relu(pooled, width("pool"), 1, train, "pool", dtype=self.dtype)
        branches.append(jnp.broadcast_to(pooled, (*x.shape[:3], pooled.shape[-1])))
        y = jnp.concatenate(branches, axis=-1)  # [B, h, w, 5 * features]
        y = _conv_bn_relu(y, width("project"), 1, train, "project", dtype=self.dtype)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        if self.output_conv:
            y = _conv_bn_relu(
                y,
                self.features,
                3,
                train,
                "output",
                dtype=self.dtype,
                separable=self.separable_output_conv,
            )
        return y


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
      num_convs: 3x3 convolutions after the concatenation (2; 1 in
        segmentation_models_pytorch), ``fuse1``, ``fuse2``, ...
      separable: those convolutions depthwise-separable (``fuse{i}_depthwise``).
      align_corners: bilinear resampling with aligned corners
        (:func:`resize_bilinear`); only with ``resample="bilinear"``.
    """

    PRUNABLE_LAYERS = ("low_level_conv", "fuse1_conv", "fuse2_conv")

    num_classes: int
    resample: Resample = "bilinear"
    low_level_channels: int = 48
    features: int = 256
    dtype: jnp.dtype = jnp.float32
    widths: Widths | None = None
    num_convs: int = 2
    separable: bool = False
    align_corners: bool = False

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
        resize = lambda x: _resize(x, size, self.resample, self.align_corners)
        low_level = resize(low_level)
        low_level = _conv_bn_relu(
            low_level,
            widths.get("low_level_conv", self.low_level_channels),
            1,
            train,
            "low_level",
            dtype=self.dtype,
        )
        aspp = resize(aspp)
        decoder_input = jnp.concatenate([aspp, low_level], axis=-1)  # [B, F, F, Ca + 48]
        features = lambda name: widths.get(f"{name}_conv", self.features)
        y = decoder_input
        for i in range(1, self.num_convs + 1):
            y = _conv_bn_relu(
                y,
                features(f"fuse{i}"),
                3,
                train,
                f"fuse{i}",
                dtype=self.dtype,
                separable=self.separable,
            )
        logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="classifier")(y)
        return decoder_input, logits


def _resize(x: jax.Array, size, resample: Resample, align_corners: bool) -> jax.Array:
    if align_corners and resample == "bilinear":
        return resize_bilinear(x, tuple(size), align_corners=True)
    return resize_features(x, size, method=resample)


class ConvHead(nn.Module):
    """A 3x3 convolution, BatchNorm, ReLU, dropout and a 1x1 classifier on a static grid.

    DeepLab v3's head after the ASPP (torchvision's ``DeepLabHead`` past its ASPP), and
    the FCN head ("Fully Convolutional Networks for Semantic Segmentation",
    arXiv:1411.4038, as torchvision's ``FCNHead`` builds it: ``Cin / 4`` hidden
    channels and dropout 0.1), also the auxiliary head on the third stage.

    Attributes:
      num_classes: output classes ``C``.
      features: channels of the 3x3 convolution ``hidden_conv``.
      dropout_rate: dropout before the classifier in training.
      resample: how the input reaches the grid.
      align_corners: bilinear resampling with aligned corners.
      dtype: computation dtype.
      widths: ``(("hidden_conv", channels),)`` for a pruned head; ``None`` for
        ``features``.
    """

    PRUNABLE_LAYERS = ("hidden_conv",)

    num_classes: int
    features: int
    dropout_rate: float = 0.0
    resample: Resample = "bilinear"
    align_corners: bool = False
    dtype: jnp.dtype = jnp.float32
    widths: Widths | None = None

    @nn.compact
    def __call__(
        self, x: jax.Array, size: tuple[int, int], train: bool = False
    ) -> tuple[jax.Array, jax.Array]:
        """``x [B, h, w, Cin]`` -> ``(head_input [B, Fh, Fw, Cin], logits [B, Fh, Fw, C])``."""
        widths = _check_widths(self.widths, self.PRUNABLE_LAYERS, "ConvHead")
        head_input = _resize(x, size, self.resample, self.align_corners)
        features = widths.get("hidden_conv", self.features)
        y = _conv_bn_relu(head_input, features, 3, train, "hidden", dtype=self.dtype)
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="classifier")(y)
        return head_input, logits


def create_aspp(model: nn.Module, widths: Widths | None = None) -> ASPP:
    """The ASPP of a segmentation model, from its shared settings.

    Args:
      model: a module with the fields ``output_stride``, ``aspp_channels``,
        ``dropout_rate`` and ``dtype`` (:class:`DeepLabV3Plus`, DAN, the DCT model).
      widths: the ASPP's own ``widths`` (paths below ``"aspp/"``); ``None`` for the
        standard widths.
    """
    rates = getattr(model, "atrous_rates", None) or aspp_rates(model.output_stride)
    return ASPP(
        tuple(rates),
        model.aspp_channels,
        model.dropout_rate,
        dtype=model.dtype,
        widths=widths,
        separable=getattr(model, "separable_aspp", False),
        output_conv=getattr(model, "aspp_output_conv", False),
        separable_output_conv=getattr(model, "separable_decoder", False),
    )


def create_encoder_and_aspp(model: nn.Module) -> tuple[ResNet, ASPP]:
    """Validates a segmentation model's shared settings and builds its backbone and ASPP.

    Call it in ``setup`` and assign the two modules to ``self.encoder`` and
    ``self.aspp``, which names them (``"encoder"``, ``"aspp"``) in the parameter tree.

    Args:
      model: a :class:`SegmentationModel` (:class:`DeepLabV3Plus` or DAN), or a module
        with its fields that configure the encoder (``backbone``, ``output_stride``,
        ``feature_size``, ``resample``, ``aspp_channels``, ``dropout_rate``, ``dtype``,
        ``widths``, ``downsample_filter``, ``scan_blocks``, ``remat_blocks``).

    Returns:
      ``(encoder, aspp)``: the dilated ResNet (:func:`create_resnet`) and the
      :class:`ASPP`, each with its part of ``model.widths``.

    Raises:
      ValueError: for widths outside ``encoder``, ``aspp`` and ``decoder`` (naming the
        model's class), and as :func:`check_model_settings`.
    """
    _check_widths_prefixes(
        model.widths, ("encoder", "aspp", "decoder", "aux_decoder"), type(model).__name__
    )
    check_model_settings(model.backbone, model.resample, model.feature_size)
    encoder = create_resnet(
        model.backbone,
        output_stride=model.output_stride,
        dtype=model.dtype,
        widths=_widths_under(model.widths, "encoder"),
        downsample_filter=model.downsample_filter,
        scan_blocks=model.scan_blocks,
        remat_blocks=model.remat_blocks,
        first_block_dilation=getattr(model, "first_block_dilation", "previous"),
        multi_grid=getattr(model, "multi_grid", None),
    )
    return encoder, create_aspp(model, _widths_under(model.widths, "aspp"))


def upsample_logits(
    decoder_logits: jax.Array, image_size: tuple[int, ...], *, align_corners: bool = False
) -> jax.Array:
    """Bilinear up-sampling of the decoder's logits to the image (always bilinear).

    Args:
      decoder_logits: ``[B, Fh, Fw, C]`` on the decoder grid.
      image_size: static ``(H, W)`` of the input images.
      align_corners: PyTorch's ``align_corners=True`` convention (:func:`resize_bilinear`).

    Returns:
      ``[B, H, W, C]`` in the dtype of ``decoder_logits``.
    """
    return resize_bilinear(decoder_logits, tuple(image_size), align_corners=align_corners)


def decoder_outputs(
    decoder_input: jax.Array,
    decoder_logits: jax.Array,
    image_size: tuple[int, ...],
    *,
    align_corners: bool = False,
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
        "logits": upsample_logits(decoder_logits, image_size, align_corners=align_corners),
    }


class SegmentationModel(nn.Module):
    """The settings that DeepLab v3+ and DAN share: classes, backbone, ASPP, decoder grid.

    The base of :class:`DeepLabV3Plus` and :class:`spectral_jax.models.DAN`, which add
    their decoders' settings; :func:`create_encoder_and_aspp` builds the backbone and
    the ASPP from these fields.

    Attributes:
      num_classes: output classes ``C``.
      backbone: ``"resnet101"``, ``"resnet50"`` or ``"resnet_tiny"``.
      output_stride: 8, 16 or 32.
      feature_size: decoder grid ``F``; ``None`` for the stride-4 grid (untruncated,
        129 at 513 input); 65 and 33 are the paper's truncations (``nu_max`` = 32, 16,
        ``F = 2 nu_max + 1``).
      resample: ``"bilinear"``, ``"area"`` or ``"spectral"``
        (:func:`spectral_jax.truncation.resize_features`).
      aspp_channels: ASPP channels (256).
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
    """

    num_classes: int = 21
    backbone: str = "resnet101"
    output_stride: int = 16
    feature_size: int | None = None
    resample: Resample = "bilinear"
    aspp_channels: int = 256
    dropout_rate: float = 0.5
    dtype: jnp.dtype = jnp.float32
    widths: Widths | None = None
    downsample_filter: Callable[..., nn.Module] | None = None
    scan_blocks: bool = True
    remat_blocks: bool = False

    def backbone_stages(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        """The four stage outputs of ``self.encoder`` for images ``x [B, H, W, 3]``.

        Raises:
          ValueError: for ``x`` of another rank.
        """
        if jnp.ndim(x) != 4:
            raise ValueError(f"x must have shape [B, H, W, 3], got {jnp.shape(x)}.")
        return self.encoder.stages(x, train)


class DeepLabV3Plus(SegmentationModel):
    """DeepLab v3+ with a static decoder grid (feature truncation, paper Sec. 3.2).

    The fields shared with DAN (classes, backbone, ASPP, decoder grid, dtype, widths,
    downsampling filter, stacked blocks) are those of :class:`SegmentationModel`
    (``num_classes=21`` for PASCAL VOC; ``feature_size=None``: the low-level grid).

    Attributes:
      low_level_channels: low-level projection channels (48).
      decoder_channels: channels of the decoder's 3x3 convolutions (256).
      head: what follows the backbone. ``"deeplabv3plus"``: ASPP and the decoder above.
        ``"deeplabv3"``: DeepLab v3 ("Rethinking Atrous Convolution for Semantic Image
        Segmentation", arXiv:1706.05587), the ASPP and a :class:`ConvHead` with
        ``decoder_channels`` on the ASPP grid, no low-level features. ``"fcn"``: a
        :class:`ConvHead` with ``Cin / 4`` channels on the backbone's last stage (FCN,
        arXiv:1411.4038), no ASPP. The head is the submodule ``decoder`` in every case;
        for ``"fcn"`` the ``"aspp"`` of :meth:`encode` is the backbone's last stage.
        ``feature_size`` truncates the grid of the head as of the decoder.
      atrous_rates: the ASPP's three rates; ``None`` for :func:`aspp_rates` of the
        output stride (segmentation_models_pytorch keeps ``(12, 24, 36)`` at 16).
      separable_aspp: depthwise-separable atrous ASPP branches (:class:`ASPP`).
      separable_decoder: depthwise-separable 3x3 convolutions in the decoder and in the
        ASPP's output convolution.
      aspp_output_conv: a 3x3 convolution, BatchNorm and ReLU after the ASPP's projection
        (segmentation_models_pytorch's DeepLab v3+).
      decoder_convs: the decoder's 3x3 convolutions after the concatenation (2; 1 in
        segmentation_models_pytorch).
      align_corners: every bilinear resampling (the decoder's and the final one) with
        PyTorch's ``align_corners=True`` (:func:`resize_bilinear`), as the reference
        DeepLab v3+ in PyTorch and segmentation_models_pytorch; ``False``: half-pixel
        centres, as torchvision.
      aux_head: torchvision's auxiliary FCN head on the third stage (``aux_decoder``,
        ``Cin / 4`` channels): its logits are the ``"aux_logits"`` of
        :meth:`intermediates`; ``__call__`` returns the main logits only.
      head_dropout_rate: dropout of the FCN and auxiliary heads in training (0.1).
      first_block_dilation: ``"previous"`` or ``"stage"`` (:class:`ResNet`).
      multi_grid: the last stage's per-block dilation multipliers, e.g. ``(1, 2, 4)``
        (:class:`ResNet`); ``None`` for none.

    Example:
      Shapes only: ``jax.eval_shape`` traces ``init`` and ``apply`` without running them
      (compiling even the tiny model takes seconds on a CPU).

      >>> model = DeepLabV3Plus(num_classes=3, backbone="resnet_tiny", feature_size=5)
      >>> x = jnp.zeros((2, 33, 33, 3))
      >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
      >>> jax.eval_shape(model.apply, variables, x).shape  # [B, H, W, num_classes]
      (2, 33, 33, 3)
    """

    low_level_channels: int = 48
    decoder_channels: int = 256
    head: str = "deeplabv3plus"
    atrous_rates: tuple[int, int, int] | None = None
    separable_aspp: bool = False
    separable_decoder: bool = False
    aspp_output_conv: bool = False
    decoder_convs: int = 2
    align_corners: bool = False
    aux_head: bool = False
    head_dropout_rate: float = 0.1
    first_block_dilation: str = "previous"
    multi_grid: tuple[int, ...] | None = None

    def setup(self):
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}.")
        if self.atrous_rates is not None and (
            not isinstance(self.atrous_rates, tuple) or len(self.atrous_rates) != 3
        ):
            raise ValueError(f"atrous_rates must be 3 ints or None, got {self.atrous_rates!r}.")
        if self.decoder_convs < 1:
            raise ValueError(f"decoder_convs must be positive, got {self.decoder_convs!r}.")
        self.encoder, self.aspp = create_encoder_and_aspp(self)
        width = RESNET_CONFIGS[self.backbone].width
        if self.head == "deeplabv3plus":
            self.decoder: Decoder | ConvHead = Decoder(
                self.num_classes,
                self.resample,
                self.low_level_channels,
                self.decoder_channels,
                dtype=self.dtype,
                widths=_widths_under(self.widths, "decoder"),
                num_convs=self.decoder_convs,
                separable=self.separable_decoder,
                align_corners=self.align_corners,
            )
        else:
            fcn = self.head == "fcn"
            self.decoder = ConvHead(
                self.num_classes,
                32 * width // 4 if fcn else self.decoder_channels,
                self.head_dropout_rate if fcn else 0.0,
                self.resample,
                self.align_corners,
                self.dtype,
                widths=_widths_under(self.widths, "decoder"),
            )
        if self.aux_head:
            self.aux_decoder = ConvHead(
                self.num_classes,
                16 * width // 4,
                self.head_dropout_rate,
                self.resample,
                self.align_corners,
                self.dtype,
                widths=_widths_under(self.widths, "aux_decoder"),
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
        aspp, low_level, _ = self._encode_stages(x, train)
        return aspp, low_level

    def _encode_stages(self, x, train):
        low_level, _, third, high_level = self.backbone_stages(x, train)
        if self.head != "fcn":
            high_level = self.aspp(high_level, train)
        return high_level, low_level, third

    def decode(
        self,
        aspp: jax.Array,
        low_level: jax.Array,
        image_size: tuple[int, ...],
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
        if self.head == "deeplabv3plus":
            size = decoder_grid(self.feature_size, low_level.shape[1:3])
            outputs = cast(Decoder, self.decoder)(aspp, low_level, size, train)
        else:
            stride = self.output_stride
            size = decoder_grid(self.feature_size, aspp.shape[1:3], stride)
            outputs = cast(ConvHead, self.decoder)(aspp, size, train)
        return decoder_outputs(*outputs, image_size, align_corners=self.align_corners)

    def intermediates(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """One forward pass returning ``"aspp"``, ``"low_level"`` and :meth:`decode`'s dict.

        With ``aux_head``, also ``"aux_logits" [B, H, W, C]``, the auxiliary head's.
        """
        aspp, low_level, third = self._encode_stages(x, train)
        outputs = self.decode(aspp, low_level, x.shape[1:3], train)
        result = {"aspp": aspp, "low_level": low_level, **outputs}
        if self.aux_head:
            _, aux_logits = self.aux_decoder(third, third.shape[1:3], train)
            aux = decoder_outputs(third, aux_logits, x.shape[1:3], align_corners=self.align_corners)
            result["aux_logits"] = aux["logits"]
        return result

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits ``[B, H, W, C]`` for images ``x [B, H, W, 3]``."""
        return self.intermediates(x, train)["logits"]
