"""Generated data and tiny configurations shared by the training tests."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from experiments.configs import tiny
from spectral_jax.data import InputPipeline

NUM_CLASSES = 3
COLORS = np.array([[-1.0, -1.0, 0.0], [1.0, 0.0, -1.0], [0.0, 1.0, 1.0]], np.float32)


def generated_example(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A background, a rectangle (class 1) and a disk (class 2), colours plus noise."""
    rng = np.random.default_rng([seed, index])
    label = np.zeros((size, size), np.int32)
    top, left = rng.integers(0, size // 2, size=2)
    height, width = rng.integers(size // 4, size // 2 + 1, size=2)
    label[top : top + height, left : left + width] = 1
    rows, cols = np.mgrid[:size, :size]
    center = rng.uniform(0, size, size=2)
    radius = rng.uniform(size / 8, size / 4)
    label[(rows - center[0]) ** 2 + (cols - center[1]) ** 2 < radius**2] = 2
    image = COLORS[label] + 0.5 * rng.standard_normal((size, size, 3)).astype(np.float32)
    return image.astype(np.float32), label


def generated_pipeline(
    *, crop_size: int, seed: int = 0, num_train: int = 64, num_eval: int = 6
) -> InputPipeline:
    """An :class:`InputPipeline` of generated scenes (batch ``k`` depends on ``k`` only).

    The training stream draws its scenes with the ``seed`` its caller passes (the
    trainer: each replica's seed), or with this function's ``seed``.

    The evaluation split has ``num_eval`` examples, so that its last batch is short and
    the trainer's padding is exercised; the first label map of every evaluation batch
    has ignored pixels. ``shard_index`` and ``shard_count`` split every global batch by
    rows, as :func:`spectral_jax.data.pipeline.train_batches` does.
    """

    def batch_of(indices, stream_seed):
        pairs = [generated_example(stream_seed, int(i), crop_size) for i in indices]
        return {
            "image": np.stack([p[0] for p in pairs]),
            "label": np.stack([p[1] for p in pairs]),
        }

    default_seed = seed

    def train_batches(start_step, batch_size, shard_index, shard_count, seed=None):
        stream_seed = default_seed if seed is None else seed
        local = batch_size // shard_count
        step = start_step
        while True:
            first = step * batch_size + shard_index * local
            yield batch_of(range(first, first + local), stream_seed)
            step += 1

    def eval_batches(batch_size, shard_index, shard_count):
        # Host ``s`` of ``S`` gets rows [s B/S, (s+1) B/S) of every batch (none of the
        # split's examples for a host past its end); the first example of every global
        # batch has ignored pixels, so the union over the hosts is the one-host batch.
        local = batch_size // shard_count
        for start in range(0, num_eval, batch_size):
            first = start + shard_index * local
            indices = range(first, min(first + local, num_eval))
            batch = (
                batch_of(indices, 10_000 + default_seed)
                if len(indices)
                else {
                    "image": np.zeros((0, crop_size, crop_size, 3), np.float32),
                    "label": np.zeros((0, crop_size, crop_size), np.int32),
                }
            )
            for row, index in enumerate(indices):
                if index % batch_size == 0:
                    batch["label"][row, :2, :] = 255
            yield batch

    return InputPipeline(
        train_batches=train_batches,
        eval_batches=eval_batches,
        num_classes=NUM_CLASSES,
        ignore_index=255,
        num_train_examples=num_train,
        class_names=("background", "rectangle", "disk"),
    )


def tiny_test_config(*, crop_size: int = 33, steps: int = 4):
    """The tiny configuration shrunk for tests: few steps, no progress bar."""
    config = tiny.get_config()
    config.crop_size = crop_size
    config.eval_crop_size = crop_size
    config.model.aspp_channels = 8
    config.model.low_level_channels = 4
    config.model.decoder_channels = 8
    config.batch_size = 4
    config.eval_batch_size = 4
    config.num_train_steps = steps
    config.log_every_steps = 2
    config.eval_every_steps = -1
    config.checkpoint_every_steps = 2
    config.keep_checkpoints = 5
    config.progress_bar = False
    config.tensorboard = False
    return config


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_python_isolated(source: str, *args: str, timeout: float = 300) -> str:
    """Runs ``source`` in a fresh interpreter at the repository root; returns its stdout.

    For code that makes orbax fail half-way through a read (a corrupt checkpoint): orbax
    then closes its event loop while tensorstore reads are still in flight, and their
    callbacks raise "Event loop is closed" from tensorstore's threads, at any later time.
    In the test process those would surface as unraisable-exception errors in whichever
    test runs next; in a child process they end with it.
    """
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", source, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout
