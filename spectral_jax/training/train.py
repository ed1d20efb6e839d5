"""The training loop: train, evaluate, checkpoint, resume.

:func:`train_and_evaluate` builds the run from its config (the model from
:func:`spectral_jax.models.create_model`, the data from
:func:`spectral_jax.data.create_input_pipeline`), compiles :func:`spectral_jax.training.
steps.train_step` over the data mesh (:mod:`spectral_jax.parallel`), donating the
train state, and evaluates with the library's one evaluation loop
(:class:`spectral_jax.evaluation.Evaluator`).

The loop keeps the devices busy: the next batches are placed on the mesh ahead of the
step (:func:`spectral_jax.parallel.prefetch_to_device`, ``config.prefetch_batches``),
the host reads device values only at log, evaluation and checkpoint steps (the metrics
of the steps in between are fetched together), and orbax writes checkpoints in the
background.

The configuration fields are documented in :mod:`spectral_jax.training.config`.
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
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from spectral_jax import parallel
from spectral_jax.data import dct_pipeline
from spectral_jax.data.inputs import InputPipeline, create_input_pipeline
from spectral_jax.evaluation import (
    EvaluationResult,
    Evaluator,
    compute_spread,
    inference_apply_fn,
)
from spectral_jax.models import pretrained, registry, segmentation_checkpoints
from spectral_jax.training import checkpointing, steps
from spectral_jax.training import config as config_schema
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


def replica_seeds(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """The seeds of a run's replicas: ``config.seed + k`` for ``k < config.num_seeds``.

    Raises:
      ValueError: if ``config.num_seeds`` is not a positive integer.
    """
    num_seeds = config.get("num_seeds", 1)
    if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
        raise ValueError(f"config.num_seeds must be a positive integer, got {num_seeds!r}.")
    return tuple(int(config.seed) + k for k in range(num_seeds))


@functools.lru_cache(maxsize=4)
def _cached_soft_prune_fn(
    model: nn.Module, pruning: tuple[tuple[str, float], ...], over_replicas: bool
):
    return steps.create_soft_prune_fn(model, dict(pruning), over_replicas=over_replicas)


@dataclasses.dataclass(frozen=True)
class _OptimizerSettings:
    learning_rate: float
    total_steps: int
    power: float
    momentum: float
    weight_decay: float


@dataclasses.dataclass(frozen=True)
class _TrainingProgram:
    """The compiled pieces of a run, shared by runs with the same settings.

    ``init_fn(init_keys)`` and ``train_fn(state, batch, dropout_keys)`` take the keys of
    the replicas (:func:`replica_keys`), so that runs with other seeds share them.
    """

    mesh: Any
    model: nn.Module
    abstract_state: Any
    init_fn: Callable[[jax.Array], state_lib.TrainState]
    train_fn: Callable[..., Any]
    num_replicas: int

    @property
    def stacked(self) -> bool:
        """Whether the state and the batches have a leading replica axis (several seeds)."""
        return self.num_replicas > 1


def replica_keys(seeds: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """``(init_keys, dropout_keys)`` of the replicas, stacked ``[S]`` for several seeds;
    for one seed, :func:`spectral_jax.training.train_state.run_keys` of it."""
    keys = [state_lib.run_keys(seed) for seed in seeds]
    if len(keys) == 1:
        return keys[0]
    return (
        jnp.stack([init_key for init_key, _ in keys]),
        jnp.stack([dropout_key for _, dropout_key in keys]),
    )


# To avoid re-compiling the steps when a process trains several runs with the same
# settings (a resumed run, runs with other seeds, a sweep in a notebook): one model,
# optimizer and set of jitted functions per settings, so that the train state's static
# fields (apply_fn, tx) match.
#
# Several seeds (config.num_seeds = S > 1) train as one program: the state of replica k
# (initialised with run_keys(seed + k)) is row k of every leaf, the batch is [S, B, ...]
# (replica k's stream, each split over the devices), and the step is jax.vmap of the
# one-replica step with replica k's dropout key. One seed keeps the unstacked state, so
# its checkpoints and parameter paths are those of a plain run.
@functools.lru_cache(maxsize=4)
def _training_program(
    model: nn.Module,
    optimizer_settings: _OptimizerSettings,
    *,
    num_replicas: int,
    input_shape: tuple[int, ...],
    ignore_index: int,
    devices: tuple[jax.Device, ...],
) -> _TrainingProgram:
    mesh = parallel.create_mesh(list(devices))
    replicated = parallel.replicated_sharding(mesh)
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
    size, _, channels = input_shape

    def init_replica(init_key):
        variables = state_lib.init_variables(model, init_key, image_size=size, channels=channels)
        return state_lib.create_train_state(model, variables, optimizer)

    def train_replica(state, batch, dropout_key):
        return steps.train_step(
            state,
            batch,
            learning_rate_fn=schedule,
            dropout_key=dropout_key,
            ignore_index=ignore_index,
        )

    # The replicas are initialised one after the other by one compiled function (a
    # vmapped init compiles for twice as long, and this one is exactly a plain run's).
    init_one = jax.jit(init_replica, out_shardings=replicated)
    init_fn: Callable[[Any], Any]
    if num_replicas == 1:
        init_fn, train_state = init_one, train_replica
    else:
        stack = jax.jit(lambda *states: jax.tree.map(lambda *leaves: jnp.stack(leaves), *states))

        def init_replicas(init_keys):
            return stack(*(init_one(key) for key in init_keys))

        init_fn, train_state = init_replicas, jax.vmap(train_replica)

    replica_axis = () if num_replicas == 1 else (num_replicas,)
    abstract_state = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(
            replica_axis + leaf.shape, leaf.dtype, sharding=replicated
        ),
        jax.eval_shape(init_replica, jax.random.key(0)),
    )
    batch_sharding = parallel.batch_sharding(mesh, batch_axis=int(num_replicas > 1))
    train_fn = jax.jit(
        train_state,
        in_shardings=(replicated, {"image": batch_sharding, "label": batch_sharding}, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )
    return _TrainingProgram(
        mesh=mesh,
        model=model,
        abstract_state=abstract_state,
        init_fn=init_fn,
        train_fn=train_fn,
        num_replicas=num_replicas,
    )


@jax.jit
def _replica_variables(state: state_lib.TrainState, index: jax.Array) -> dict[str, Any]:
    """The model variables of replica ``index`` of a stacked state."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return jax.tree.map(lambda leaf: leaf[index], variables)


def _replica_batches(
    pipeline: InputPipeline, start_step: int, batch_size: int, seeds: tuple[int, ...]
):
    """This host's training batches: ``{name: [B/n, ...]}`` for one seed, ``[S, B/n, ...]``
    (replica k's stream, with seed ``seeds[k]``, in row k) for several."""
    streams = [
        pipeline.train_batches(
            start_step, batch_size, jax.process_index(), jax.process_count(), seed=seed
        )
        for seed in seeds
    ]
    for replica_batches in zip(*streams, strict=True):
        if len(seeds) == 1:
            (batch,) = replica_batches
            yield {"image": batch["image"], "label": batch["label"]}
        else:
            yield {
                name: np.stack([batch[name] for batch in replica_batches])
                for name in ("image", "label")
            }


def _variables_per_replica(state, program: _TrainingProgram) -> list[dict[str, Any]]:
    """The model variables of each replica of ``state`` (one for an unstacked state)."""
    if program.stacked:
        return [_replica_variables(state, k) for k in range(program.num_replicas)]
    return [{"params": state.params, "batch_stats": state.batch_stats}]


def _pretrained_weights(config, model: nn.Module) -> dict[str, Any] | None:
    """The variables of ``config.pretrained_weights``, a whole trained PyTorch network.

    Read and checked before the run writes anything, so that a checkpoint of another
    network stops the run with the differences named and no file written.

    Raises:
      ValueError: when ``config.model.name`` is not a layout of
        :mod:`spectral_jax.models.segmentation_checkpoints`, when ``pretrained_backbone``
        is set too, or as :func:`~spectral_jax.models.segmentation_checkpoints.
        load_segmentation_checkpoint` for an unreadable or mismatched checkpoint.
    """
    path = config.get("pretrained_weights")
    if not path:
        return None
    layout = config.model.name
    if layout not in segmentation_checkpoints.LAYOUTS:
        raise ValueError(
            f"config.pretrained_weights needs config.model.name to be one of "
            f"{segmentation_checkpoints.LAYOUTS} (the checkpoint's layout), got {layout!r}."
        )
    if config.get("pretrained_backbone"):
        raise ValueError(
            "config.pretrained_weights and config.pretrained_backbone are both set; the "
            "whole network's weights include the backbone, set one."
        )
    return segmentation_checkpoints.load_segmentation_checkpoint(path, model, layout=layout)


def _with_pretrained_backbone(state, checkpoint, program: _TrainingProgram):
    """``state`` with the backbone of ``checkpoint`` in every replica, replicated again."""
    loaded = [
        pretrained.load_pretrained_backbone(v, checkpoint)
        for v in _variables_per_replica(state, program)
    ]
    return _with_variables(state, loaded, program)


def _with_variables(state, loaded: list[dict[str, Any]], program: _TrainingProgram):
    """``state`` with replica ``k``'s params and batch_stats from ``loaded[k]``, replicated."""
    variables = (
        jax.tree.map(lambda *leaves: np.stack(leaves), *loaded) if program.stacked else loaded[0]
    )
    state = state.replace(params=variables["params"], batch_stats=variables["batch_stats"])
    return parallel.replicate(state, program.mesh)


def _checkpoint_metadata(
    config, pipeline: InputPipeline, total_steps: int, seeds: tuple[int, ...]
) -> dict[str, Any]:
    """What must match between a checkpoint and the run that resumes from it."""
    metadata = {
        "model": config.model.to_dict(),
        "num_classes": pipeline.num_classes,
        "total_steps": total_steps,
        "batch_size": int(config.batch_size),
        "crop_size": int(config.crop_size),
        "pruning": {k: float(v) for k, v in dict(config.get("pruning") or {}).items()},
    }
    if len(seeds) > 1:  # One seed: the metadata of a plain run (its checkpoints resume).
        metadata["seeds"] = list(seeds)
    return metadata


def _evaluate(
    evaluator: Evaluator, state, pipeline: InputPipeline, config, program: _TrainingProgram
) -> list[EvaluationResult]:
    """One :class:`EvaluationResult` per replica (the replicas one after the other)."""
    return [
        evaluator(
            replica,
            pipeline.eval_batches(
                int(config.eval_batch_size), jax.process_index(), jax.process_count()
            ),
        )
        for replica in _variables_per_replica(state, program)
    ]


def _evaluation_scalars(results: list[EvaluationResult]) -> dict[str, float]:
    """``eval/<name>`` (the mean over replicas) and, for several, ``eval/replica<k>/<name>``."""
    per_replica = [result.scalars() for result in results]
    scalars = {name: float(np.mean([r[name] for r in per_replica])) for name in per_replica[0]}
    if len(results) > 1:
        for k, replica_scalars in enumerate(per_replica):
            scalars.update(
                {f"eval/replica{k}/{name[5:]}": value for name, value in replica_scalars.items()}
            )
    return scalars


class InvalidLabelsError(ValueError):
    """A training batch holds labels outside ``[0, C)`` other than the ignore index."""


def _check_training_labels(
    counts: list[Any], steps: list[int], num_classes: int, ignore_index: int
) -> None:
    """Raises :class:`InvalidLabelsError` naming the first step whose batch held labels
    outside ``[0, C)`` (``counts``: the steps' ``num_invalid_labels``, on the device).

    Such a step's loss, gradient and new parameters are NaN
    (:func:`spectral_jax.evaluation.metrics.cross_entropy_loss`); the loop stops before
    it evaluates or saves them.
    """
    for step, count in zip(steps, jax.device_get(counts), strict=True):
        count = np.asarray(count)  # [] or [S] (one per replica)
        if count.any():
            replicas = np.flatnonzero(count.reshape(-1)).tolist()
            raise InvalidLabelsError(
                f"training step {step} (batch {step - 1} of the training stream, counted "
                f"from 0{'' if count.ndim == 0 else f'; replicas {replicas}'}) holds "
                f"{int(count.sum())} label(s) outside [0, {num_classes}) that are not the "
                f"ignore index {ignore_index}: its loss and gradient are NaN. Map such "
                "labels to the ignore index (config.ignore_index), or set it to their value."
            )


def _train_scalars(values: list[dict[str, Any]], stacked: bool) -> dict[str, float]:
    """The means of the steps' metrics since the last log (and over the replicas);
    with replicas also ``train/replica<k>/<name>``."""
    scalars = {f"train/{name}": float(np.mean([v[name] for v in values])) for name in values[0]}
    if stacked:
        for name in values[0]:
            per_replica = np.mean(np.stack([v[name] for v in values]), axis=0)
            for k, value in enumerate(per_replica):
                scalars[f"train/replica{k}/{name}"] = float(value)
    return scalars


def _result_summary(result: EvaluationResult, class_names: tuple[str, ...]) -> dict[str, Any]:
    """One replica's numbers in the summary."""
    return {
        "mean_iou": result.mean_iou,
        "pixel_accuracy": result.pixel_accuracy,
        "eval_loss": result.loss,
        "iou": dict(zip(class_names, result.iou.tolist(), strict=True)),
        "mean_ce": result.mean_ce,
        "parseval_error": result.parseval_error,
        "relative_discrepancy": result.relative_discrepancy_at,
        "band_profile": result.band_profile,
        "boundary": result.boundary,
    }


def _spread_over_replicas(replicas: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{name: {"mean", "std", "ci95", "n"}}`` over the replicas of every scalar score
    (:func:`spectral_jax.evaluation.compute_spread`: sample std, Student-t 95 % interval
    of the mean); nested scores as ``relative_discrepancy/8``, ``boundary/biou``."""
    scalars: dict[str, list[float]] = {}
    for replica in replicas:
        for name in ("mean_iou", "pixel_accuracy", "eval_loss", "mean_ce"):
            scalars.setdefault(name, []).append(replica[name])
        for group in ("relative_discrepancy", "boundary"):
            for key, value in (replica[group] or {}).items():
                scalars.setdefault(f"{group}/{key}", []).append(value)
    spreads = {}
    for name, values in scalars.items():
        if len(values) == len(replicas) and all(v is not None and np.isfinite(v) for v in values):
            spread = compute_spread([float(v) for v in values])
            spreads[name] = {
                "mean": spread.mean,
                "std": spread.std,
                "ci95": [spread.low, spread.high],
                "n": spread.n,
            }
    return spreads


def _mean_over_replicas(replicas: list[dict[str, Any]]) -> dict[str, Any]:
    """The replicas' summaries averaged leaf by leaf (None stays None)."""
    return jax.tree.map(
        lambda *values: np.mean(np.stack([np.asarray(v, np.float64) for v in values]), axis=0),
        *replicas,
    )


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
      config: the fields of :mod:`spectral_jax.training.config`.
      workdir: output directory (created).
      input_pipeline: the data; by default :func:`spectral_jax.data.create_input_pipeline`
        (tests pass generated data).

    Returns:
      the summary: final ``mean_iou``, ``iou`` per class, ``pixel_accuracy``,
      ``eval_loss``, ``mean_ce``, ``relative_discrepancy`` at 8/16/32/64 (where the
      crop allows), ``band_profile``, ``boundary`` (``biou``, ``bacc``, ``ferr``,
      ``merr``, ``derr``, ``boundary_pixel_accuracy`` on the unpadded images, or None
      with ``config.boundary_metrics=False``), ``seeds``, ``replicas`` (one dict of
      these numbers and its ``seed`` per replica), ``steps``, ``resumed_from_step``,
      ``wall_time_s`` (of this process) and ``workdir``. With several seeds the
      top-level numbers are the means over the replicas, and ``spread`` gives each
      score's ``mean``, ``std``, ``ci95`` (Student-t interval of the mean) and ``n``
      over them (None for one seed).

    Several seeds (``config.num_seeds = S > 1``): the loop trains ``S`` replicas in one
    compiled step, ``jax.vmap`` of the one-replica step over their parameters, optimizer
    and BatchNorm state. Replica ``k`` has the seed ``config.seed + k``: its
    initialisation key, data order (shuffles and augmentation) and dropout keys are those
    of a run with that seed, so it ends with the parameters of that run (to the order of
    the float32 reductions). The state and the checkpoints hold the replicas along a
    leading axis (:func:`spectral_jax.training.load_variables` with ``replica=k`` reads
    one); the evaluation runs once per replica, and ``metrics.jsonl`` has the means over
    the replicas and ``train/replica<k>/...``, ``eval/replica<k>/...`` for each. (A DCT
    run normalises every replica's input with the statistics of the ``config.seed``
    stream.)

    Trained PyTorch networks: ``config.pretrained_weights`` names a checkpoint of the
    whole network in the layout of ``config.model.name`` (one of
    :data:`spectral_jax.models.segmentation_checkpoints.LAYOUTS`); a fresh run starts from
    it in every replica (fine-tuning), a resumed run from its own checkpoint. The file
    is read and checked before anything is written.

    DCT model (``config.model.name = "dct_deeplabv3plus"``): the images become
    normalised DCT coefficients (:func:`spectral_jax.data.dct_pipeline.dct_run_pipeline`)
    with per-channel statistics of the first ``config.dct_statistics_batches`` training
    batches, computed at the start of a fresh run and kept in
    ``workdir/dct_statistics.npz`` (a resumed run reads them back); with
    ``config.model.gate`` the model adds ``config.model.gate_weight`` times the gate
    regulariser to the loss.

    Labels outside ``[0, C)`` other than the ignore index (``config.ignore_index``, by
    default the data set's) make a step's loss NaN; the loop stops at the next log,
    evaluation or checkpoint step, before it logs, evaluates or saves, with an
    :class:`InvalidLabelsError` naming the first such step and its batch.

    Raises:
      checkpointing.CheckpointError: when the workdir holds a checkpoint that cannot be
        restored (corrupt or from another configuration).
      InvalidLabelsError: for a training batch with labels outside ``[0, C)`` other
        than the ignore index (a ``ValueError``).
      ValueError: when ``config.ignore_index`` is set and differs from the
        ``input_pipeline``'s; for a field the library does not read (a misspelling:
        the message names the nearest field, :func:`spectral_jax.training.config.
        check_fields`).
    """
    config_schema.check_fields(config)
    start_time = time.perf_counter()
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    pipeline = input_pipeline or create_input_pipeline(config)
    if config.get("ignore_index") is not None and config.ignore_index != pipeline.ignore_index:
        raise ValueError(
            f"config.ignore_index={config.ignore_index} differs from the input pipeline's "
            f"ignore_index={pipeline.ignore_index}, which labels its padding."
        )
    pipeline = dct_pipeline.RUN_INPUTS[registry.input_kind(config.model)](config, pipeline, workdir)
    total_steps = total_train_steps(config, pipeline.num_train_examples)
    epoch_steps = steps_per_epoch(config, pipeline.num_train_examples)
    pruning = {k: float(v) for k, v in dict(config.get("pruning") or {}).items()}
    seeds = replica_seeds(config)
    program = _training_program(
        registry.create_model(config.model, num_classes=pipeline.num_classes),
        _OptimizerSettings(
            learning_rate=float(config.learning_rate),
            total_steps=total_steps,
            power=float(config.lr_power),
            momentum=float(config.momentum),
            weight_decay=float(config.weight_decay),
        ),
        num_replicas=len(seeds),
        input_shape=registry.input_shape(config.model, image_size=int(config.crop_size)),
        ignore_index=pipeline.ignore_index,
        devices=tuple(jax.devices()),
    )
    mesh = program.mesh
    imported = _pretrained_weights(config, program.model)  # before anything is written
    init_keys, dropout_keys = replica_keys(seeds)
    dropout_keys = parallel.replicate(dropout_keys, mesh)
    parallel.local_batch_size(int(config.batch_size), mesh)  # Checks divisibility.
    evaluator = Evaluator(
        inference_apply_fn(program.model),
        num_classes=pipeline.num_classes,
        ignore_index=pipeline.ignore_index,
        spectral_statistics=bool(config.spectral_statistics),
        boundary_metrics=bool(config.get("boundary_metrics", True)),
        mesh=mesh,
        batch_size=parallel.local_batch_size(int(config.eval_batch_size), mesh),
    )

    manager = checkpointing.create_checkpoint_manager(workdir, max_to_keep=config.keep_checkpoints)
    metadata = _checkpoint_metadata(config, pipeline, total_steps, seeds)
    try:
        restored = checkpointing.restore_latest(manager, program.abstract_state, metadata=metadata)
    except BaseException:
        manager.close()
        raise
    if restored is None:
        state = program.init_fn(init_keys)
        if config.get("pretrained_backbone"):
            state = _with_pretrained_backbone(state, config.pretrained_backbone, program)
        if imported is not None:
            state = _with_variables(state, [imported] * program.num_replicas, program)
        start_step = 0
    else:
        state, start_step = restored
        _LOG.info("Resuming from checkpoint step %d in %s.", start_step, manager.directory)
    resumed_from = start_step if restored is not None else None
    prune_fn = None
    if any(rate > 0 for rate in pruning.values()):
        prune_fn = _cached_soft_prune_fn(
            program.model, tuple(sorted(pruning.items())), program.stacked
        )

    writer = writers_lib.create_default_writer(workdir, tensorboard=config.tensorboard)
    progress = None
    try:
        log_every = max(1, int(config.log_every_steps))
        eval_every = int(config.eval_every_steps)
        checkpoint_every = int(config.checkpoint_every_steps)
        batches = parallel.prefetch_to_device(
            _replica_batches(pipeline, start_step, int(config.batch_size), seeds),
            mesh,
            size=int(config.get("prefetch_batches", 2)),
            batch_axis=int(program.stacked),
        )
        if config.progress_bar and jax.process_index() == 0:
            progress = tqdm.tqdm(total=total_steps, initial=start_step, desc="train", unit="step")

        # The host never waits for the device between log points: the step's metrics
        # stay on the device until a log step fetches them all at once, and every
        # decision reads the host's step counter. Only logging, evaluation and
        # checkpointing read device values (the state is copied to the host when a save
        # starts, and written while the loop goes on).
        pending: list[dict[str, jax.Array]] = []
        # The steps whose labels are not checked yet: the counts stay on the device
        # until a log, evaluation or checkpoint step reads them.
        unchecked: list[tuple[int, jax.Array]] = []
        results: list[EvaluationResult] | None = None
        log_time = time.perf_counter()
        for step in range(start_step + 1, total_steps + 1):
            state, step_metrics = program.train_fn(state, next(batches), dropout_keys)
            unchecked.append((step, step_metrics.pop("num_invalid_labels")))
            pending.append(step_metrics)
            if prune_fn is not None and step % epoch_steps == 0:
                state = prune_fn(state)
            is_eval = (eval_every > 0 and step % eval_every == 0) or step == total_steps
            is_save = (checkpoint_every > 0 and step % checkpoint_every == 0) or step == total_steps
            if step % log_every == 0 or is_eval or is_save:
                # A NaN loss from a bad label is reported as such, before it is logged,
                # evaluated or saved.
                _check_training_labels(
                    [count for _, count in unchecked],
                    [s for s, _ in unchecked],
                    pipeline.num_classes,
                    pipeline.ignore_index,
                )
                unchecked = []
            if step % log_every == 0 or step == total_steps:
                values = jax.device_get(pending)
                scalars = _train_scalars(values, program.stacked)
                now = time.perf_counter()
                scalars["train/steps_per_second"] = len(values) / (now - log_time)
                scalars["train/epoch"] = step / epoch_steps
                writer.write_scalars(step, scalars)
                if progress is not None:
                    progress.set_postfix(loss=f"{scalars['train/loss']:.4f}")
                pending, log_time = [], now
            if is_eval:
                results = _evaluate(evaluator, state, pipeline, config, program)
                writer.write_scalars(step, _evaluation_scalars(results))
            if is_save:
                checkpointing.save_checkpoint(manager, step, state, metadata)
            if progress is not None:
                progress.update(1)
        if results is None:  # Resumed at the last step: evaluate the restored state.
            results = _evaluate(evaluator, state, pipeline, config, program)
            writer.write_scalars(total_steps, _evaluation_scalars(results))
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
    per_replica = [_result_summary(result, names) for result in results]
    summary = {
        **(per_replica[0] if len(per_replica) == 1 else _mean_over_replicas(per_replica)),
        "seeds": list(seeds),
        "replicas": [
            {"seed": seed, **values} for seed, values in zip(seeds, per_replica, strict=True)
        ],
        "spread": _spread_over_replicas(per_replica) if len(per_replica) > 1 else None,
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
