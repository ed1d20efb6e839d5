"""Frequency-domain input (Xu et al. 2020): DCT coefficients instead of RGB images.

A run of :class:`spectral_jax.models.DCTDeepLabV3Plus` reads the RGB pipeline of its
data set (:class:`spectral_jax.data.inputs.InputPipeline`) through
:func:`dct_input_pipeline`: every image ``[B, H, W, 3]`` becomes its block DCT
``[B, H / 8, W / 8, 192]`` (:func:`spectral_jax.related.dct_input.images_to_dct`),
normalised per channel by statistics of the first training batches
(:func:`dct_channel_statistics`), on the host's CPU device as part of the input
pipeline. :func:`dct_run_pipeline` computes those statistics at
the start of a fresh run and keeps them in the work directory
(:data:`DCT_STATISTICS_FILE`), so that a resumed run and a later evaluation
(:func:`load_dct_statistics`) normalise alike.

Example (evaluating a trained DCT run)::

  mean, std = load_dct_statistics(workdir)
  pipeline = dct_input_pipeline(create_input_pipeline(config), mean, std)
"""

from __future__ import annotations

import dataclasses
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from spectral_jax.data.inputs import Batch, InputPipeline
from spectral_jax.related import dct_input as dct_input_lib

#: File, in the work directory, of the per-channel DCT statistics of a DCT run.
DCT_STATISTICS_FILE = "dct_statistics.npz"


def _host_cpu() -> jax.Device:
    """The CPU device, where the pipeline computes the DCT of its batches.

    On the default device of an accelerator, reading the coefficients back would make the
    host wait there for the training steps queued before them, at every step; on the CPU
    the DCT is part of the host's input pipeline, computed while the devices train.
    """
    try:
        return jax.local_devices(backend="cpu")[0]
    except RuntimeError:  # JAX_PLATFORMS without "cpu".
        return jax.local_devices()[0]


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
      :class:`spectral_jax.related.dct_input.ChannelStatistics` over 192 channels
      (float32).

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
    host = _host_cpu()
    args = tuple(
        jax.device_put(np.asarray(a, np.float32), host)
        for a in (pipeline.image_mean, pipeline.image_std, mean, std)
    )
    chex.assert_shape(args[2:], (dct_input_lib.NUM_DCT_CHANNELS,))

    def convert(batch: Batch) -> Batch:
        images = jax.device_put(np.asarray(batch["image"], np.float32), host)
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


def dct_run_pipeline(
    config: ml_collections.ConfigDict, pipeline: InputPipeline, workdir: str | os.PathLike
) -> InputPipeline:
    """The DCT pipeline of a run; statistics read from ``workdir`` or computed and saved.

    A fresh run estimates the statistics over ``config.dct_statistics_batches`` training
    batches of ``config.batch_size`` images and writes them to
    ``workdir/`` :data:`DCT_STATISTICS_FILE` (process 0); a resumed run reads them back.

    Raises:
      ValueError: if ``config.crop_size`` or ``config.eval_crop_size`` is not a multiple
        of 16 (the DCT model's blocks of 8 at stride 16).
    """
    for field in ("crop_size", "eval_crop_size"):
        size = config.get(field)
        if size is not None and int(size) % 16:
            raise ValueError(
                f"config.{field} must be a multiple of 16 for the DCT model, got {size}."
            )
    path = os.path.join(os.fspath(workdir), DCT_STATISTICS_FILE)
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


def rgb_run_pipeline(
    config: ml_collections.ConfigDict, pipeline: InputPipeline, workdir: str | os.PathLike
) -> InputPipeline:
    """The run's pipeline unchanged: what an RGB model takes (same signature as
    :func:`dct_run_pipeline`)."""
    del config, workdir
    return pipeline


#: A run's pipeline for each kind of model input
#: (:data:`spectral_jax.models.registry.INPUT_KINDS`): ``RUN_INPUTS[kind](config,
#: pipeline, workdir)``, so that the training loop never asks which model it trains.
RUN_INPUTS = {"rgb": rgb_run_pipeline, "dct": dct_run_pipeline}
