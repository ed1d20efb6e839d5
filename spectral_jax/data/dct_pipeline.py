"""Frequency-domain input (Xu et al. 2020): DCT coefficients instead of RGB images.

A run of :class:`spectral_jax.models.DCTDeepLabV3Plus` reads the RGB pipeline of its
data set (:class:`spectral_jax.data.inputs.InputPipeline`) through
:func:`dct_input_pipeline`: every image ``[B, H, W, 3]`` becomes its block DCT
``[B, H / s, W / s, 192]`` (:func:`spectral_jax.related.dct_input.images_to_dct`) in the
model's layout, ``config.model.layout`` (``"segmentation"``, ``s = 4``, by default;
``"classification"``, ``s = 8``), normalised per channel by statistics of the first
training batches (:func:`_dct_channel_statistics`), on the host's CPU device as part of
the input pipeline. :func:`dct_run_pipeline` computes
those statistics at the start of a fresh run and keeps them, with the layout, in the
work directory (:data:`DCT_STATISTICS_FILE`), so that a resumed run and a later
evaluation (:func:`load_dct_statistics`) normalise alike.

Example (evaluating a trained DCT run)::

  layout = dct_layout(config)
  mean, std = load_dct_statistics(workdir, layout=layout)
  pipeline = dct_input_pipeline(create_input_pipeline(config), mean, std, layout=layout)
"""

from __future__ import annotations

import dataclasses
import functools
import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from spectral_jax import parallel
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


# Statistics files written before the layouts existed hold the classification layout.
_LAYOUT_OF_UNLABELLED_FILES = "classification"


def dct_layout(config: ml_collections.ConfigDict) -> dct_input_lib.DCTLayout:
    """The DCT layout of a run: ``config.model.layout``, default
    :data:`spectral_jax.related.dct_input.DEFAULT_LAYOUT` (``"segmentation"``).

    Raises:
      ValueError: for an unknown layout.
    """
    return dct_input_lib.check_layout(config.model.get("layout", dct_input_lib.DEFAULT_LAYOUT))


@functools.partial(jax.jit, static_argnames="layout")
def _images_to_dct(images, image_mean, image_std, *, layout):
    rgb = 255.0 * (images * image_std + image_mean)  # [B, H, W, 3] on [0, 255]
    return dct_input_lib.images_to_dct(rgb, layout=layout)  # [B, H / s, W / s, 192]


@functools.partial(jax.jit, static_argnames="layout")
def _normalized_dct(images, image_mean, image_std, mean, std, *, layout):
    return dct_input_lib.normalize_channels(
        _images_to_dct(images, image_mean, image_std, layout=layout), mean, std
    )


def _dct_channel_statistics(
    pipeline: InputPipeline,
    *,
    batch_size: int,
    num_batches: int,
    layout: dct_input_lib.DCTLayout = dct_input_lib.DEFAULT_LAYOUT,
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
      layout: the DCT layout (:data:`spectral_jax.related.dct_input.DCT_LAYOUTS`).

    Returns:
      :class:`spectral_jax.related.dct_input.ChannelStatistics` over 192 channels
      (float32).

    Raises:
      ValueError: for a non-positive ``num_batches`` or an unknown ``layout``.
    """
    dct_input_lib.check_layout(layout)
    if num_batches < 1:
        raise ValueError(f"num_batches must be positive, got {num_batches}.")
    image_mean = jnp.asarray(pipeline.image_mean, jnp.float32)
    image_std = jnp.asarray(pipeline.image_std, jnp.float32)
    statistics = dct_input_lib.ChannelStatistics.create()
    update = jax.jit(dct_input_lib.ChannelStatistics.update)
    batches = pipeline.train_batches(0, batch_size, 0, 1)
    for _ in range(num_batches):
        images = jnp.asarray(next(batches)["image"], jnp.float32)
        coefficients = _images_to_dct(images, image_mean, image_std, layout=layout)
        statistics = update(statistics, coefficients)
    return statistics


def dct_input_pipeline(
    pipeline: InputPipeline,
    mean: chex.Array,
    std: chex.Array,
    *,
    layout: dct_input_lib.DCTLayout = dct_input_lib.DEFAULT_LAYOUT,
) -> InputPipeline:
    """The pipeline with ``"image"`` replaced by normalised DCT coefficients.

    Each batch's images ``[B, H, W, 3]`` (H, W multiples of ``s``) become
    ``normalize_channels(images_to_dct(rgb, layout=layout), mean, std)``,
    ``[B, H / s, W / s, 192]`` (``s`` 4 for the segmentation layout, 8 for the
    classification layout), with ``rgb`` the images on ``[0, 255]`` (the pipeline's
    normalisation undone); the labels stay ``[B, H, W]``. Padding pixels (0, the mean
    colour) are transformed like the others.

    Args:
      pipeline: the RGB input pipeline.
      mean, std: ``[192]`` per-channel statistics (:func:`_dct_channel_statistics`, of
        the same layout).
      layout: the DCT layout, the model's ``layout``.

    Raises:
      ValueError: for an unknown ``layout``.
    """
    dct_input_lib.check_layout(layout)
    host = _host_cpu()
    args = tuple(
        jax.device_put(np.asarray(a, np.float32), host)
        for a in (pipeline.image_mean, pipeline.image_std, mean, std)
    )
    chex.assert_shape(args[2:], (dct_input_lib.NUM_DCT_CHANNELS,))

    def convert(batch: Batch) -> Batch:
        images = jax.device_put(np.asarray(batch["image"], np.float32), host)
        return {**batch, "image": np.asarray(_normalized_dct(images, *args, layout=layout))}

    def train_batches(start_step, batch_size, shard_index, shard_count, seed=None):
        return map(
            convert,
            pipeline.train_batches(start_step, batch_size, shard_index, shard_count, seed=seed),
        )

    def eval_batches(batch_size, shard_index, shard_count):
        return map(convert, pipeline.eval_batches(batch_size, shard_index, shard_count))

    return dataclasses.replace(pipeline, train_batches=train_batches, eval_batches=eval_batches)


def load_dct_statistics(
    workdir: str | os.PathLike, *, layout: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)``, each ``[192]``, that a DCT run in ``workdir`` normalised with.

    Args:
      workdir: the run's work directory.
      layout: the layout the caller will transform with; ``None`` skips the check. Files
        written before layouts were recorded count as ``"classification"``.

    Raises:
      FileNotFoundError: if ``workdir`` holds no :data:`DCT_STATISTICS_FILE`.
      ValueError: if the statistics were computed for another ``layout``.
    """
    path = os.path.join(os.fspath(workdir), DCT_STATISTICS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no DCT statistics in {workdir} (expected {path}).")
    with np.load(path) as data:
        saved = str(data["layout"]) if "layout" in data else _LAYOUT_OF_UNLABELLED_FILES
        mean, std = np.asarray(data["mean"]), np.asarray(data["std"])
    if layout is not None and dct_input_lib.check_layout(layout) != saved:
        raise ValueError(
            f"the DCT statistics in {path} are for the {saved!r} layout, not {layout!r}; "
            "use another work directory (or remove the file to recompute them)."
        )
    return mean, std


def dct_run_pipeline(
    config: ml_collections.ConfigDict, pipeline: InputPipeline, workdir: str | os.PathLike
) -> InputPipeline:
    """The DCT pipeline of a run; statistics read from ``workdir`` or computed and saved.

    The layout is :func:`dct_layout` (``config.model.layout``). A fresh run estimates the
    statistics over ``config.dct_statistics_batches`` training batches of
    ``config.batch_size`` images and writes them, with the layout, to
    ``workdir/`` :data:`DCT_STATISTICS_FILE` (with several processes, process 0 computes
    and writes them while the others wait, then every process reads the file); a
    resumed run reads them back.

    Raises:
      ValueError: if ``config.crop_size`` or ``config.eval_crop_size`` is not a multiple
        of 16 (whole DCT blocks at output stride 16 in either layout), for an unknown
        layout, or if the saved statistics are of another layout.
    """
    layout = dct_layout(config)
    for field in ("crop_size", "eval_crop_size"):
        size = config.get(field)
        if size is not None and int(size) % 16:
            raise ValueError(
                f"config.{field} must be a multiple of 16 for the DCT model, got {size}."
            )
    path = os.path.join(os.fspath(workdir), DCT_STATISTICS_FILE)

    def compute_and_save():
        statistics = _dct_channel_statistics(
            pipeline,
            batch_size=int(config.batch_size),
            num_batches=int(config.dct_statistics_batches),
            layout=layout,
        )
        # Written whole, then renamed: a reader never finds a partly written file.
        partial = f"{path}.{os.getpid()}.tmp"
        with open(partial, "wb") as file:
            np.savez(
                file,
                mean=np.asarray(statistics.mean),
                std=np.asarray(statistics.std()),
                count=np.asarray(statistics.count),
                layout=np.asarray(layout),
            )
        os.replace(partial, path)

    # Several processes: process 0 computes and writes them, the others wait and read.
    parallel.create_once(
        f"dct_run_pipeline: {DCT_STATISTICS_FILE}", lambda: os.path.exists(path), compute_and_save
    )
    mean, std = load_dct_statistics(workdir, layout=layout)
    return dct_input_pipeline(pipeline, mean, std, layout=layout)


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
