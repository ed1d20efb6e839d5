"""Training and evaluation of the segmentation models: steps and the training loop.

:func:`train_step` and :func:`eval_step` are pure; the loop in :func:`train_and_evaluate`
binds their settings with ``functools.partial`` and compiles them with ``jax.jit`` over
the data mesh (:mod:`spectral_jax.training.sharding`), donating the train state.

The configuration fields are documented in ``experiments/configs/default.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from spectral_jax import models as models_lib
from spectral_jax.evaluation import metrics as metrics_lib
from spectral_jax.models import dct_gate
from spectral_jax.related import boundary_metrics as boundary_lib
from spectral_jax.related import dct_input as dct_input_lib
from spectral_jax.statistics import SpectralStatistics
from spectral_jax.training import checkpointing, sharding
from spectral_jax.training import train_state as state_lib
from spectral_jax.training import writers as writers_lib

_LOG = logging.getLogger(__name__)

#: The band limits at which the summary reports ``R(nu_max)`` (the paper's Table 1).
REPORTED_BAND_LIMITS = (8, 16, 32, 64)

#: The boundary metrics (Chen, Gu, Fu 2024) of the summary's ``"boundary"`` entry.
BOUNDARY_SCORES = ("biou", "bacc", "ferr", "merr", "derr", "boundary_pixel_accuracy")

Batch = dict[str, Any]


# ---------------------------------------------------------------------------------------
# Loss and steps.


def cross_entropy_loss(
    logits: chex.Array, labels: chex.Array, *, ignore_index: int = 255
) -> tuple[jax.Array, jax.Array]:
    r"""Pixel cross-entropy, the mean over the valid pixels of the whole batch.

    .. math::

       \mathcal{L} = \frac{1}{|V|} \sum_{(b, t) \in V}
         \Big(\log \sum_c e^{z_{b,t,c}} - z_{b,t,y_{b,t}}\Big),

    with ``V`` the pixels whose label is not ``ignore_index`` (0 if there are none).

    Args:
      logits: ``[B, H, W, C]``.
      labels: ``[B, H, W]`` integers in ``[0, C)`` or ``ignore_index``.
      ignore_index: label of pixels left out.

    Returns:
      ``(loss, num_valid)``: the float32 mean and the float32 count of valid pixels.
    """
    chex.assert_rank(logits, 4)
    chex.assert_rank(labels, 3)
    chex.assert_equal_shape_prefix([logits, labels], 3)
    logits = jnp.asarray(logits, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    valid = labels != ignore_index  # [B, H, W]
    safe_labels = jnp.where(valid, labels, 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)  # [B, H, W]
    num_valid = jnp.sum(valid, dtype=jnp.float32)
    loss = jnp.sum(jnp.where(valid, losses, 0.0)) / jnp.maximum(num_valid, 1.0)
    return loss, num_valid


def train_step(
    state: state_lib.TrainState,
    batch: Batch,
    *,
    learning_rate_fn: optax.Schedule,
    dropout_key: jax.Array,
    ignore_index: int = 255,
    gate_weight: float | None = None,
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    """One SGD step: loss, gradient, optimizer update and metrics.

    Wrap it as ``jax.jit(functools.partial(train_step, ...), donate_argnums=0)``. The
    dropout key of step ``t`` is ``fold_in(dropout_key, t)``, so a resumed run draws the
    same masks as an uninterrupted one; the Gumbel noise of a frequency gate
    (:class:`spectral_jax.models.DCTDeepLabV3Plus` with ``gate=True``, RNG stream
    ``"gumbel"``) uses ``fold_in(fold_in(dropout_key, t), 1)``.

    With ``gate_weight`` set, the model runs its ``intermediates`` method and the loss
    is Xu et al.'s (2020, Eq. 3) ``CE + gate_weight * gate_regularizer(gates)``, the mean
    number of open gates per image (:func:`spectral_jax.models.dct_gate.gate_regularizer`).

    Args:
      state: the train state (its ``batch_stats`` are replaced by the batch's update).
      batch: ``{"image": [B, H, W, 3] float32, "label": [B, H, W] int32}``; for the DCT
        model ``"image"`` holds the normalised coefficients ``[B, H / 8, W / 8, 192]``.
      learning_rate_fn: the schedule, only to report the step's learning rate.
      dropout_key: base key of the dropout masks (and of the gate's Gumbel noise).
      ignore_index: label of pixels left out of the loss and the accuracy.
      gate_weight: static weight ``lambda`` of the gate regulariser; ``None`` for a
        model without a gate.

    Returns:
      ``(new_state, metrics)`` with scalar ``loss`` (the cross-entropy, without the L2
      term and the gate term), ``accuracy`` (over valid pixels), ``learning_rate`` and
      ``grad_norm``; with a gate also ``gate_regularizer`` (open gates per image) and
      ``total_loss``.
    """
    images, labels = batch["image"], batch["label"]
    chex.assert_rank(images, 4)
    chex.assert_rank(labels, 3)
    step_key = jax.random.fold_in(dropout_key, state.step)

    rngs = {"dropout": step_key}
    if gate_weight is not None:
        rngs["gumbel"] = jax.random.fold_in(step_key, 1)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        if gate_weight is None:
            logits, updates = state.apply_fn(
                variables, images, train=True, mutable=["batch_stats"], rngs=rngs
            )
            regularizer = jnp.zeros((), jnp.float32)
        else:
            out, updates = state.apply_fn(
                variables,
                images,
                train=True,
                mutable=["batch_stats"],
                rngs=rngs,
                method="intermediates",
            )
            logits = out["logits"]
            regularizer = dct_gate.gate_regularizer(out["gates"]).astype(jnp.float32)
        loss, num_valid = cross_entropy_loss(logits, labels, ignore_index=ignore_index)
        total = loss if gate_weight is None else loss + gate_weight * regularizer
        # A model without BatchNorm has no "batch_stats" to update.
        batch_stats = updates.get("batch_stats", state.batch_stats)
        return total, (loss, regularizer, logits, num_valid, batch_stats)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (total, (loss, regularizer, logits, num_valid, batch_stats)), grads = grad_fn(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    correct = (jnp.argmax(logits, axis=-1) == labels) & (labels != ignore_index)
    metrics = {
        "loss": loss,
        "accuracy": jnp.sum(correct, dtype=jnp.float32) / jnp.maximum(num_valid, 1.0),
        "learning_rate": jnp.asarray(learning_rate_fn(state.step), jnp.float32),
        "grad_norm": optax.tree.norm(grads),
    }
    if gate_weight is not None:
        metrics["gate_regularizer"] = regularizer
        metrics["total_loss"] = total
    return new_state, metrics


def _valid_extent(labels: jax.Array, ignore_index: int) -> tuple[jax.Array, jax.Array]:
    """``[B]`` heights and widths of the region up to the last row / column with a label."""
    valid = labels != ignore_index  # [B, H, W]
    rows = jnp.arange(labels.shape[1])
    cols = jnp.arange(labels.shape[2])
    height = jnp.max(jnp.where(jnp.any(valid, axis=2), rows + 1, 0), axis=1)  # [B]
    width = jnp.max(jnp.where(jnp.any(valid, axis=1), cols + 1, 0), axis=1)  # [B]
    return height, width


def _reflect_index(size: int, extent: jax.Array) -> jax.Array:
    """``[B, size]`` indices ``i`` inside, ``2 (n - 1) - i`` beyond ``n = extent``."""
    index = jnp.arange(size)[None, :]  # [1, size]
    last = jnp.maximum(extent[:, None] - 1, 0)  # [B, 1]
    return jnp.clip(jnp.where(index <= last, index, 2 * last - index), 0, last)


def valid_region_boundary_statistics(
    predictions: chex.Array,
    labels: chex.Array,
    *,
    num_classes: int,
    ignore_index: int = 255,
    dilation: int = 15,
) -> boundary_lib.BoundaryStatistics:
    """Boundary-metric counts of padded evaluation crops, on the unpadded images only.

    The evaluation pipeline pads every image at the bottom and right with the ignore
    label. :func:`spectral_jax.related.boundary_metrics.boundary_statistics` would take the border
    of that padding for an edge of the ground truth and count the valid pixels within
    ``dilation // 2`` of it as boundary pixels. Here each image's valid region is taken
    to end at its last row and last column holding a non-ignored label; beyond it both
    maps are filled by reflection without repeating the edge pixel (the border mode of
    :func:`spectral_jax.related.boundary_metrics.label_edges`), so the edges inside the region are
    those of the unpadded image, and the reflected edges, lying farther away than the
    edges they mirror, add no band pixel. Only pixels inside the region are counted: the
    result equals ``boundary_statistics`` of the unpadded images (an image whose last
    rows or columns are entirely ignored is cropped there, which changes nothing but the
    band of edges next to that ignored strip).

    Args:
      predictions: ``[B, H, W]`` integer predicted classes in ``[0, C)``.
      labels: ``[B, H, W]`` integer labels in ``[0, C)`` or ``ignore_index``.
      num_classes: static ``C``.
      ignore_index: the label of padding and of ignored pixels.
      dilation: static odd side of the band's square (15).

    Returns:
      :class:`spectral_jax.related.boundary_metrics.BoundaryStatistics` with ``[4, C]`` counts.
    """
    chex.assert_rank([predictions, labels], 3)
    chex.assert_equal_shape([predictions, labels])
    labels = jnp.asarray(labels, jnp.int32)
    predictions = jnp.asarray(predictions, jnp.int32)
    batch, h, w = labels.shape
    height, width = _valid_extent(labels, ignore_index)
    row_index = _reflect_index(h, height)[:, :, None]  # [B, H, 1]
    col_index = _reflect_index(w, width)[:, None, :]  # [B, 1, W]
    batch_index = jnp.arange(batch)[:, None, None]

    def fill(x):
        return x[batch_index, row_index, col_index]  # [B, H, W]

    regions = boundary_lib.boundary_regions(
        fill(predictions), fill(labels), dilation=dilation
    )  # [4, B, H, W]
    inside = (jnp.arange(h)[None, :, None] < height[:, None, None]) & (
        jnp.arange(w)[None, None, :] < width[:, None, None]
    )  # [B, H, W]
    label_ok = (labels >= 0) & (labels < num_classes) & (labels != ignore_index) & inside
    counted = regions & label_ok  # [4, B, H, W]
    prediction_ok = (predictions >= 0) & (predictions < num_classes)
    num_regions = len(boundary_lib.REGIONS)
    offsets = (jnp.arange(num_regions) * num_classes)[:, None, None, None]
    length = num_regions * num_classes

    def count(classes, weights):
        ids = (offsets + jnp.clip(classes, 0, num_classes - 1)).reshape(-1)
        flat = jnp.broadcast_to(weights, regions.shape).reshape(-1).astype(jnp.int32)
        return jnp.bincount(ids, weights=flat, length=length).reshape(num_regions, -1)

    return boundary_lib.BoundaryStatistics(
        intersection=count(labels, counted & (predictions == labels)),
        prediction_area=count(predictions, counted & prediction_ok),
        label_area=count(labels, counted),
    )


def eval_step(
    state: state_lib.TrainState,
    batch: Batch,
    statistics: SpectralStatistics | None,
    *,
    num_classes: int,
    ignore_index: int = 255,
    boundary_metrics: bool = False,
) -> tuple[dict[str, jax.Array], SpectralStatistics | None]:
    """Forward pass in inference mode; the batch's confusion matrix and loss sums.

    Args:
      state: the train state (BatchNorm uses the running statistics).
      batch: ``{"image": [B, H, W, 3], "label": [B, H, W]}``; padded pixels and padded
        examples carry ``ignore_index``.
      statistics: spectral statistics of ``[H, W]`` maps to add the batch to, or None.
      num_classes: ``C`` (static).
      ignore_index: label of pixels left out.
      boundary_metrics: static; also count the boundary metrics of Chen, Gu, Fu (2024)
        on the unpadded images (:func:`valid_region_boundary_statistics`).

    Returns:
      ``(sums, statistics)``: ``sums`` has ``confusion`` ``[C, C]`` int32, ``loss_sum``
      (CE summed over the valid pixels), ``num_valid`` and, with ``boundary_metrics``,
      ``boundary`` (:class:`spectral_jax.related.boundary_metrics.BoundaryStatistics`, ``[4, C]``
      int32 counts); ``statistics`` updated.
    """
    images, labels = batch["image"], batch["label"]
    logits = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, images, train=False
    )
    loss, num_valid = cross_entropy_loss(logits, labels, ignore_index=ignore_index)
    predictions = jnp.argmax(logits, axis=-1)
    confusion = metrics_lib.confusion_matrix(
        predictions, labels, num_classes=num_classes, ignore_index=ignore_index
    )
    if statistics is not None:
        statistics = statistics.update(logits.astype(jnp.float32), labels)
    sums = {"confusion": confusion, "loss_sum": loss * num_valid, "num_valid": num_valid}
    if boundary_metrics:
        sums["boundary"] = valid_region_boundary_statistics(
            predictions, labels, num_classes=num_classes, ignore_index=ignore_index
        )
    return sums, statistics


# ---------------------------------------------------------------------------------------
# Inputs.


@dataclasses.dataclass(frozen=True)
class InputPipeline:
    """The data of a run, as callables so that the loop decides where streams start.

    Attributes:
      train_batches: ``(start_step, batch_size, shard_index, shard_count) -> iterator``
        of this host's rows of the global batches: ``{"image": [B/n, S, S, 3] float32,
        "label": [B/n, S, S] int32}`` with ``B = batch_size`` (global) and ``n =
        shard_count``; ``start_step=k`` yields the stream from its ``k``-th batch.
      eval_batches: ``(batch_size, shard_index, shard_count) -> iterable`` of the same
        dicts over the evaluation split, every example once, padded with ignore labels
        (other keys, such as ``"mask"``, are ignored).
      num_classes: ``C``.
      ignore_index: the ignored label (255).
      num_train_examples: size of the training split (for the epoch length).
      class_names: ``C`` names, for the per-class IoU of the summary.
      image_mean, image_std: the per-channel normalisation of the images on the
        ``[0, 1]`` scale (``image = (rgb / 255 - mean) / std``), which the DCT input
        (:func:`dct_input_pipeline`) undoes; the defaults take the images as ``rgb / 255``.
    """

    train_batches: Callable[[int, int, int, int], Iterator[Batch]]
    eval_batches: Callable[[int, int, int], Iterable[Batch]]
    num_classes: int
    ignore_index: int
    num_train_examples: int
    class_names: tuple[str, ...]
    image_mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    image_std: tuple[float, ...] = (1.0, 1.0, 1.0)


def _label_transform(config: ml_collections.ConfigDict, info):
    """Block-wise weak labels (paper Sec. 3.3) when ``config.block_band_limit`` is set."""
    band_limit = config.get("block_band_limit")
    if band_limit is None:
        return None
    blockwise = importlib.import_module("spectral_jax.blockwise")
    return functools.partial(
        blockwise.blockwise_annotation_numpy,
        band_limit=int(band_limit),
        num_classes=int(info.num_classes),
        ignore_index=int(info.ignore_index),
    )


def create_input_pipeline(config: ml_collections.ConfigDict) -> InputPipeline:
    """The :class:`InputPipeline` of ``config.dataset`` from :mod:`spectral_jax.data`."""
    data = importlib.import_module("spectral_jax.data")
    info = data.dataset_info(config.dataset)
    train_source = data.load_split(config.dataset, config.train_split, data_dir=config.data_dir)
    eval_source = data.load_split(config.dataset, config.eval_split, data_dir=config.data_dir)
    label_transform = _label_transform(config, info)
    normalisation = dict(mean=info.mean, std=info.std)

    def train_batches(start_step, batch_size, shard_index, shard_count):
        return data.train_batches(
            train_source,
            batch_size=batch_size,
            crop_size=config.crop_size,
            seed=config.seed,
            start_step=start_step,
            scale_range=tuple(config.scale_range),
            flip=config.flip,
            ignore_index=info.ignore_index,
            label_transform=label_transform,
            shard_index=shard_index,
            shard_count=shard_count,
            worker_count=config.worker_count,
            **normalisation,
        )

    def eval_batches(batch_size, shard_index, shard_count):
        return data.eval_batches(
            eval_source,
            batch_size=batch_size,
            crop_size=config.eval_crop_size,
            ignore_index=info.ignore_index,
            shard_index=shard_index,
            shard_count=shard_count,
            **normalisation,
        )

    return InputPipeline(
        train_batches=train_batches,
        eval_batches=eval_batches,
        num_classes=int(info.num_classes),
        ignore_index=int(info.ignore_index),
        num_train_examples=len(train_source),
        class_names=tuple(info.class_names),
        image_mean=tuple(float(m) for m in info.mean),
        image_std=tuple(float(s) for s in info.std),
    )


# ---------------------------------------------------------------------------------------
# Frequency-domain input (Xu et al. 2020): DCT coefficients instead of RGB.

#: File, in the work directory, of the per-channel DCT statistics of a DCT run.
DCT_STATISTICS_FILE = "dct_statistics.npz"


@jax.jit
def _images_to_dct(images, image_mean, image_std):
    rgb = 255.0 * (images * image_std + image_mean)  # [B, H, W, 3] on [0, 255]
    return dct_input_lib.images_to_dct(rgb)  # [B, H / 8, W / 8, 192]


@jax.jit
def _normalized_dct(images, image_mean, image_std, mean, std):
    return dct_input_lib.normalize_channels(
        _images_to_dct(images, image_mean, image_std), mean, std
    )


def dct_channel_statistics(
    pipeline: InputPipeline, *, batch_size: int, num_batches: int
) -> dct_input_lib.ChannelStatistics:
    """Per-channel statistics of the DCT input over the first training batches.

    Xu et al. normalise every channel by its mean and variance over the training set
    (Sec. 3.1); this estimates them from the first ``num_batches`` batches of the
    training stream (random crops, as the model sees them), read whole on every host so
    that all hosts agree.

    Args:
      pipeline: the RGB input pipeline.
      batch_size: images per batch.
      num_batches: batches to read (positive).

    Returns:
      :class:`spectral_jax.dct_input_lib.ChannelStatistics` over 192 channels (float32).

    Raises:
      ValueError: for a non-positive ``num_batches``.
    """
    if num_batches < 1:
        raise ValueError(f"num_batches must be positive, got {num_batches}.")
    image_mean = jnp.asarray(pipeline.image_mean, jnp.float32)
    image_std = jnp.asarray(pipeline.image_std, jnp.float32)
    statistics = dct_input_lib.ChannelStatistics.create()
    update = jax.jit(dct_input_lib.ChannelStatistics.update)
    batches = pipeline.train_batches(0, batch_size, 0, 1)
    for _ in range(num_batches):
        images = jnp.asarray(next(batches)["image"], jnp.float32)
        statistics = update(statistics, _images_to_dct(images, image_mean, image_std))
    return statistics


def dct_input_pipeline(pipeline: InputPipeline, mean: chex.Array, std: chex.Array) -> InputPipeline:
    """The pipeline with ``"image"`` replaced by normalised DCT coefficients.

    Each batch's images ``[B, H, W, 3]`` (H, W multiples of 8) become
    ``normalize_channels(images_to_dct(rgb), mean, std)``, ``[B, H / 8, W / 8, 192]``,
    with ``rgb`` the images on ``[0, 255]`` (the pipeline's normalisation undone); the
    labels stay ``[B, H, W]``. Padding pixels (0, the mean colour) are transformed like
    the others.

    Args:
      pipeline: the RGB input pipeline.
      mean, std: ``[192]`` per-channel statistics (:func:`dct_channel_statistics`).
    """
    args = tuple(
        jnp.asarray(a, jnp.float32) for a in (pipeline.image_mean, pipeline.image_std, mean, std)
    )
    chex.assert_shape(args[2:], (dct_input_lib.NUM_DCT_CHANNELS,))

    def convert(batch: Batch) -> Batch:
        images = jnp.asarray(batch["image"], jnp.float32)
        return {**batch, "image": np.asarray(_normalized_dct(images, *args))}

    def train_batches(start_step, batch_size, shard_index, shard_count):
        return map(
            convert, pipeline.train_batches(start_step, batch_size, shard_index, shard_count)
        )

    def eval_batches(batch_size, shard_index, shard_count):
        return map(convert, pipeline.eval_batches(batch_size, shard_index, shard_count))

    return dataclasses.replace(pipeline, train_batches=train_batches, eval_batches=eval_batches)


def load_dct_statistics(workdir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)``, each ``[192]``, that a DCT run in ``workdir`` normalised with.

    Raises:
      FileNotFoundError: if ``workdir`` holds no :data:`DCT_STATISTICS_FILE`.
    """
    path = os.path.join(os.fspath(workdir), DCT_STATISTICS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no DCT statistics in {workdir} (expected {path}).")
    with np.load(path) as data:
        return np.asarray(data["mean"]), np.asarray(data["std"])


def _dct_run_pipeline(config, pipeline: InputPipeline, workdir: str) -> InputPipeline:
    """The DCT pipeline of a run; statistics read from ``workdir`` or computed and saved."""
    for field in ("crop_size", "eval_crop_size"):
        size = config.get(field)
        if size is not None and int(size) % 16:
            raise ValueError(
                f"config.{field} must be a multiple of 16 for the DCT model, got {size}."
            )
    path = os.path.join(workdir, DCT_STATISTICS_FILE)
    if os.path.exists(path):
        mean, std = load_dct_statistics(workdir)
    else:
        statistics = dct_channel_statistics(
            pipeline,
            batch_size=int(config.batch_size),
            num_batches=int(config.dct_statistics_batches),
        )
        mean, std = np.asarray(statistics.mean), np.asarray(statistics.std())
        if jax.process_index() == 0:
            np.savez(path, mean=mean, std=std, count=np.asarray(statistics.count))
    return dct_input_pipeline(pipeline, mean, std)


def _pad_batch(batch: Batch, batch_size: int, ignore_index: int) -> Batch:
    """Keeps image and label; pads a short batch with zero images and ignored labels."""
    batch = {"image": batch["image"], "label": batch["label"]}
    size = len(batch["label"])
    if size == batch_size:
        return batch
    pad = batch_size - size
    return {
        "image": np.concatenate(
            [batch["image"], np.zeros((pad, *batch["image"].shape[1:]), np.float32)]
        ),
        "label": np.concatenate(
            [batch["label"], np.full((pad, *batch["label"].shape[1:]), ignore_index, np.int32)]
        ),
    }


# ---------------------------------------------------------------------------------------
# Model, optional pretrained backbone and soft filter pruning.

_MODEL_CLASSES = {
    "deeplabv3plus": "DeepLabV3Plus",
    "dan": "DAN",
    "dct_deeplabv3plus": "DCTDeepLabV3Plus",
}

#: ``config.model.downsample_filter`` values: the module put before every strided block
#: of the backbone (Chen, Gu, Fu 2024). One object per name, so that equal configs give
#: equal (hashable) models.
DOWNSAMPLE_FILTERS = {
    "daf": models_lib.DeAliasingFilter,
    "freqmix": functools.partial(models_lib.FreqMix, reduction=16),
}


def is_dct_model(model_config: ml_collections.ConfigDict) -> bool:
    """Whether the model takes DCT coefficients (``name == "dct_deeplabv3plus"``)."""
    return model_config.name == "dct_deeplabv3plus"


def create_model(model_config: ml_collections.ConfigDict, *, num_classes: int):
    """The model named by ``model_config.name`` with the other fields as attributes.

    ``downsample_filter`` (``None``, ``"daf"`` or ``"freqmix"``) names a module of
    :data:`DOWNSAMPLE_FILTERS`; list values (``channels``) become tuples. The configs are
    written for DeepLab v3+: for ``name="dan"`` their ``low_level_channels`` is DAN's
    ``projection_channels`` (the width of its stage projections, the same role), so
    ``--config.model.name=dan`` works on any of them.

    Raises:
      ValueError: for an unknown name or filter, a name whose module is not available,
        or a DAN config with both ``low_level_channels`` and ``projection_channels``.
    """
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(model_config).items()}
    name = fields.pop("name")
    if name not in _MODEL_CLASSES:
        raise ValueError(f"config.model.name must be one of {tuple(_MODEL_CLASSES)}, got {name!r}.")
    if name == "dan" and "low_level_channels" in fields:
        if "projection_channels" in fields:
            raise ValueError(
                "config.model for DAN sets both low_level_channels and projection_channels; "
                "they are the same width, set one."
            )
        fields["projection_channels"] = fields.pop("low_level_channels")
    cls = getattr(models_lib, _MODEL_CLASSES[name], None)
    if cls is None:
        raise ValueError(f"config.model.name={name!r}: spectral_jax.models has no {name}.")
    if "downsample_filter" in fields:
        filter_name = fields.pop("downsample_filter")
        if filter_name is not None:
            if filter_name not in DOWNSAMPLE_FILTERS:
                raise ValueError(
                    f"config.model.downsample_filter must be None or one of "
                    f"{tuple(DOWNSAMPLE_FILTERS)}, got {filter_name!r}."
                )
            fields["downsample_filter"] = DOWNSAMPLE_FILTERS[filter_name]
    return cls(num_classes=num_classes, **fields)


def _load_pretrained_backbone(variables, path: str):
    pretrained = importlib.import_module("spectral_jax.models.pretrained")
    return pretrained.load_pretrained_backbone(variables, path)


def create_soft_prune_fn(model, pruning: dict[str, float]) -> Callable[[Any], Any]:
    """Soft filter pruning (He et al. 2018) of a train state, for the ends of epochs.

    Args:
      model: the model (its layer names give the plan, :func:`spectral_jax.models.pruning.pruning_plan`).
      pruning: rates by group, ``{"encoder": r_e, "decoder": r_d}``.

    Returns:
      a jitted ``state -> state`` that zeroes the smallest filters of every planned layer
      (params and the matching BatchNorm statistics).
    """
    pruning_lib = importlib.import_module("spectral_jax.models.pruning")
    plan = pruning_lib.pruning_plan(model, pruning_lib.PruningRates(**pruning))

    def prune(state: state_lib.TrainState) -> state_lib.TrainState:
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        variables, _ = pruning_lib.soft_prune(variables, plan)
        return state.replace(params=variables["params"], batch_stats=variables["batch_stats"])

    return jax.jit(prune, donate_argnums=0)


# ---------------------------------------------------------------------------------------
# The loop.


def _evaluate(
    state,
    pipeline: InputPipeline,
    config: ml_collections.ConfigDict,
    mesh,
    eval_fn,
) -> dict[str, Any]:
    """Confusion matrix, loss and spectral statistics over the evaluation split."""
    statistics = None
    boundary = None
    confusion = np.zeros((pipeline.num_classes, pipeline.num_classes), np.int64)
    loss_sum = num_valid = 0.0
    local_batch_size = sharding.local_batch_size(int(config.eval_batch_size), mesh)
    batches = pipeline.eval_batches(
        int(config.eval_batch_size), jax.process_index(), jax.process_count()
    )
    for batch in batches:
        batch = _pad_batch(batch, local_batch_size, pipeline.ignore_index)
        if statistics is None and config.spectral_statistics:
            # Created from the first batch, so that eval_crop_size=None (each split's own
            # size) works; the statistics need one size over the whole split.
            statistics = SpectralStatistics.create(
                batch["label"].shape[1:3], pipeline.num_classes, ignore_index=pipeline.ignore_index
            )
            statistics = sharding.replicate(statistics, mesh)
        sums, statistics = eval_fn(state, sharding.shard_batch(batch, mesh), statistics)
        confusion += np.asarray(jax.device_get(sums["confusion"]), np.int64)
        loss_sum += float(sums["loss_sum"])
        num_valid += float(sums["num_valid"])
        if "boundary" in sums:
            counts = [np.asarray(c, np.int64) for c in jax.device_get(sums["boundary"])]
            boundary = (
                counts
                if boundary is None
                else [a + b for a, b in zip(boundary, counts, strict=True)]
            )
    iou = metrics_lib.iou_from_confusion(confusion)
    result = {
        "confusion": confusion,
        "iou": iou,
        "mean_iou": metrics_lib.mean_iou(confusion),
        "pixel_accuracy": metrics_lib.pixel_accuracy(confusion),
        "loss": loss_sum / num_valid if num_valid else float("nan"),
    }
    if statistics is not None:
        statistics = jax.device_get(statistics)
        discrepancy = np.asarray(statistics.relative_discrepancy())
        result["band_profile"] = np.asarray(statistics.band_profile())
        result["mean_ce"] = float(statistics.mean_ce())
        result["parseval_error"] = float(statistics.parseval_error())
        result["relative_discrepancy"] = {
            nu: float(discrepancy[nu]) for nu in REPORTED_BAND_LIMITS if nu < len(discrepancy)
        }
    if boundary is not None:
        scores = boundary_lib.boundary_scores(boundary_lib.BoundaryStatistics(*boundary))
        result["boundary"] = {name: float(scores[name]) for name in BOUNDARY_SCORES}
    return result


def _eval_scalars(result: dict[str, Any]) -> dict[str, float]:
    scalars = {
        "eval/mean_iou": result["mean_iou"],
        "eval/pixel_accuracy": result["pixel_accuracy"],
        "eval/loss": result["loss"],
    }
    if "mean_ce" in result:
        scalars["eval/spectral_mean_ce"] = result["mean_ce"]
        for nu, value in result["relative_discrepancy"].items():
            scalars[f"eval/relative_discrepancy_{nu}"] = value
    for name, value in result.get("boundary", {}).items():
        scalars[f"eval/{name}"] = value
    return scalars


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, float | np.floating):
        return None if np.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def total_train_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
    """``config.num_train_steps`` if positive, else ``num_epochs * steps_per_epoch``."""
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return int(config.num_epochs) * steps_per_epoch(config, num_train_examples)


def steps_per_epoch(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
    """``num_train_examples // batch_size`` (at least 1): the incomplete batch is dropped."""
    return max(1, num_train_examples // int(config.batch_size))


@functools.lru_cache(maxsize=4)
def _cached_soft_prune_fn(model, pruning: tuple[tuple[str, float], ...]):
    return create_soft_prune_fn(model, dict(pruning))


@dataclasses.dataclass(frozen=True)
class _OptimizerSettings:
    learning_rate: float
    total_steps: int
    power: float
    momentum: float
    weight_decay: float


@dataclasses.dataclass(frozen=True)
class _TrainingProgram:
    """The compiled pieces of a run, shared by runs with the same settings."""

    mesh: Any
    model: Any
    abstract_state: Any
    init_fn: Callable[[], state_lib.TrainState]
    train_fn: Callable[..., Any]
    eval_fn: Callable[..., Any]


# To avoid re-compiling the steps when a process trains several runs with the same
# settings (a resumed run, a sweep in a notebook): one model, optimizer and set of jitted
# functions per settings, so that the train state's static fields (apply_fn, tx) match.
@functools.lru_cache(maxsize=4)
def _training_program(
    model,
    optimizer_settings: _OptimizerSettings,
    *,
    seed: int,
    image_size: int,
    num_classes: int,
    ignore_index: int,
    devices: tuple[jax.Device, ...],
    dct_input: bool = False,
    gate_weight: float | None = None,
    boundary_metrics: bool = False,
) -> _TrainingProgram:
    mesh = sharding.create_mesh(list(devices))
    replicated = sharding.replicated_sharding(mesh)
    schedule = state_lib.poly_schedule(
        optimizer_settings.learning_rate,
        total_steps=optimizer_settings.total_steps,
        power=optimizer_settings.power,
    )
    optimizer = state_lib.create_optimizer(
        schedule,
        momentum=optimizer_settings.momentum,
        weight_decay=optimizer_settings.weight_decay,
    )
    init_key, dropout_key = jax.random.split(jax.random.key(seed))

    def init_state():
        if dct_input:  # One position per 8 x 8 block, 192 channels.
            variables = state_lib.init_variables(
                model,
                init_key,
                image_size=image_size // dct_input_lib.BLOCK_SIZE,
                channels=dct_input_lib.NUM_DCT_CHANNELS,
            )
        else:
            variables = state_lib.init_variables(model, init_key, image_size=image_size)
        return state_lib.create_train_state(model, variables, optimizer)

    abstract_state = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated),
        jax.eval_shape(init_state),
    )
    batch_sharding = sharding.batch_sharding(mesh)
    batch_shardings = {"image": batch_sharding, "label": batch_sharding}
    train_fn = jax.jit(
        functools.partial(
            train_step,
            learning_rate_fn=schedule,
            dropout_key=dropout_key,
            ignore_index=ignore_index,
            gate_weight=gate_weight,
        ),
        in_shardings=(replicated, batch_shardings),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
    eval_fn = jax.jit(
        functools.partial(
            eval_step,
            num_classes=num_classes,
            ignore_index=ignore_index,
            boundary_metrics=boundary_metrics,
        ),
        in_shardings=(replicated, batch_shardings, replicated),
        out_shardings=(replicated, replicated),
    )
    return _TrainingProgram(
        mesh=mesh,
        model=model,
        abstract_state=abstract_state,
        init_fn=jax.jit(init_state, out_shardings=replicated),
        train_fn=train_fn,
        eval_fn=eval_fn,
    )


def _checkpoint_metadata(config, pipeline: InputPipeline, total_steps: int) -> dict[str, Any]:
    """What must match between a checkpoint and the run that resumes from it."""
    return {
        "model": config.model.to_dict(),
        "num_classes": pipeline.num_classes,
        "total_steps": total_steps,
        "batch_size": int(config.batch_size),
        "crop_size": int(config.crop_size),
        "pruning": {k: float(v) for k, v in dict(config.get("pruning") or {}).items()},
    }


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str | os.PathLike,
    *,
    input_pipeline: InputPipeline | None = None,
) -> dict[str, Any]:
    """Trains ``config``'s model, evaluates it, and writes checkpoints and metrics.

    Resumes from the latest checkpoint in ``workdir/checkpoints`` when there is one
    (the data stream resumes at the same batch), so a run killed and restarted ends
    with the same parameters as an uninterrupted one.

    Writes ``workdir/metrics.jsonl``, TensorBoard event files (with ``tensorboardX``),
    checkpoints and, at the end, ``workdir/summary.json``.

    Args:
      config: see ``experiments/configs/default.py``.
      workdir: output directory (created).
      input_pipeline: the data; by default :func:`create_input_pipeline` (tests pass
        generated data).

    Returns:
      the summary: final ``mean_iou``, ``iou`` per class, ``pixel_accuracy``,
      ``eval_loss``, ``mean_ce``, ``relative_discrepancy`` at 8/16/32/64 (where the
      crop allows), ``band_profile``, ``boundary`` (``biou``, ``bacc``, ``ferr``,
      ``merr``, ``derr``, ``boundary_pixel_accuracy`` on the unpadded images, or None
      with ``config.boundary_metrics=False``), ``steps``, ``resumed_from_step``,
      ``wall_time_s`` (of this process) and ``workdir``.

    DCT model (``config.model.name = "dct_deeplabv3plus"``): the images become
    normalised DCT coefficients (:func:`dct_input_pipeline`) with per-channel statistics
    of the first ``config.dct_statistics_batches`` training batches, computed at the
    start of a fresh run and kept in ``workdir/dct_statistics.npz`` (a resumed run reads
    them back); with ``config.model.gate`` the loss adds ``config.gate_weight`` times the
    gate regulariser.

    Raises:
      checkpointing.CheckpointError: when the workdir holds a checkpoint that cannot be
        restored (corrupt or from another configuration).
    """
    start_time = time.perf_counter()
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    pipeline = input_pipeline or create_input_pipeline(config)
    dct = is_dct_model(config.model)
    if dct:
        pipeline = _dct_run_pipeline(config, pipeline, workdir)
    gate_weight = None
    if dct and config.model.get("gate"):
        gate_weight = float(config.get("gate_weight", 0.0))
    total_steps = total_train_steps(config, pipeline.num_train_examples)
    epoch_steps = steps_per_epoch(config, pipeline.num_train_examples)
    pruning = {k: float(v) for k, v in dict(config.get("pruning") or {}).items()}
    program = _training_program(
        create_model(config.model, num_classes=pipeline.num_classes),
        _OptimizerSettings(
            learning_rate=float(config.learning_rate),
            total_steps=total_steps,
            power=float(config.lr_power),
            momentum=float(config.momentum),
            weight_decay=float(config.weight_decay),
        ),
        seed=int(config.seed),
        image_size=int(config.crop_size),
        num_classes=pipeline.num_classes,
        ignore_index=pipeline.ignore_index,
        devices=tuple(jax.devices()),
        dct_input=dct,
        gate_weight=gate_weight,
        boundary_metrics=bool(config.get("boundary_metrics", True)),
    )
    mesh = program.mesh
    sharding.local_batch_size(int(config.batch_size), mesh)  # Checks divisibility.

    manager = checkpointing.create_checkpoint_manager(workdir, max_to_keep=config.keep_checkpoints)
    metadata = _checkpoint_metadata(config, pipeline, total_steps)
    try:
        restored = checkpointing.restore_latest(manager, program.abstract_state, metadata=metadata)
    except BaseException:
        manager.close()
        raise
    if restored is None:
        state = program.init_fn()
        if config.get("pretrained_backbone"):
            variables = _load_pretrained_backbone(
                {"params": state.params, "batch_stats": state.batch_stats},
                config.pretrained_backbone,
            )
            state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
            state = sharding.replicate(state, mesh)
        start_step = 0
    else:
        state, start_step = restored
        _LOG.info("Resuming from checkpoint step %d in %s.", start_step, manager.directory)
    resumed_from = start_step if restored is not None else None
    train_fn, eval_fn = program.train_fn, program.eval_fn
    prune_fn = None
    if any(rate > 0 for rate in pruning.values()):
        prune_fn = _cached_soft_prune_fn(program.model, tuple(sorted(pruning.items())))

    writer = writers_lib.create_default_writer(workdir, tensorboard=config.tensorboard)
    progress = None
    try:
        log_every = max(1, int(config.log_every_steps))
        eval_every = int(config.eval_every_steps)
        checkpoint_every = int(config.checkpoint_every_steps)
        train_iter = pipeline.train_batches(
            start_step, int(config.batch_size), jax.process_index(), jax.process_count()
        )
        if config.progress_bar and jax.process_index() == 0:
            import tqdm

            progress = tqdm.tqdm(total=total_steps, initial=start_step, desc="train", unit="step")

        pending: list[dict[str, jax.Array]] = []
        result: dict[str, Any] | None = None
        for step in range(start_step + 1, total_steps + 1):
            batch = next(train_iter)
            state, step_metrics = train_fn(state, sharding.shard_batch(batch, mesh))
            pending.append(step_metrics)
            if prune_fn is not None and step % epoch_steps == 0:
                state = prune_fn(state)
            if step % log_every == 0 or step == total_steps:
                values = jax.device_get(pending)
                scalars = {
                    f"train/{name}": float(np.mean([v[name] for v in values])) for name in values[0]
                }
                scalars["train/epoch"] = step / epoch_steps
                writer.write_scalars(step, scalars)
                if progress is not None:
                    progress.set_postfix(loss=f"{scalars['train/loss']:.4f}")
                pending = []
            if (eval_every > 0 and step % eval_every == 0) or step == total_steps:
                result = _evaluate(state, pipeline, config, mesh, eval_fn)
                writer.write_scalars(step, _eval_scalars(result))
            if (checkpoint_every > 0 and step % checkpoint_every == 0) or step == total_steps:
                checkpointing.save_checkpoint(manager, step, state, metadata)
            if progress is not None:
                progress.update(1)
        if result is None:  # Resumed at the last step: evaluate the restored state.
            result = _evaluate(state, pipeline, config, mesh, eval_fn)
            writer.write_scalars(total_steps, _eval_scalars(result))
    finally:
        if progress is not None:
            progress.close()
        manager.wait_until_finished()
        manager.close()
        writer.flush()
        writer.close()

    names = pipeline.class_names or tuple(str(c) for c in range(pipeline.num_classes))
    summary = {
        "mean_iou": result["mean_iou"],
        "pixel_accuracy": result["pixel_accuracy"],
        "eval_loss": result["loss"],
        "iou": dict(zip(names, result["iou"].tolist(), strict=True)),
        "mean_ce": result.get("mean_ce"),
        "parseval_error": result.get("parseval_error"),
        "relative_discrepancy": result.get("relative_discrepancy"),
        "band_profile": result.get("band_profile"),
        "boundary": result.get("boundary"),
        "steps": total_steps,
        "epochs": total_steps / epoch_steps,
        "resumed_from_step": resumed_from,
        "num_devices": int(mesh.devices.size),
        "wall_time_s": time.perf_counter() - start_time,
        "workdir": os.path.abspath(workdir),
    }
    summary = _json_ready(summary)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as file:
            json.dump(summary, file, indent=2)
    return summary


def load_checkpoint(workdir: str | os.PathLike, *, step: int | None = None) -> tuple[Any, int]:
    """The raw state tree (nested dicts of NumPy-like arrays) of a checkpoint in ``workdir``.

    Args:
      workdir: the run's directory.
      step: the step to load; the latest when None.

    Returns:
      ``(tree, step)``: ``tree`` has ``"step"``, ``"params"``, ``"batch_stats"`` and
      ``"opt_state"``.

    Raises:
      checkpointing.CheckpointError: if there is no checkpoint.
    """
    manager = checkpointing.create_checkpoint_manager(workdir, asynchronous=False)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise checkpointing.CheckpointError(f"no checkpoint in {manager.directory}.")
        tree = manager.restore(step, args=checkpointing.restore_args_without_target())
        return tree["state"], int(step)
    finally:
        manager.close()
