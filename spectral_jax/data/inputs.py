"""The inputs of a training run: a config's data as an :class:`InputPipeline`.

:func:`create_input_pipeline` turns ``config.dataset`` and its splits into the two
streams the trainer and the evaluator read (:mod:`spectral_jax.data.pipeline`), with the
block-wise weak labels of the paper (Sec. 3.3) when ``config.block_band_limit`` is set.
:func:`pad_batch` fills a short evaluation batch with ignored examples, so that every
batch has one compiled shape; :func:`take_examples` reads the first examples of a split.

Example (the run's evaluation batches, as the trainer reads them)::

  pipeline = create_input_pipeline(config)  # config: experiments/configs/tiny.py
  for batch in pipeline.eval_batches(config.eval_batch_size, 0, 1):
      batch["image"], batch["label"], batch["mask"]  # [8, 129, 129, 3], [8, 129, 129], [8]
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ml_collections
import numpy as np

from spectral_jax import blockwise
from spectral_jax.data import pipeline as pipeline_lib

Batch = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class InputPipeline:
    """The data of a run, as callables so that the loop decides where streams start.

    Attributes:
      train_batches: ``(start_step, batch_size, shard_index, shard_count, seed=None) ->
        iterator`` of this host's rows of the global batches: ``{"image": [B/n, S, S, 3]
        float32, "label": [B/n, S, S] int32}`` with ``B = batch_size`` (global) and ``n =
        shard_count``; ``start_step=k`` yields the stream from its ``k``-th batch;
        ``seed`` sets the shuffles and the augmentation (None: the config's seed). The
        trainer passes each replica's seed (``config.seed + k``, ``config.num_seeds``).
      eval_batches: ``(batch_size, shard_index, shard_count) -> iterable`` of the same
        dicts over the evaluation split, every example once, padded with ignore labels;
        an optional ``"mask"`` ``[B/n]`` bool marks the real examples (False on the
        examples that complete the last batch).
      num_classes: ``C``.
      ignore_index: the ignored label (255).
      num_train_examples: size of the training split (for the epoch length).
      class_names: ``C`` names, for the per-class IoU of the summary.
      image_mean, image_std: the per-channel normalisation of the images on the
        ``[0, 1]`` scale (``image = (rgb / 255 - mean) / std``), which the DCT input
        (:func:`spectral_jax.data.dct_pipeline.dct_input_pipeline`) undoes; the defaults
        take the images as ``rgb / 255``.
    """

    train_batches: Callable[..., Iterator[Batch]]
    eval_batches: Callable[[int, int, int], Iterable[Batch]]
    num_classes: int
    ignore_index: int
    num_train_examples: int
    class_names: tuple[str, ...]
    image_mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    image_std: tuple[float, ...] = (1.0, 1.0, 1.0)


def blockwise_label_transform(
    config: ml_collections.ConfigDict, info: pipeline_lib.SegmentationDatasetInfo
) -> Callable[[np.ndarray], np.ndarray] | None:
    """Block-wise weak labels (paper Sec. 3.3) when ``config.block_band_limit`` is set.

    Returns:
      ``label [H, W] -> label [H, W]`` (:func:`spectral_jax.blockwise.
      blockwise_annotation_numpy` at the band limit), or None for pixel-wise labels.
    """
    band_limit = config.get("block_band_limit")
    if band_limit is None:
        return None
    return functools.partial(
        blockwise.blockwise_annotation_numpy,
        band_limit=int(band_limit),
        num_classes=int(info.num_classes),
        ignore_index=int(info.ignore_index),
    )


def create_input_pipeline(config: ml_collections.ConfigDict) -> InputPipeline:
    """The :class:`InputPipeline` of ``config.dataset`` (:mod:`spectral_jax.data.pipeline`).

    Reads ``dataset``, ``data_dir``, ``train_split``, ``eval_split``, ``crop_size``,
    ``eval_crop_size``, ``scale_range``, ``flip``, ``seed``, ``worker_count``,
    ``block_band_limit`` and ``ignore_index`` (:mod:`spectral_jax.training.config`; when
    set, it replaces the data set's ignore label, also as the padding's label).
    """
    info = pipeline_lib.dataset_info(config.dataset)
    train_source = pipeline_lib.load_split(
        config.dataset, config.train_split, data_dir=config.data_dir
    )
    eval_source = pipeline_lib.load_split(
        config.dataset, config.eval_split, data_dir=config.data_dir
    )
    return input_pipeline_from_sources(config, info, train_source, eval_source)


def input_pipeline_from_sources(
    config: ml_collections.ConfigDict,
    info: pipeline_lib.SegmentationDatasetInfo,
    train_source,
    eval_source,
) -> InputPipeline:
    """The :class:`InputPipeline` over given random-access sources, with ``config``'s
    augmentation, crops and block-wise labels (as :func:`create_input_pipeline`, which
    loads the sources of ``config.dataset``) and ``info``'s classes and normalisation."""
    ignore_index = config.get("ignore_index")
    if ignore_index is not None:
        if 0 <= ignore_index < info.num_classes:
            raise ValueError(
                f"config.ignore_index={ignore_index} is a class of {info.name} "
                f"(C = {info.num_classes}); it must lie outside [0, C)."
            )
        # The config's ignore label replaces the data set's (padding included).
        info = dataclasses.replace(info, ignore_index=int(ignore_index))
    label_transform = blockwise_label_transform(config, info)
    normalisation: dict[str, Any] = dict(mean=info.mean, std=info.std)

    def train_batches(start_step, batch_size, shard_index, shard_count, seed=None):
        return pipeline_lib.train_batches(
            train_source,
            batch_size=batch_size,
            crop_size=config.crop_size,
            seed=config.seed if seed is None else seed,
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
        return pipeline_lib.eval_batches(
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


def example_mask(batch: Batch) -> np.ndarray:
    """``[B]`` bool: the batch's ``"mask"`` (real examples), all True without one."""
    size = len(batch["label"])
    if "mask" not in batch:
        return np.ones((size,), bool)
    return np.asarray(batch["mask"], bool).reshape(size)


def pad_batch(batch: Batch, batch_size: int, ignore_index: int) -> Batch:
    """``image``, ``label`` and ``mask`` of ``batch``, completed to ``batch_size`` examples.

    The added examples have zero images, labels ``ignore_index`` and mask False, so that
    every batch of a split has one shape (one compilation) and the added ones count in no
    metric. Other keys are dropped.

    Args:
      batch: ``{"image": [b, ...], "label": [b, H, W]}`` and optionally ``"mask"`` ``[b]``.
      batch_size: ``B >= b``.
      ignore_index: the label of the added examples.

    Returns:
      ``{"image": [B, ...] float32, "label": [B, H, W] int32, "mask": [B] bool}``.

    Raises:
      ValueError: if the batch holds more than ``batch_size`` examples.

    Example:
      >>> batch = {"image": np.ones((1, 2, 2, 3)), "label": np.zeros((1, 2, 2), int)}
      >>> padded = pad_batch(batch, 3, ignore_index=255)
      >>> padded["image"].shape, padded["label"][:, 0, 0], padded["mask"]
      ((3, 2, 2, 3), array([  0, 255, 255], dtype=int32), array([ True, False, False]))
    """
    images = np.asarray(batch["image"], np.float32)
    labels = np.asarray(batch["label"], np.int32)
    mask = example_mask(batch)
    pad = batch_size - len(labels)
    if pad < 0:
        raise ValueError(f"batch of {len(labels)} examples exceeds batch_size={batch_size}.")
    if pad == 0:
        return {"image": images, "label": labels, "mask": mask}
    return {
        "image": np.concatenate([images, np.zeros((pad, *images.shape[1:]), np.float32)]),
        "label": np.concatenate(
            [labels, np.full((pad, *labels.shape[1:]), ignore_index, np.int32)]
        ),
        "mask": np.concatenate([mask, np.zeros((pad,), bool)]),
    }


def take_examples(batches: Iterable[Batch], num_examples: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``num_examples`` real examples (``"mask"`` True) of a stream of batches.

    Reads only as many batches as it needs.

    Args:
      batches: evaluation batches (:attr:`InputPipeline.eval_batches`).
      num_examples: how many to take (positive).

    Returns:
      ``images [N, H, W, 3]`` and ``labels [N, H, W]``, ``N = num_examples`` or fewer when
      the split is shorter.

    Raises:
      ValueError: for a non-positive ``num_examples``.
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be positive, got {num_examples}.")
    images, labels = [], []
    for batch in batches:
        keep = example_mask(batch)
        images.extend(np.asarray(batch["image"])[keep])
        labels.extend(np.asarray(batch["label"])[keep])
        if len(images) >= num_examples:
            break
    return np.stack(images[:num_examples]), np.stack(labels[:num_examples])
