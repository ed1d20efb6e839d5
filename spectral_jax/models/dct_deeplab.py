"""DeepLab v3+ on frequency-domain input (Xu et al. 2020, Sec. 3.1, Fig. 3).

The model takes the DCT coefficients ``[B, h, w, 192]`` of :func:`spectral_jax.related.dct_input.
images_to_dct` (normalised per channel, :class:`spectral_jax.related.dct_input.ChannelStatistics`),
not the images: the transform and normalisation belong to the input pipeline, as in the
paper (Fig. 1, done on the CPU before transfer), and are not trained. Static selection
(``channels``) happens inside the model so that one data pipeline feeds every pattern;
a bandwidth-saving pipeline would select before transfer instead.

``layout`` names the input's layout (:data:`spectral_jax.related.dct_input.DCT_LAYOUTS`)
and sets its stride ``s`` (image pixels per DCT position, ``H x W = s h x s w``):

* ``"segmentation"`` (default, ``s = 4``): the authors' segmentation input (2x / 4x
  up-scaled image, ``[H / 4, W / 4, 192]``), which their segmentation results come from.
  Their backbone (``ResNetUpscaledStatic``, mmdet) drops the stem and keeps ResNet's
  stage strides ``(1, 2, 2, 2)``: stage 1 takes the DCT input at stride 4, exactly where
  the RGB ResNet's stage 1 takes the stem's output. Every later shape is the RGB model's
  for an ``H x W`` image: same stage plan, low-level features at stride 4, decoder grid
  ``H / 4`` (128 at 512), logits up-sampled 4x.
* ``"classification"`` (``s = 8``): their ImageNet input ``[H / 8, W / 8, 192]``
  (module docstring of :mod:`spectral_jax.related.dct_input`), described in the paper's
  Sec. 3.1.

Changes to :class:`spectral_jax.models.DeepLabV3Plus`:

* **No stem**: the 7x7 stride-2 convolution, its BatchNorm and the max pool are removed
  ("the three input layers ... are removed", Fig. 3); the first bottleneck of stage 1
  takes the ``K`` input channels (24/32/48/64/192 static, or 192 behind the gate) in its
  1x1 convolution and projection shortcut.
* **Strides**: the input is already at stride ``s``. Stage 1 runs at stride ``s``; the
  later stages follow the atrous rule "a stride that would exceed the output stride
  becomes a dilation" (:func:`_dct_stage_dilations`). At ``s = 4`` this is the RGB plan
  (:func:`spectral_jax.models.resnet.stage_dilations`). At ``s = 8``, output stride 16
  (w.r.t. the image) gives (stride, dilation) ``(1, 1), (2, 1), (1, 2), (1, 4)`` and
  output stride 8 gives ``(1, 1), (1, 2), (1, 4), (1, 8)``. The ASPP grid and rates are
  those of the RGB model at the same output stride (33 at 513, here 32 at 512, stride
  16).
* **Low-level features** come from stage 1, at stride ``s``: the untruncated decoder
  grid is ``H / s`` and the logits are up-sampled ``s``-fold. At ``s = 4`` that is the
  RGB model's (128 at 512, 129 at 513) and the paper's truncations ``feature_size=33``
  and ``65`` both fit; at ``s = 8`` the grid is ``H / 8`` (64 at 512) and only 33 fits
  a 512 input (65 needs ``H >= 520``).
* **Gate** (``gate=True``): :class:`spectral_jax.models.dct_gate.FrequencyGate` on the
  (selected) channels before the backbone; random gates in training (RNG stream
  ``"gumbel"``), argmax gates otherwise. :meth:`DCTDeepLabV3Plus.intermediates` returns
  ``"gates"``. In training the model adds its regulariser to the loss itself (Xu et al.
  2020, Eq. 3): ``self.sow("losses", "gate", gate_weight * gate_regularizer(gates))``,
  and reports the unweighted :func:`spectral_jax.models.dct_gate.gate_regularizer` (open
  gates per image) as ``self.sow("metrics", "gate_regularizer", ...)``; a train step
  that makes those collections mutable sums the first into the objective and logs the
  second (:func:`spectral_jax.training.steps.train_step`).

Input size policy: H and W multiples of ``s`` (the DCT needs whole blocks); the configs
use multiples of 16. The DCT models use ``512 x 512`` crops where the RGB models use 513
(pad or crop to 512; the RGB pipeline's ``513 = 16 k + 1`` aligns corners, which blocks
cannot).

Parameter names follow :class:`spectral_jax.models.ResNet` (``layer{s}_block0`` and the
stacked ``layer{s}_blocks``, or ``layer{s}_block{b}`` with ``scan_blocks=False``), so
RGB weights of stages 1-4 map one to one except the two input convolutions of
``layer1_block0``, whose input width changes from ``width`` to ``K``.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax.models.dct_gate import FrequencyGate, gate_regularizer
from spectral_jax.models.deeplab import (
    Decoder,
    check_model_settings,
    create_aspp,
    decoder_grid,
    decoder_outputs,
)
from spectral_jax.models.resnet import RESNET_CONFIGS, bottleneck_stages, stage_dilations
from spectral_jax.related.dct_input import (
    DEFAULT_LAYOUT,
    LAYOUT_STRIDES,
    NUM_DCT_CHANNELS,
    DCTLayout,
    check_layout,
)
from spectral_jax.truncation import Resample


def _dct_stage_dilations(output_stride: int, *, input_stride: int) -> tuple[tuple[int, int], ...]:
    """(stride, dilation) of the four stages when the input is at stride ``input_stride``.

    Strides ``(1, 2, 2, 2)`` as in ResNet after its stem; once the running stride would
    exceed ``output_stride``, the stage keeps stride 1 and multiplies the dilation by 2.
    With ``input_stride=4`` (the segmentation layout) this is the RGB ResNet's plan.

    Args:
      output_stride: 8, 16 or 32, w.r.t. the image.
      input_stride: image pixels per input position, 4 or 8
        (:data:`spectral_jax.related.dct_input.LAYOUT_STRIDES`).

    Raises:
      ValueError: for another output stride or input stride.
    """
    stage_dilations(output_stride)  # validates
    if input_stride not in LAYOUT_STRIDES.values():
        raise ValueError(
            f"input_stride must be one of {sorted(LAYOUT_STRIDES.values())}, got {input_stride!r}."
        )
    plan, stride, dilation = [], input_stride, 1
    for stage_stride in (1, 2, 2, 2):
        if stride * stage_stride > output_stride:
            dilation *= stage_stride
            plan.append((1, dilation))
        else:
            stride *= stage_stride
            plan.append((stage_stride, dilation))
    return tuple(plan)


class DCTResNet(nn.Module):
    """Bottleneck ResNet without its stem, for DCT input at stride ``input_stride``.

    Attributes:
      stage_sizes: blocks per stage.
      width: first bottleneck width (64 for the standard models).
      output_stride: 8, 16 or 32 w.r.t. the image.
      input_stride: image pixels per input position, 4 or 8.
      dtype: computation dtype.
      scan_blocks: run the blocks after the first of each stage under ``nn.scan``
        (see :class:`spectral_jax.models.ResNet`).
    """

    stage_sizes: Sequence[int]
    width: int = 64
    output_stride: int = 16
    input_stride: int = LAYOUT_STRIDES[DEFAULT_LAYOUT]
    dtype: jnp.dtype = jnp.float32
    scan_blocks: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """``x [B, h, w, K]`` -> ``(low_level [B, h, w, 4 width], high_level [B, hs, ws,
        32 width])``, ``hs = ceil(h / (output_stride / input_stride))``."""
        chex.assert_rank(x, 4)
        if len(self.stage_sizes) != 4:
            raise ValueError(f"stage_sizes must have four stages, got {self.stage_sizes!r}.")
        outputs = bottleneck_stages(
            x,
            train,
            stage_sizes=self.stage_sizes,
            width=self.width,
            plan=_dct_stage_dilations(self.output_stride, input_stride=self.input_stride),
            dtype=self.dtype,
            scan_blocks=self.scan_blocks,
        )
        return outputs[0], outputs[-1]


class DCTDeepLabV3Plus(nn.Module):
    """DeepLab v3+ on DCT coefficients (module docstring); the interface of DeepLabV3Plus.

    Attributes:
      num_classes: output classes ``C``.
      backbone: ``"resnet101"``, ``"resnet50"`` or ``"resnet_tiny"``.
      output_stride: 8, 16 or 32, w.r.t. the image.
      layout: ``"segmentation"`` (input ``[B, H / 4, W / 4, 192]``, default) or
        ``"classification"`` (``[B, H / 8, W / 8, 192]``); the layout the input pipeline
        produced (module docstring).
      feature_size: decoder grid ``F``; ``None`` for the low-level grid ``h x w``.
      resample: ``"bilinear"``, ``"area"`` or ``"spectral"``.
      channels: static selection, indices into the 192 DCT channels
        (:func:`spectral_jax.related.dct_input.selection_pattern`); ``None`` keeps all 192.
      gate: learned gate on the (selected) channels.
      gate_temperature: Gumbel-softmax temperature of the gate.
      gate_weight: weight ``lambda`` of the gate regulariser (mean open gates per image)
        in the training loss, sown in the ``"losses"`` collection (module docstring).
      aspp_channels, low_level_channels, decoder_channels, dropout_rate, dtype,
        scan_blocks: as in :class:`spectral_jax.models.DeepLabV3Plus`.

    Example:
      Shapes only (``jax.eval_shape``: initialising even the tiny backbone takes seconds):

      >>> from spectral_jax.related.dct_input import selection_pattern
      >>> model = DCTDeepLabV3Plus(num_classes=3, backbone="resnet_tiny",
      ...                          channels=tuple(selection_pattern(24)))
      >>> x = jnp.zeros((2, 12, 12, 192))  # DCT of 48 x 48 images, segmentation layout
      >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
      >>> jax.eval_shape(model.apply, variables, x).shape
      (2, 48, 48, 3)
    """

    num_classes: int = 21
    backbone: str = "resnet101"
    output_stride: int = 16
    layout: DCTLayout = DEFAULT_LAYOUT
    feature_size: int | None = None
    resample: Resample = "bilinear"
    channels: tuple[int, ...] | None = None
    gate: bool = False
    gate_temperature: float = 1.0
    gate_weight: float = 0.0
    aspp_channels: int = 256
    low_level_channels: int = 48
    decoder_channels: int = 256
    dropout_rate: float = 0.5
    dtype: jnp.dtype = jnp.float32
    scan_blocks: bool = True

    def setup(self):
        check_model_settings(self.backbone, self.resample, self.feature_size)
        check_layout(self.layout)
        if self.channels is not None:
            channels = np.asarray(self.channels)
            if (
                channels.ndim != 1
                or channels.size == 0
                or channels.min() < 0
                or channels.max() >= NUM_DCT_CHANNELS
                or np.unique(channels).size != channels.size
            ):
                raise ValueError(
                    f"channels must be distinct indices in [0, 192), got {tuple(self.channels)!r}."
                )
        config = RESNET_CONFIGS[self.backbone]
        self.encoder = DCTResNet(
            config.stage_sizes,
            config.width,
            output_stride=self.output_stride,
            input_stride=self.input_stride,
            dtype=self.dtype,
            scan_blocks=self.scan_blocks,
        )
        if self.gate:
            self.frequency_gate = FrequencyGate(self.gate_temperature, dtype=self.dtype)
        self.aspp = create_aspp(self)
        self.decoder = Decoder(
            self.num_classes,
            self.resample,
            self.low_level_channels,
            self.decoder_channels,
            dtype=self.dtype,
        )

    @property
    def input_stride(self) -> int:
        """Image pixels per input position: 4 (segmentation layout) or 8 (classification)."""
        return LAYOUT_STRIDES[self.layout]

    def _inputs(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        """Selection and gate: ``x [B, h, w, 192]`` -> ``{"inputs": [B, h, w, K], ...}``."""
        if jnp.ndim(x) != 4 or jnp.shape(x)[-1] != NUM_DCT_CHANNELS:
            raise ValueError(f"x must have shape [B, h, w, 192], got {jnp.shape(x)}.")
        if self.channels is not None:
            x = jnp.take(x, jnp.asarray(self.channels), axis=-1)  # [B, h, w, K]
        if not self.gate:
            return {"inputs": x}
        out = self.frequency_gate(x, deterministic=not train)
        if train:  # Sown only where the caller made the collections mutable.
            regularizer = gate_regularizer(out["gates"])
            self.sow("losses", "gate", self.gate_weight * regularizer)
            self.sow("metrics", "gate_regularizer", regularizer)
        return {
            "inputs": out["gated"],
            "gates": out["gates"],
            "gate_probabilities": out["gate_probabilities"],
        }

    def _encode(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        inputs = self._inputs(x, train)
        low_level, high_level = self.encoder(inputs["inputs"], train)
        return {"aspp": self.aspp(high_level, train), "low_level": low_level, **inputs}

    def encode(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Selection, gate, backbone and ASPP.

        Args:
          x: DCT coefficients ``[B, h, w, 192]`` (normalised).
          train: BatchNorm batch statistics, dropout and random gates (``rngs=
            {"gumbel": key}`` when ``gate``).

        Returns:
          ``(aspp, low_level)``: ``[B, hs, ws, aspp_channels]`` at the output stride and
          ``[B, h, w, 4 * width]`` at the input stride (32 and 128 at 512 input, output
          stride 16, segmentation layout; 32 and 64 in the classification layout).
        """
        out = self._encode(x, train)
        return out["aspp"], out["low_level"]

    def decode(
        self,
        aspp: jax.Array,
        low_level: jax.Array,
        image_size: tuple[int, int],
        train: bool = False,
    ) -> dict[str, jax.Array]:
        """Decoder on the ``F x F`` grid and bilinear up-sampling to the image.

        Args:
          aspp: ``[B, hs, ws, aspp_channels]`` from :meth:`encode`.
          low_level: ``[B, h, w, Cl]`` from :meth:`encode`.
          image_size: static ``(H, W) = (s h, s w)``, ``s`` the input stride.
          train: BatchNorm batch statistics.

        Returns:
          ``{"decoder_input": [B, F, F, aspp_channels + low_level_channels],
          "decoder_logits": [B, F, F, C], "logits": [B, H, W, C]}``.
        """
        size = decoder_grid(self.feature_size, low_level.shape[1:3], stride=self.input_stride)
        return decoder_outputs(*self.decoder(aspp, low_level, size, train), image_size)

    def intermediates(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """One pass returning ``"inputs"`` (selected, gated), ``"aspp"``, ``"low_level"``,
        :meth:`decode`'s dict and, with the gate, ``"gates"`` and ``"gate_probabilities"``
        ``[B, K]``."""
        out = self._encode(x, train)
        image_size = (self.input_stride * x.shape[1], self.input_stride * x.shape[2])
        return {**out, **self.decode(out["aspp"], out["low_level"], image_size, train)}

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits ``[B, s h, s w, C]`` for DCT coefficients ``x [B, h, w, 192]`` (``s`` the
        input stride: 4 in the segmentation layout, 8 in the classification layout)."""
        return self.intermediates(x, train)["logits"]
