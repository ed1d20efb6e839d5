"""The one place a configuration becomes a model.

``config.model.name`` picks the class of :data:`MODELS`; the other fields of
``config.model`` are its attributes (:mod:`spectral_jax.training.config`).
:func:`create_model` builds it, :func:`input_shape` says what it takes (RGB images, or
the DCT model's coefficients), so that the trainer and the experiments never branch on a
model's name.

Example:
  >>> import ml_collections
  >>> config = ml_collections.ConfigDict({"name": "dct_deeplabv3plus",
  ...                                     "backbone": "resnet_tiny"})
  >>> type(create_model(config, num_classes=3)).__name__, input_shape(config, image_size=64)
  ('DCTDeepLabV3Plus', (16, 16, 192))
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from spectral_jax.models.anti_aliasing import DeAliasingFilter, FreqMix
from spectral_jax.models.dan import DAN
from spectral_jax.models.dct_deeplab import DCTDeepLabV3Plus
from spectral_jax.models.deeplab import DeepLabV3Plus
from spectral_jax.models.segmentation_checkpoints import LAYOUT_SETTINGS
from spectral_jax.related import dct_input

#: ``config.model.name`` -> model class, or a class with preset options: the PyTorch
#: networks whose checkpoints :mod:`spectral_jax.models.segmentation_checkpoints` imports
#: are :class:`DeepLabV3Plus` with the options of their layout (the config's fields
#: override them), named as the layout.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "deeplabv3plus": DeepLabV3Plus,
    "dan": DAN,
    "dct_deeplabv3plus": DCTDeepLabV3Plus,
    **{
        layout: functools.partial(DeepLabV3Plus, **settings)
        for layout, settings in LAYOUT_SETTINGS.items()
    },
}

#: ``config.model.downsample_filter`` values: the module put before every strided block
#: of the backbone (Chen, Gu, Fu 2024). One object per name, so that equal configs give
#: equal (hashable) models.
DOWNSAMPLE_FILTERS = {
    "daf": DeAliasingFilter,
    "freqmix": functools.partial(FreqMix, reduction=16),
}


#: ``config.model.dtype`` values: the computation dtype of the convolutions (and of the
#: BatchNorm outputs). Parameters, optimizer state, BatchNorm statistics, the logits, the
#: loss and the spectral statistics stay float32 whatever it is.
MODEL_DTYPES: dict[str, jnp.dtype] = {
    "float32": jnp.dtype(jnp.float32),
    "bfloat16": jnp.dtype(jnp.bfloat16),
}


def _check_dtype(model_config: ml_collections.ConfigDict) -> jnp.dtype:
    """The computation dtype named by ``model_config.dtype`` (float32 when absent)."""
    name = model_config.get("dtype", "float32")
    if name == "float16":
        raise ValueError(
            "config.model.dtype='float16' is not supported: its 5-bit exponent makes the "
            "per-pixel gradients of the mean loss underflow without loss scaling, which the "
            "train step does not do. Use 'bfloat16' (float32's range, as fast on GPUs "
            "from Ampere on and on TPU) or 'float32'."
        )
    if name not in MODEL_DTYPES:
        raise ValueError(f"config.model.dtype must be one of {tuple(MODEL_DTYPES)}, got {name!r}.")
    return MODEL_DTYPES[name]


def _check_name(model_config: ml_collections.ConfigDict) -> str:
    name = model_config.name
    if name not in MODELS:
        raise ValueError(f"config.model.name must be one of {tuple(MODELS)}, got {name!r}.")
    return name


#: What each model of :data:`MODELS` takes: ``"rgb"`` images, or ``"dct"`` coefficients
#: (:mod:`spectral_jax.related.dct_input`). The data layer turns a run's RGB pipeline
#: into that input (:data:`spectral_jax.data.dct_pipeline.RUN_INPUTS`).
INPUT_KINDS: dict[str, str] = {
    "deeplabv3plus": "rgb",
    "dan": "rgb",
    "dct_deeplabv3plus": "dct",
    **{layout: "rgb" for layout in LAYOUT_SETTINGS},
}


def input_kind(model_config: ml_collections.ConfigDict) -> str:
    """``"rgb"`` or ``"dct"``: what the model named by ``model_config.name`` takes."""
    return INPUT_KINDS[_check_name(model_config)]


def _is_dct_model(model_config: ml_collections.ConfigDict) -> bool:
    """Whether the model takes DCT coefficients (``name == "dct_deeplabv3plus"``)."""
    return input_kind(model_config) == "dct"


def input_shape(model_config: ml_collections.ConfigDict, *, image_size: int) -> tuple[int, ...]:
    """``(H, W, channels)`` of the model's input for ``image_size x image_size`` images.

    ``(S, S, 3)`` for the RGB models; ``(S / s, S / s, 192)`` for the DCT model, ``s``
    the stride of its ``layout`` (:data:`spectral_jax.related.dct_input.LAYOUT_STRIDES`:
    4 for ``"segmentation"``, the default, 8 for ``"classification"``).

    Raises:
      ValueError: for an unknown model name or DCT layout.
    """
    if _is_dct_model(model_config):
        layout = dct_input.check_layout(model_config.get("layout", dct_input.DEFAULT_LAYOUT))
        size = image_size // dct_input.LAYOUT_STRIDES[layout]
        return (size, size, dct_input.NUM_DCT_CHANNELS)
    return (image_size, image_size, 3)


def create_model(model_config: ml_collections.ConfigDict, *, num_classes: int) -> nn.Module:
    """The model named by ``model_config.name`` with the other fields as attributes.

    ``downsample_filter`` (``None``, ``"daf"`` or ``"freqmix"``) names a module of
    :data:`DOWNSAMPLE_FILTERS`; ``dtype`` (``"float32"``, the default, or
    ``"bfloat16"``) names the computation dtype of :data:`MODEL_DTYPES` (mixed
    precision: parameters and logits stay float32); list values (``channels``) become
    tuples. The configs are
    written for DeepLab v3+: for ``name="dan"`` their ``low_level_channels`` is DAN's
    ``projection_channels`` (the width of its stage projections, the same role), so
    ``--config.model.name=dan`` works on any of them.

    Raises:
      ValueError: for an unknown name, dtype (``float16`` included, with the reason)
        or filter, or a DAN config with both
        ``low_level_channels`` and ``projection_channels``.
    """
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(model_config).items()}
    name = _check_name(model_config)
    del fields["name"]
    fields["dtype"] = _check_dtype(model_config)
    if name == "dan" and "low_level_channels" in fields:
        if "projection_channels" in fields:
            raise ValueError(
                "config.model for DAN sets both low_level_channels and projection_channels; "
                "they are the same width, set one."
            )
        fields["projection_channels"] = fields.pop("low_level_channels")
    if "downsample_filter" in fields:
        filter_name = fields.pop("downsample_filter")
        if filter_name is not None:
            if filter_name not in DOWNSAMPLE_FILTERS:
                raise ValueError(
                    f"config.model.downsample_filter must be None or one of "
                    f"{tuple(DOWNSAMPLE_FILTERS)}, got {filter_name!r}."
                )
            fields["downsample_filter"] = DOWNSAMPLE_FILTERS[filter_name]
    return MODELS[name](num_classes=num_classes, **fields)  # fields override presets
