"""One process of the multi-process tests (tests/test_multiprocess.py).

Started by :func:`experiments.launch.run_processes` as ``python -m tests.multiprocess_worker
OUT PARTS``, several times with the launcher's ``JAX_*`` variables; joins the JAX cluster
and, for each comma-separated part of ``PARTS``,

* ``evaluate``: runs the :class:`spectral_jax.evaluation.Evaluator` (spectral statistics,
  boundary metrics, a further per-example output, kept examples) over this process's rows
  of :func:`evaluation_batches`, on the mesh of all processes' devices, and writes the
  result to ``OUT/evaluator<process>.npz``;
* ``step``: runs :data:`TRAIN_STEPS` train steps of a small model over the mesh
  (:func:`train_steps`), saves the state from all processes into one orbax checkpoint in
  ``OUT/steps`` and its arrays to ``OUT/state<process>.npz``;
* ``create_once``: creates ``OUT/created.txt`` through
  :func:`spectral_jax.parallel.create_once` (:func:`create_file_once`);
* ``train``: trains :func:`train_config` on :func:`train_pipeline` into ``OUT/run``.

The test computes the single-process references from the same definitions.
"""

from __future__ import annotations

import functools
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments import train as train_script
from spectral_jax import parallel
from spectral_jax.data import pipeline as pipeline_lib
from spectral_jax.evaluation import EvaluationResult, Evaluator
from spectral_jax.training import checkpointing, steps, train_and_evaluate, train_state
from tests.helpers.training import generated_pipeline, tiny_test_config

NUM_CLASSES = 3
EVAL_BATCH_SIZE = 4
#: Seven examples (the last global batch has one filling row); the first of each batch
#: is 16 x 16, the others smaller, so that with ``crop_size=None`` a host's own rows
#: may be smaller than the global batch (and a host may hold filling rows only).
EVAL_SIZES = ((16, 16), (12, 10), (9, 14), (11, 11), (16, 16), (10, 13), (8, 8))
NUM_EXAMPLES_KEPT = 5


class _SmallConv(nn.Module):
    """Conv + BatchNorm + ReLU + 1x1 conv: logits ``[B, H, W, C]``, or with ``gates``
    ``{"logits": [B, H, W, C], "gates": [B, 2]}`` (a further per-example output)."""

    gates: bool = False

    @nn.compact
    def __call__(self, images, train=False):
        features = nn.Conv(6, (3, 3))(images)
        features = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5)(features))
        logits = nn.Conv(NUM_CLASSES, (1, 1))(features)
        if not self.gates:
            return logits
        gates = jnp.stack([jnp.mean(features, axis=(1, 2, 3)), jnp.max(logits, axis=(1, 2, 3))], 1)
        return {"logits": logits, "gates": gates}


MODEL = _SmallConv(gates=True)
TRAIN_MODEL = _SmallConv()
TRAIN_BATCH_SIZE = 4
TRAIN_STEPS = 3
#: One object, so that every evaluator shares the compiled step.
APPLY_FN = functools.partial(MODEL.apply, train=False)


def evaluation_source() -> list[dict[str, np.ndarray]]:
    """The evaluation split: :data:`EVAL_SIZES` examples of uint8 images and labels."""
    rng = np.random.default_rng(7)
    examples = []
    for height, width in EVAL_SIZES:
        label = rng.integers(0, NUM_CLASSES, (height, width)).astype(np.uint8)
        label[rng.random((height, width)) < 0.1] = 255
        image = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
        examples.append({"image": image, "label": label})
    return examples


def evaluation_batches(shard_index: int, shard_count: int):
    """Rows ``shard_index`` of ``shard_count`` of the split's batches, each padded to its
    largest example (``crop_size=None``)."""
    return pipeline_lib.eval_batches(
        evaluation_source(),
        batch_size=EVAL_BATCH_SIZE,
        crop_size=None,
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        shard_index=shard_index,
        shard_count=shard_count,
    )


def evaluation_variables():
    """The model's variables (fixed seed)."""
    return MODEL.init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))


def evaluate(mesh=None) -> EvaluationResult:
    """The evaluator over this process's rows (all rows without a mesh)."""
    settings = dict(
        num_classes=NUM_CLASSES,
        spectral_statistics=True,
        boundary_metrics=True,
        num_examples=NUM_EXAMPLES_KEPT,
    )
    variables = evaluation_variables()
    if mesh is None:
        return Evaluator(APPLY_FN, **settings)(variables, evaluation_batches(0, 1))
    evaluator = Evaluator(
        APPLY_FN,
        mesh=mesh,
        batch_size=parallel.local_batch_size(EVAL_BATCH_SIZE, mesh),
        **settings,
    )
    batches = evaluation_batches(jax.process_index(), jax.process_count())
    return evaluator(parallel.replicate(variables, mesh), batches)


def result_arrays(result: EvaluationResult) -> dict[str, np.ndarray]:
    """What the tests compare of a result, as named arrays."""
    arrays = {
        "confusion": result.confusion,
        "loss": np.asarray(result.loss),
        "num_evaluated": np.asarray(result.num_evaluated),
        "band_ce": np.asarray(result.statistics.band_ce),
        "spatial_ce": np.asarray(result.statistics.spatial_ce),
        "num_images": np.asarray(result.statistics.num_images),
        "overlap": np.asarray(result.statistics.overlap),
        "gates_sum": result.output_sums["gates"],
    }
    for name, counts in result.boundary_statistics._asdict().items():
        arrays[f"boundary_{name}"] = np.asarray(counts)
    for name, value in result.examples.items():
        arrays[f"example_{name}"] = value
    return arrays


def train_batch(step: int) -> dict[str, np.ndarray]:
    """Global batch ``step`` of the step test: ``[4, 12, 12, 3]`` images, labels in [0, 3)."""
    rng = np.random.default_rng(step)
    labels = rng.integers(0, NUM_CLASSES, (TRAIN_BATCH_SIZE, 12, 12)).astype(np.int32)
    labels[0, :3] = 255
    images = rng.standard_normal((TRAIN_BATCH_SIZE, 12, 12, 3)).astype(np.float32)
    return {"image": images + labels[..., None].clip(0, 2), "label": labels}


def train_steps(mesh=None) -> train_state.TrainState:
    """:data:`TRAIN_STEPS` steps of :func:`spectral_jax.training.steps.train_step` on the
    small model; with a mesh each process passes its rows of every global batch."""
    schedule = train_state.poly_schedule(0.1, total_steps=10)
    optimizer = train_state.create_optimizer(schedule, weight_decay=1e-3)
    variables = TRAIN_MODEL.init(jax.random.key(0), jnp.zeros((1, 12, 12, 3)))
    state = train_state.create_train_state(TRAIN_MODEL, variables, optimizer)
    step = functools.partial(
        steps.train_step, learning_rate_fn=schedule, dropout_key=jax.random.key(3)
    )
    if mesh is None:
        step_fn = jax.jit(step)
    else:
        replicated = parallel.replicated_sharding(mesh)
        batch_sharding = parallel.batch_sharding(mesh)
        step_fn = jax.jit(
            step,
            in_shardings=(replicated, {"image": batch_sharding, "label": batch_sharding}),
            out_shardings=(replicated, replicated),
        )
        state = parallel.replicate(state, mesh)
    for index in range(TRAIN_STEPS):
        batch = train_batch(index)
        if mesh is not None:
            rows = parallel.local_batch_size(TRAIN_BATCH_SIZE, mesh)
            first = jax.process_index() * rows
            batch = parallel.shard_batch(
                {name: value[first : first + rows] for name, value in batch.items()}, mesh
            )
        state, _ = step_fn(state, batch)
    return state


def train_config():
    """The tiny configuration, 2 steps of a batch of 4 on 33 x 33 crops."""
    config = tiny_test_config(steps=2)
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
    return config


def train_pipeline():
    """Generated scenes; 6 evaluation examples (the last batch short)."""
    return generated_pipeline(crop_size=train_config().crop_size)


def create_file_once(out: str) -> None:
    """``sharding.create_once`` of ``out/created.txt`` (holding its creator's index),
    slowly (a process that did not wait would miss it); every creation is logged to
    ``out/creators.log``, and each process writes what it then reads to ``seen<i>.txt``."""
    target = os.path.join(out, "created.txt")

    def create():
        with open(os.path.join(out, "creators.log"), "a") as log:
            log.write(f"{jax.process_index()}\n")
        time.sleep(1.0)
        partial = f"{target}.{os.getpid()}.tmp"
        with open(partial, "w") as file:
            file.write(str(jax.process_index()))
        os.replace(partial, target)

    parallel.create_once("multiprocess_worker: created.txt", lambda: os.path.exists(target), create)
    with (
        open(target) as file,
        open(os.path.join(out, f"seen{jax.process_index()}.txt"), "w") as seen,
    ):
        seen.write(file.read())


def main(argv: list[str]) -> None:
    out, parts = argv[1], argv[2].split(",")
    jax.distributed.initialize(**train_script.distributed_arguments())
    if "evaluate" in parts:
        result = evaluate(parallel.create_mesh())
        np.savez(os.path.join(out, f"evaluator{jax.process_index()}.npz"), **result_arrays(result))
    if "step" in parts:
        # All processes save into one checkpoint (orbax), which the test restores in one.
        state = train_steps(parallel.create_mesh())
        manager = checkpointing.create_checkpoint_manager(os.path.join(out, "steps"))
        checkpointing.save_checkpoint(manager, TRAIN_STEPS, state, {"steps": TRAIN_STEPS})
        manager.wait_until_finished()
        manager.close()
        leaves = jax.device_get(jax.tree.leaves_with_path(state))  # Replicated: readable.
        np.savez(
            os.path.join(out, f"state{jax.process_index()}.npz"),
            **{jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves},
        )
    if "create_once" in parts:
        create_file_once(out)
    if "train" in parts:
        train_and_evaluate(
            train_config(), os.path.join(out, "run"), input_pipeline=train_pipeline()
        )


if __name__ == "__main__":
    main(sys.argv)
