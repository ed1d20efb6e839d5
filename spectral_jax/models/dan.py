"""DAN, a Deep Aggregation Net (Kuo et al., CVPR Workshops 2018), with feature truncation.

Sources, and what is ours. Only the abstract of Kuo et al., "Deep aggregation net for
land cover classification", was available: a deep aggregation network "which extracts
and combines multi-layer features during the segmentation process", trained with "soft
semantic labels" and refined by "graph-based fine tuning". The main paper (Chen, Chiu,
Wu, Sec. 3.2) adds that DAN uses the same ResNet-101 encoder with ASPP as DeepLab v3+
(95.6 G FLOPs, 60.1 M parameters), that its decoder has 11.1 G FLOPs and only 0.4 M
parameters, and that its decoder features are truncated from 129 to 65 or 33 as
DeepLab v3+'s are. Everything below the ASPP is therefore our own design, chosen to
match that description, not DAN's published layers:

* Encoder: exactly :class:`~spectral_jax.models.deeplab.DeepLabV3Plus`'s, the dilated
  ResNet (:mod:`spectral_jax.models.resnet`) and
  :class:`~spectral_jax.models.deeplab.ASPP`, so that the two models share the encoder
  and its parameter names.
* Aggregation decoder, on a static ``feature_size`` grid (``None``: the stride-4 grid,
  129 at 513 input): the outputs of ResNet stages 1, 2 and 3 (strides 4, 8, 16 at
  output stride 16; 256, 512, 1024 channels) are each projected by a 1x1 convolution,
  BatchNorm and ReLU to ``projection_channels`` (48, DeepLab v3+'s low-level width);
  they and the ASPP output are resampled to the grid and concatenated in the order
  ``[aspp, stage1, stage2, stage3]`` (the "decoder input"); two 3x3 convolutions with
  ``decoder_channels`` (64) outputs, BatchNorm and ReLU fuse them; a 1x1 classifier
  gives the logits, which are up-sampled bilinearly to the input. The widths were
  chosen for a decoder of about 0.4 M parameters (355,189 with 21 classes), as the
  main paper states; the FLOPs were not tuned to the paper's.
* Order of projection and resampling: each stage is brought to the grid at its
  cheaper end. A stage with more positions than the grid (stage 1 once truncated) is
  resampled first and then projected, so that the projection runs on the small grid,
  as :class:`~spectral_jax.models.deeplab.Decoder` does with the low-level features; a
  stage with fewer positions is projected first, so that only ``projection_channels``
  channels are up-sampled. The choice is static (from the shapes).

Truncation semantics, resampling methods (:data:`spectral_jax.truncation.RESAMPLE_METHODS`)
and errors are those of :class:`~spectral_jax.models.deeplab.DeepLabV3Plus`.

Not implemented: DAN's soft semantic labels (a training target) and its graph-based
fine tuning (a post-processing step); neither changes the network, and the main paper
does not use them in its analysis.

Interface: as :class:`~spectral_jax.models.deeplab.DeepLabV3Plus`: :meth:`DAN.encode`
returns ``(aspp, low_level)`` with ``low_level`` the tuple of the three stage outputs,
:meth:`DAN.decode` takes them back, :meth:`DAN.intermediates` returns every named stage,
so that spectral Jacobians and training treat both models alike. ``widths`` narrows
single layers (paths such as ``"decoder/stage2_conv"``) for hard filter pruning
(:mod:`spectral_jax.models.pruning`).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from spectral_jax.models.deeplab import (
    SegmentationModel,
    _conv_bn_relu,
    create_encoder_and_aspp,
    decoder_grid,
    decoder_outputs,
)
from spectral_jax.models.resnet import Widths, _check_widths, _widths_under
from spectral_jax.truncation import Resample, resize_features

# The ResNet stages (0-based) whose outputs the decoder aggregates.
AGGREGATED_STAGES: tuple[int, ...] = (0, 1, 2)


class AggregationDecoder(nn.Module):
    """DAN's decoder (our design, see the module docstring); returns logits on the grid.

    Attributes:
      num_classes: output classes ``C``.
      resample: how the inputs reach the grid (``"bilinear"``, ``"area"``, ``"spectral"``).
      projection_channels: outputs of each stage's 1x1 projection (48).
      features: channels of the two 3x3 fusing convolutions (64).
      dtype: computation dtype.
      widths: output channels of single layers (paths in :attr:`PRUNABLE_LAYERS`);
        ``None`` for the standard widths.
    """

    PRUNABLE_LAYERS = ("stage1_conv", "stage2_conv", "stage3_conv", "fuse1_conv", "fuse2_conv")

    num_classes: int
    resample: Resample = "bilinear"
    projection_channels: int = 48
    features: int = 64
    dtype: jnp.dtype = jnp.float32
    widths: Widths | None = None

    @nn.compact
    def __call__(
        self,
        aspp: jax.Array,
        stages: tuple[jax.Array, ...],
        size: tuple[int, int],
        train: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """``aspp [B, h, w, Ca]`` and three stage outputs -> ``(decoder_input, logits)``.

        ``decoder_input`` is ``[B, Fh, Fw, Ca + 3 * projection_channels]`` and ``logits``
        ``[B, Fh, Fw, C]``, with ``(Fh, Fw) = size`` (static).
        """
        widths = _check_widths(self.widths, self.PRUNABLE_LAYERS, "AggregationDecoder")
        width = lambda name, default: widths.get(f"{name}_conv", default)
        resize = lambda x: resize_features(x, size, method=self.resample)
        projected = []
        for i, stage in enumerate(stages):
            name = f"stage{i + 1}"
            project = lambda x, name=name: _conv_bn_relu(
                x, width(name, self.projection_channels), 1, train, name, dtype=self.dtype
            )
            # Project on whichever grid is smaller (see the module docstring).
            if math.prod(stage.shape[1:3]) > math.prod(size):
                projected.append(project(resize(stage)))
            else:
                projected.append(resize(project(stage)))
        decoder_input = jnp.concatenate([resize(aspp), *projected], axis=-1)  # [B, F, F, Ca + 3P]
        y = _conv_bn_relu(
            decoder_input, width("fuse1", self.features), 3, train, "fuse1", dtype=self.dtype
        )
        y = _conv_bn_relu(y, width("fuse2", self.features), 3, train, "fuse2", dtype=self.dtype)
        logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="classifier")(y)
        return decoder_input, logits


class DAN(SegmentationModel):
    """Deep Aggregation Net with a static decoder grid (feature truncation, paper Sec. 3.2).

    The fields shared with DeepLab v3+ (classes, backbone, ASPP, decoder grid, dtype,
    widths, downsampling filter, stacked blocks) are those of
    :class:`spectral_jax.models.deeplab.SegmentationModel`; the decoder's ``widths``
    paths are ``"decoder/stage1_conv"``, ``"decoder/fuse1_conv"``, ...

    Attributes:
      projection_channels: channels of each stage's projection (48).
      decoder_channels: channels of the two 3x3 fusing convolutions (64).

    Example:
      The three aggregated stages and the ``F x F`` decoder grid, traced by
      ``jax.eval_shape`` (shapes only: compiling even the tiny model takes seconds on a
      CPU).

      >>> model = DAN(num_classes=3, backbone="resnet_tiny", feature_size=5)
      >>> images = jnp.zeros((2, 33, 33, 3))
      >>> variables = jax.eval_shape(model.init, jax.random.key(0), images)
      >>> apply = lambda v, x: model.apply(v, x, method=DAN.intermediates)
      >>> outputs = jax.eval_shape(apply, variables, images)
      >>> len(outputs["low_level"]), outputs["decoder_logits"].shape  # [B, F, F, C]
      (3, (2, 5, 5, 3))
      >>> outputs["logits"].shape  # [B, H, W, C]
      (2, 33, 33, 3)
    """

    projection_channels: int = 48
    decoder_channels: int = 64

    def setup(self):
        self.encoder, self.aspp = create_encoder_and_aspp(self)
        self.decoder = AggregationDecoder(
            self.num_classes,
            self.resample,
            self.projection_channels,
            self.decoder_channels,
            dtype=self.dtype,
            widths=_widths_under(self.widths, "decoder"),
        )

    def encode(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """Backbone and ASPP.

        Args:
          x: images ``[B, H, W, 3]``.
          train: BatchNorm batch statistics and dropout.

        Returns:
          ``(aspp, low_level)``: ``[B, Hs, Ws, aspp_channels]`` at the output stride and
          the outputs of stages 1, 2, 3, ``[B, Hk, Wk, 4 * width * 2**k]`` (129, 65, 33
          and 256, 512, 1024 channels at 513 input, ResNet-101, output stride 16).
        """
        stages = self.backbone_stages(x, train)
        low_level = tuple(stages[k] for k in AGGREGATED_STAGES)
        return self.aspp(stages[-1], train), low_level

    def decode(
        self,
        aspp: jax.Array,
        low_level: tuple[jax.Array, ...],
        image_size: tuple[int, ...],
        train: bool = False,
    ) -> dict[str, jax.Array]:
        """Aggregation decoder on the ``F x F`` grid and bilinear up-sampling to the image.

        ``F = feature_size``; with ``feature_size=None`` the decoder runs on the stride-4
        grid ``H4 x W4`` of the first stage instead.

        Args:
          aspp: ``[B, Hs, Ws, aspp_channels]`` from :meth:`encode`.
          low_level: the three stage outputs from :meth:`encode`.
          image_size: static ``(H, W)`` of the input images.
          train: BatchNorm batch statistics.

        Returns:
          ``{"decoder_input": [B, F, F, aspp_channels + 3 * projection_channels],
          "decoder_logits": [B, F, F, C], "logits": [B, H, W, C]}``.
        """
        if len(low_level) != len(AGGREGATED_STAGES):
            raise ValueError(
                f"low_level must hold {len(AGGREGATED_STAGES)} stage outputs, got {len(low_level)}."
            )
        size = decoder_grid(self.feature_size, low_level[0].shape[1:3])
        return decoder_outputs(*self.decoder(aspp, tuple(low_level), size, train), image_size)

    def intermediates(self, x: jax.Array, train: bool = False) -> dict[str, Any]:
        """One forward pass returning ``"aspp"``, ``"low_level"`` and :meth:`decode`'s dict."""
        aspp, low_level = self.encode(x, train)
        outputs = self.decode(aspp, low_level, x.shape[1:3], train)
        return {"aspp": aspp, "low_level": low_level, **outputs}

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits ``[B, H, W, C]`` for images ``x [B, H, W, 3]``."""
        return self.intermediates(x, train)["logits"]
