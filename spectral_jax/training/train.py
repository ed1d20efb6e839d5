"""The training loop: train, evaluate, checkpoint, resume.

:func:`train_and_evaluate` builds the run from its config (the model from
:func:`spectral_jax.models.create_model`, the data from
:func:`spectral_jax.data.create_input_pipeline`), compiles :func:`spectral_jax.training.
steps.train_step` over the data mesh (:mod:`spectral_jax.data.sharding`), donating the
train state, and evaluates with the library's one evaluation loop
(:class:`spectral_jax.evaluation.Evaluator`).

The loop keeps the devices busy: the next batches are placed on the mesh ahead of the
step (:func:`spectral_jax.data.sharding.prefetch_to_device`, ``config.prefetch_batches``),
the host reads device values only at log, evaluation and checkpoint steps (the metrics
of the steps in between are fetched together), and orbax writes checkpoints in the
background.

The configuration fields are documented in ``experiments/configs/default.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import tqdm

from spectral_jax.data import dct_pipeline, sharding
from spectral_jax.data.inputs import InputPipeline, create_input_pipeline
from spectral_jax.evaluation import EvaluationResult, Evaluator, inference_apply_fn
from spectral_jax.models import pretrained, registry
from spectral_jax.training import checkpointing, steps
from spectral_jax.training import train_state as state_lib
from spectral_jax.training import writers as writers_lib

_LOG = logging.getLogger(__name__)


def total_train_steps(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
    """``config.num_train_steps`` if positive, else ``num_epochs * steps_per_epoch``."""
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return int(config.num_epochs) * steps_per_epoch(config, num_train_examples)


def steps_per_epoch(config: ml_collections.ConfigDict, num_train_examples: int) -> int:
    """``num_train_examples // batch_size`` (at least 1): the incomplete batch is dropped."""
    return max(1, num_train_examples // int(config.batch_size))


@functools.lru_cache(maxsize=4)
def _cached_soft_prune_fn(model: nn.Module, pruning: tuple[tuple[str, float], ...]):
    return steps.create_soft_prune_fn(model, dict(pruning))


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
    model: nn.Module
    abstract_state: Any
    init_fn: Callable[[], state_lib.TrainState]
    train_fn: Callable[..., Any]


# To avoid re-compiling the steps when a process trains several runs with the same
# settings (a resumed run, a sweep in a notebook): one model, optimizer and set of jitted
# functions per settings, so that the train state's static fields (apply_fn, tx) match.
@functools.lru_cache(maxsize=4)
def _training_program(
    model: nn.Module,
    optimizer_settings: _OptimizerSettings,
    *,
    seed: int,
    input_shape: tuple[int, ...],
    ignore_index: int,
    devices: tuple[jax.Device, ...],
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
    init_key, dropout_key = state_lib.run_keys(seed)
    size, _, channels = input_shape

    def init_state():
        variables = state_lib.init_variables(model, init_key, image_size=size, channels=channels)
        return state_lib.create_train_state(model, variables, optimizer)

    abstract_state = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=replicated),
        jax.eval_shape(init_state),
    )
    batch_sharding = sharding.batch_sharding(mesh)
    train_fn = jax.jit(
        functools.partial(
            steps.train_step,
            learning_rate_fn=schedule,
            dropout_key=dropout_key,
            ignore_index=ignore_index,
        ),
        in_shardings=(replicated, {"image": batch_sharding, "label": batch_sharding}),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
    return _TrainingProgram(
        mesh=mesh,
        model=model,
        abstract_state=abstract_state,
        init_fn=jax.jit(init_state, out_shardings=replicated),
        train_fn=train_fn,
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


def _evaluate(evaluator: Evaluator, state, pipeline: InputPipeline, config) -> EvaluationResult:
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    batches = pipeline.eval_batches(
        int(config.eval_batch_size), jax.process_index(), jax.process_count()
    )
    return evaluator(variables, batches)


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
    checkpoints and, at the end, ``workdir/summary.json``. Every ``log_every_steps`` the
    metrics are the means over the steps since the last log, with
    ``train/steps_per_second``: those steps over the wall-clock time since the last log
    (evaluations and checkpoint saves in between included).

    Args:
      config: see ``experiments/configs/default.py``.
      workdir: output directory (created).
      input_pipeline: the data; by default :func:`spectral_jax.data.create_input_pipeline`
        (tests pass generated data).

    Returns:
      the summary: final ``mean_iou``, ``iou`` per class, ``pixel_accuracy``,
      ``eval_loss``, ``mean_ce``, ``relative_discrepancy`` at 8/16/32/64 (where the
      crop allows), ``band_profile``, ``boundary`` (``biou``, ``bacc``, ``ferr``,
      ``merr``, ``derr``, ``boundary_pixel_accuracy`` on the unpadded images, or None
      with ``config.boundary_metrics=False``), ``steps``, ``resumed_from_step``,
      ``wall_time_s`` (of this process) and ``workdir``.

    DCT model (``config.model.name = "dct_deeplabv3plus"``): the images become
    normalised DCT coefficients (:func:`spectral_jax.data.dct_pipeline.dct_run_pipeline`)
    with per-channel statistics of the first ``config.dct_statistics_batches`` training
    batches, computed at the start of a fresh run and kept in
    ``workdir/dct_statistics.npz`` (a resumed run reads them back); with
    ``config.model.gate`` the model adds ``config.model.gate_weight`` times the gate
    regulariser to the loss.

    Raises:
      checkpointing.CheckpointError: when the workdir holds a checkpoint that cannot be
        restored (corrupt or from another configuration).
    """
    start_time = time.perf_counter()
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    pipeline = input_pipeline or create_input_pipeline(config)
    pipeline = dct_pipeline.RUN_INPUTS[registry.input_kind(config.model)](config, pipeline, workdir)
    total_steps = total_train_steps(config, pipeline.num_train_examples)
    epoch_steps = steps_per_epoch(config, pipeline.num_train_examples)
    pruning = {k: float(v) for k, v in dict(config.get("pruning") or {}).items()}
    program = _training_program(
        registry.create_model(config.model, num_classes=pipeline.num_classes),
        _OptimizerSettings(
            learning_rate=float(config.learning_rate),
            total_steps=total_steps,
            power=float(config.lr_power),
            momentum=float(config.momentum),
            weight_decay=float(config.weight_decay),
        ),
        seed=int(config.seed),
        input_shape=registry.input_shape(config.model, image_size=int(config.crop_size)),
        ignore_index=pipeline.ignore_index,
        devices=tuple(jax.devices()),
    )
    mesh = program.mesh
    sharding.local_batch_size(int(config.batch_size), mesh)  # Checks divisibility.
    evaluator = Evaluator(
        inference_apply_fn(program.model),
        num_classes=pipeline.num_classes,
        ignore_index=pipeline.ignore_index,
        spectral_statistics=bool(config.spectral_statistics),
        boundary_metrics=bool(config.get("boundary_metrics", True)),
        mesh=mesh,
        batch_size=sharding.local_batch_size(int(config.eval_batch_size), mesh),
    )

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
            variables = pretrained.load_pretrained_backbone(
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
        batches = sharding.prefetch_to_device(
            ({"image": batch["image"], "label": batch["label"]} for batch in train_iter),
            mesh,
            size=int(config.get("prefetch_batches", 2)),
        )
        if config.progress_bar and jax.process_index() == 0:
            progress = tqdm.tqdm(total=total_steps, initial=start_step, desc="train", unit="step")

        # The host never waits for the device between log points: the step's metrics
        # stay on the device until a log step fetches them all at once, and every
        # decision reads the host's step counter. Only logging, evaluation and
        # checkpointing read device values (the state is copied to the host when a save
        # starts, and written while the loop goes on).
        pending: list[dict[str, jax.Array]] = []
        result: EvaluationResult | None = None
        log_time = time.perf_counter()
        for step in range(start_step + 1, total_steps + 1):
            state, step_metrics = program.train_fn(state, next(batches))
            pending.append(step_metrics)
            if prune_fn is not None and step % epoch_steps == 0:
                state = prune_fn(state)
            if step % log_every == 0 or step == total_steps:
                values = jax.device_get(pending)
                scalars = {
                    f"train/{name}": float(np.mean([v[name] for v in values])) for name in values[0]
                }
                now = time.perf_counter()
                scalars["train/steps_per_second"] = len(values) / (now - log_time)
                scalars["train/epoch"] = step / epoch_steps
                writer.write_scalars(step, scalars)
                if progress is not None:
                    progress.set_postfix(loss=f"{scalars['train/loss']:.4f}")
                pending, log_time = [], now
            if (eval_every > 0 and step % eval_every == 0) or step == total_steps:
                result = _evaluate(evaluator, state, pipeline, config)
                writer.write_scalars(step, result.scalars())
            if (checkpoint_every > 0 and step % checkpoint_every == 0) or step == total_steps:
                checkpointing.save_checkpoint(manager, step, state, metadata)
            if progress is not None:
                progress.update(1)
        if result is None:  # Resumed at the last step: evaluate the restored state.
            result = _evaluate(evaluator, state, pipeline, config)
            writer.write_scalars(total_steps, result.scalars())
    finally:
        if progress is not None:
            progress.close()
        # Async saves write in the background: a checkpoint is complete (and readable by
        # the caller) only once the manager has finished.
        manager.wait_until_finished()
        manager.close()
        writer.flush()
        writer.close()

    names = pipeline.class_names or tuple(str(c) for c in range(pipeline.num_classes))
    summary = {
        "mean_iou": result.mean_iou,
        "pixel_accuracy": result.pixel_accuracy,
        "eval_loss": result.loss,
        "iou": dict(zip(names, result.iou.tolist(), strict=True)),
        "mean_ce": result.mean_ce,
        "parseval_error": result.parseval_error,
        "relative_discrepancy": result.relative_discrepancy,
        "band_profile": result.band_profile,
        "boundary": result.boundary,
        "steps": total_steps,
        "epochs": total_steps / epoch_steps,
        "resumed_from_step": resumed_from,
        "num_devices": int(mesh.devices.size),
        "wall_time_s": time.perf_counter() - start_time,
        "workdir": os.path.abspath(workdir),
    }
    summary = writers_lib.json_ready(summary)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.json"), "w", encoding="utf-8") as file:
            json.dump(summary, file, indent=2)
    return summary
