"""The schema of a training configuration: every field the library reads, with its meaning.

:func:`spectral_jax.training.train_and_evaluate` takes an ``ml_collections.ConfigDict``;
:data:`FIELDS` names each field it (or the data, model and evaluation code it calls)
reads, with its type, its default, a one-line meaning and, where the paper gives it,
the paper's value ("Spectral Analysis for Semantic Segmentation with Applications on
Feature Truncation and Weak Annotation", Chen, Chiu, Wu, arXiv:2012.14123, Sec. 3,
"Segmentation models and implementation details"); one field, ``distributed``, is
read by the training script (``experiments/train.py``) before the library runs.
:func:`get_config` returns the defaults; the experiment configs (``experiments/configs``) start from it and set what
changes.

The paper trains DeepLab v3+ or DAN on an ImageNet ResNet-101 with random 513 x 513
crops and flips, batch size 8, initial learning rates 0.0007 (PASCAL VOC), 0.007
(DeepGlobe) and 0.001 (Cityscapes) for 100 / 600 / 200 epochs. The DeepLab conventions
it does not state ("Rethinking Atrous Convolution for Semantic Image Segmentation",
arXiv:1706.05587; "Encoder-Decoder with Atrous Separable Convolution for Semantic Image
Segmentation", arXiv:1802.02611) are the defaults here: SGD with momentum 0.9, the
"poly" schedule with power 0.9, L2 weight decay 1e-4 on the kernels, random scaling in
[0.5, 2.0], output stride 16. The defaults train that network on the generated
PASCAL-like scenes; they are not meant to be launched as they are.

``config.model`` is open: ``model.name`` picks the class of
:data:`spectral_jax.models.registry.MODELS` and every other field of ``config.model`` is
an attribute of that class (documented in the class). :data:`FIELDS` lists the ones the
default config sets, the ones the library reads by name and the ones the experiment
configs set (``optional``: absent from :func:`get_config`).

Example:
  >>> config = get_config()
  >>> config.batch_size, FIELDS_BY_NAME["batch_size"].paper
  (8, '8')
  >>> check_fields(get_config()) is None
  True
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterator
from typing import Any

import ml_collections

from spectral_jax.models import registry


@dataclasses.dataclass(frozen=True)
class ConfigField:
    """One field of a training configuration.

    Attributes:
      name: the dotted path in the config, e.g. ``"batch_size"`` or ``"model.name"``.
      type: the type of its values (``tuple`` for sequences).
      default: the value :func:`get_config` gives it (``None`` for an unset field).
      doc: one line: what it means.
      paper: the paper's value (arXiv:2012.14123, Sec. 3), where the paper gives it.
      nullable: ``None`` is a valid value.
      optional: absent from :func:`get_config`; a config sets it when it needs it, and
        ``default`` is the value the reader assumes when it is absent.
      reader: who reads it: ``"library"`` (``spectral_jax``) or ``"experiments.train"``
        (the training script, before the library runs).
    """

    name: str
    type: type
    default: Any
    doc: str
    paper: str | None = None
    nullable: bool = False
    optional: bool = False
    reader: str = "library"

    @property
    def type_name(self) -> str:
        """The type as a Python annotation, e.g. ``"int | None"``."""
        return f"{self.type.__name__} | None" if self.nullable else self.type.__name__

    def describe(self) -> str:
        """``doc``, then the type, the default and the paper's value, on one line."""
        text = f"{self.doc} [{self.type_name}; default {self.default!r}"
        if self.paper is not None:
            text += f"; paper: {self.paper}"
        return text + "]"


_F = ConfigField

#: Every field, in the order of :func:`get_config`; the optional model fields at the end
#: of ``model``.
FIELDS: tuple[ConfigField, ...] = (
    # Data (spectral_jax.data).
    _F(
        "dataset",
        str,
        "synthetic_scenes/pascal_like",
        "TFDS name of the data set (spectral_jax.data.pipeline): voc_sbd, "
        "deepglobe_land_cover, cityscapes or synthetic_scenes/<preset>.",
        paper="voc_sbd (PASCAL VOC 2012 + SBD), deepglobe_land_cover, cityscapes",
    ),
    _F("data_dir", str, None, "TFDS data directory; None: TFDS's default.", nullable=True),
    _F("train_split", str, "train", "TFDS split of the training examples."),
    _F("eval_split", str, "validation", "TFDS split of the evaluation examples."),
    _F("crop_size", int, 513, "Side of the square random training crops.", paper="513"),
    _F(
        "eval_crop_size",
        int,
        513,
        "Evaluation images are padded (ignore label) to this size; None: to the largest "
        "image of each batch (the spectral statistics then need one size over the split).",
        nullable=True,
    ),
    _F(
        "scale_range",
        tuple,
        (0.5, 2.0),
        "Range of the random rescaling of the training images before cropping "
        "(a DeepLab convention the paper does not state).",
    ),
    _F("flip", bool, True, "Random horizontal flips of the training crops.", paper="True"),
    _F(
        "worker_count",
        int,
        0,
        "Worker processes of the input pipeline (grain); 0 reads in the main process.",
    ),
    _F(
        "ignore_index",
        int,
        None,
        "Label of the pixels left out of the loss and the metrics (and of the crops' "
        "padding); None: the data set's own (255). Other labels outside [0, num_classes) "
        "stop training with an error naming the step.",
        nullable=True,
    ),
    _F(
        "block_band_limit",
        int,
        None,
        "Band limit of the block-wise weak training labels (paper Sec. 3.3); None "
        "trains on the pixel-wise labels.",
        paper="8, 16, 32 (Table 3)",
        nullable=True,
    ),
    # Model (spectral_jax.models).
    _F(
        "model.name",
        str,
        "deeplabv3plus",
        "Model class (spectral_jax.models.registry.MODELS): deeplabv3plus, dan, "
        "dct_deeplabv3plus or a PyTorch checkpoint layout; the other model.* fields are "
        "its attributes.",
        paper="deeplabv3plus, dan",
    ),
    _F(
        "model.backbone",
        str,
        "resnet101",
        "ResNet backbone: resnet101, resnet50 or resnet_tiny.",
        paper="resnet101 (ImageNet)",
    ),
    _F(
        "model.output_stride",
        int,
        16,
        "Output stride of the backbone: 8, 16 or 32 (16: a DeepLab convention).",
    ),
    _F(
        "model.feature_size",
        int,
        None,
        "Side F of the decoder's grid (feature truncation, paper Sec. 3.2); None: the "
        "low-level grid (129 at 513 input).",
        paper="65, 33 (Table 2)",
        nullable=True,
    ),
    _F(
        "model.resample",
        str,
        "bilinear",
        "Resampling onto the decoder's grid: bilinear, area or spectral.",
    ),
    _F(
        "model.dropout_rate",
        float,
        0.5,
        "ASPP dropout in training (the model's default, as torchvision's).",
    ),
    _F(
        "model.dtype",
        str,
        "float32",
        "Computation dtype of the convolutions: float32 or bfloat16 (parameters, "
        "optimizer state, BatchNorm statistics, logits, loss and statistics stay float32).",
    ),
    _F(
        "model.aspp_channels",
        int,
        256,
        "Channels of the ASPP.",
        optional=True,
    ),
    _F(
        "model.low_level_channels",
        int,
        48,
        "Channels of the low-level projection (DAN: of each stage's projection).",
        optional=True,
    ),
    _F(
        "model.decoder_channels",
        int,
        256,
        "Channels of the decoder's 3x3 convolutions (DAN's default: 64).",
        optional=True,
    ),
    _F(
        "model.downsample_filter",
        str,
        None,
        "De-aliasing filter before every strided block of the backbone: daf or freqmix "
        "(DeepLab and DAN only); None for none.",
        nullable=True,
        optional=True,
    ),
    _F(
        "model.layout",
        str,
        "segmentation",
        "Input layout of the DCT model: segmentation ([H / 4, W / 4, 192]) or "
        "classification ([H / 8, W / 8, 192]).",
        optional=True,
    ),
    _F(
        "model.channels",
        tuple,
        None,
        "Static selection of the DCT model's input channels (indices into the 192); "
        "None keeps all.",
        nullable=True,
        optional=True,
    ),
    _F("model.gate", bool, False, "Learned gate on the DCT model's channels.", optional=True),
    _F(
        "model.gate_weight",
        float,
        0.0,
        "Weight of the DCT gate's regulariser (mean open gates per image) in the loss.",
        optional=True,
    ),
    _F(
        "pretrained_backbone",
        str,
        None,
        "Path of ImageNet weights for the backbone (spectral_jax.models.pretrained); None "
        "trains from scratch.",
        paper="an ImageNet ResNet-101",
        nullable=True,
    ),
    _F(
        "pretrained_weights",
        str,
        None,
        "Path of a trained PyTorch segmentation network's checkpoint in the layout "
        "model.name names (spectral_jax.models.segmentation_checkpoints), to fine-tune; "
        "None: no such start.",
        nullable=True,
    ),
    # Optimisation.
    _F("batch_size", int, 8, "Training batch size, over all devices.", paper="8"),
    _F("eval_batch_size", int, 8, "Evaluation batch size, over all devices."),
    _F(
        "learning_rate",
        float,
        0.007,
        "Initial learning rate of the poly schedule.",
        paper="0.0007 (PASCAL VOC), 0.007 (DeepGlobe), 0.001 (Cityscapes)",
    ),
    _F("lr_power", float, 0.9, "Power of the poly schedule (a DeepLab convention)."),
    _F("momentum", float, 0.9, "SGD momentum (a DeepLab convention)."),
    _F("weight_decay", float, 1e-4, "L2 weight decay on the kernels (a DeepLab convention)."),
    _F(
        "num_epochs",
        int,
        100,
        "Training epochs, when num_train_steps <= 0.",
        paper="100 (PASCAL VOC), 600 (DeepGlobe), 200 (Cityscapes)",
    ),
    _F("num_train_steps", int, -1, "Training steps; > 0 overrides num_epochs."),
    # Soft filter pruning (paper Sec. 3.2, Table 2).
    _F(
        "pruning.encoder",
        float,
        0.0,
        "Soft filter pruning rate of the encoder's filters at the end of every epoch; "
        "0 disables it.",
        paper="0.2, 0.4, 0.6 (Table 2)",
    ),
    _F(
        "pruning.decoder",
        float,
        0.0,
        "Soft filter pruning rate of the decoder's filters at the end of every epoch; "
        "0 disables it.",
    ),
    # Loop, logging, checkpoints.
    _F("seed", int, 0, "Seed of the initialisation, the data order and the dropout."),
    _F(
        "num_seeds",
        int,
        1,
        "Replicas trained at once (one vmapped step); replica k has the seed seed + k "
        "and ends as a run with that seed would.",
    ),
    _F(
        "prefetch_batches",
        int,
        2,
        "Training batches on the devices at once: 2 places the next batch while a step "
        "runs, 1 places each batch when the step asks for it.",
    ),
    _F("log_every_steps", int, 50, "Steps between two logged training metrics."),
    _F("eval_every_steps", int, -1, "Steps between two evaluations; <= 0: only at the end."),
    _F("checkpoint_every_steps", int, 1000, "Steps between two checkpoints."),
    _F("keep_checkpoints", int, 3, "Checkpoints kept in the work directory."),
    _F(
        "spectral_statistics",
        bool,
        True,
        "Band profile, mean CE and R(nu_max) of the evaluation (paper Sec. 2).",
    ),
    _F(
        "boundary_metrics",
        bool,
        True,
        "Boundary metrics at evaluation (BIoU, BAcc, FErr, MErr, DErr; "
        "spectral_jax.related.boundary_metrics), on the unpadded images.",
    ),
    _F(
        "dct_statistics_batches",
        int,
        10,
        "Training batches over which the DCT model's per-channel input statistics are "
        "estimated (read when model.name is dct_deeplabv3plus).",
    ),
    _F("tensorboard", bool, True, "Write TensorBoard event files to the work directory."),
    _F("progress_bar", bool, True, "Show a progress bar of the training steps."),
    _F(
        "distributed",
        bool,
        False,
        "Call jax.distributed.initialize() before anything else (one process of a "
        "multi-process run).",
        reader="experiments.train",
    ),
)

#: :data:`FIELDS` by dotted name.
FIELDS_BY_NAME: dict[str, ConfigField] = {field.name: field for field in FIELDS}

#: The groups whose fields are attributes of a class rather than a closed set: any
#: attribute of the model class that ``model.name`` names is a valid ``model.*`` field.
OPEN_GROUPS = ("model",)


def get_config() -> ml_collections.ConfigDict:
    """The default configuration: every field of :data:`FIELDS` that is not optional.

    Fields whose default is ``None`` are typed placeholders, so that
    ``--config.data_dir=/data`` parses as their type.
    """
    config = ml_collections.ConfigDict()
    for field in FIELDS:
        if field.optional:
            continue
        *groups, leaf = field.name.split(".")
        node = config
        for group in groups:
            if group not in node:
                node[group] = ml_collections.ConfigDict()
            node = node[group]
        if field.default is None:
            node[leaf] = ml_collections.config_dict.placeholder(field.type)
        else:
            node[leaf] = field.default
    return config


def leaf_names(config: ml_collections.ConfigDict, prefix: str = "") -> Iterator[str]:
    """The dotted names of ``config``'s leaves (the fields that are not ConfigDicts)."""
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            yield from leaf_names(value, f"{name}.")
        else:
            yield name


def _model_attributes(model_name: Any) -> set[str]:
    """The attributes of the model class that ``model.name`` names (empty if unknown)."""
    model = registry.MODELS.get(model_name)
    if model is None:
        return set()
    cls: Any = getattr(model, "func", model)  # functools.partial of a preset
    return {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "num_classes"}


def known_names(config: ml_collections.ConfigDict | None = None) -> list[str]:
    """The valid dotted names: :data:`FIELDS`, with the model class's attributes of
    ``config.model.name`` when ``config`` is given."""
    names = list(FIELDS_BY_NAME)
    model = config.get("model") if config is not None else None
    if model is not None:
        names += sorted(f"model.{a}" for a in _model_attributes(model.get("name")))
    return list(dict.fromkeys(names))


def nearest_name(name: str, candidates: list[str]) -> str | None:
    """The candidate closest to ``name`` (``difflib``), or None if none is close."""
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_field_message(name: str, candidates: list[str]) -> str:
    """``"no config field 'x' (did you mean 'y'?)"``, without the question when no
    candidate is close."""
    message = f"no config field {name!r}"
    nearest = nearest_name(name, candidates)
    return f"{message} (did you mean {nearest!r}?)" if nearest else message


def check_fields(config: ml_collections.ConfigDict) -> None:
    """Refuses a field the library does not read, naming the nearest known field.

    A ``model.*`` field is known when :data:`FIELDS` names it or it is an attribute of
    the model class that ``model.name`` names.

    Raises:
      ValueError: for the first unknown field, e.g. ``no config field 'num_train_step'
        (did you mean 'num_train_steps'?).``
    """
    candidates = known_names(config)
    for name in leaf_names(config):
        if name not in candidates:
            raise ValueError(unknown_field_message(name, candidates) + ".")


def describe_config(config: ml_collections.ConfigDict) -> str:
    """``config``'s fields, one per line as ``name = value``, each followed by its
    documentation from :data:`FIELDS` (for ``--print_config``), in the order of
    :data:`FIELDS`, then the fields it does not name.

    A ``model.*`` field that :data:`FIELDS` does not name is documented in the model class.
    """
    model_name = config.get("model", {}).get("name") if "model" in config else None
    order = {name: index for index, name in enumerate(FIELDS_BY_NAME)}
    lines = []
    for name in sorted(leaf_names(config), key=lambda n: (order.get(n, len(order)), n)):
        value = config
        for part in name.split("."):
            value = value[part]
        lines.append(f"{name} = {value!r}")
        field = FIELDS_BY_NAME.get(name)
        if field is not None:
            doc = field.describe()
        elif name.startswith("model.") and model_name in registry.MODELS:
            doc = f"An attribute of the model {model_name!r} (see its class)."
        else:
            doc = "Not a field of the schema (spectral_jax.training.config)."
        lines.append(f"    {doc}")
    return "\n".join(lines)
