"""Tests of spectral_jax.training.checkpointing: round trip and clear errors.

Resuming a whole run (in process, and after SIGKILL) is tested in test_training.py.
"""

from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.training import checkpointing, train_state
from tests.helpers.training import run_python_isolated


class _Small(nn.Module):
    features: int = 3

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(self.features)(x)
        return nn.BatchNorm(use_running_average=not train)(x)


def _state(features=3, seed=0):
    model = _Small(features)
    variables = model.init(jax.random.key(seed), jnp.ones((2, 4)))
    schedule = train_state.poly_schedule(0.1, total_steps=10)
    state = train_state.create_train_state(model, variables, train_state.create_optimizer(schedule))
    # Move away from the initial values, so that a fresh init cannot pass for a restore.
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), state.params)
    state = state.apply_gradients(grads=grads)
    return state.replace(step=jnp.asarray(state.step, jnp.int32))


def _abstract(state):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


METADATA = {"model": {"name": "small", "features": 3}, "total_steps": 10}


def _save(workdir, state, step=1, metadata=METADATA):
    manager = checkpointing.create_checkpoint_manager(workdir, asynchronous=False)
    checkpointing.save_checkpoint(manager, step, state, metadata)
    manager.wait_until_finished()
    manager.close()


def _restore(workdir, abstract, metadata=METADATA):
    manager = checkpointing.create_checkpoint_manager(workdir)
    try:
        return checkpointing.restore_latest(manager, abstract, metadata=metadata)
    finally:
        manager.close()


def test_round_trip_exact(tmp_path):
    state = _state()
    _save(tmp_path, state, step=3)
    state = state.replace(step=state.step + 4)
    _save(tmp_path, state, step=7)
    restored, step = _restore(tmp_path, _abstract(state))
    assert step == 7
    assert int(restored.step) == 5
    for want, got in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_empty_directory_returns_none(tmp_path):
    assert _restore(tmp_path, _abstract(_state())) is None


def test_incompatible_metadata_raises_naming_directory(tmp_path):
    _save(tmp_path, _state())
    other = {"model": {"name": "small", "features": 5}, "total_steps": 10}
    with pytest.raises(checkpointing.CheckpointError, match="incompatible") as info:
        _restore(tmp_path, _abstract(_state(features=5)), metadata=other)
    assert os.path.join(str(tmp_path), "checkpoints") in str(info.value)
    assert "features" in str(info.value)


def test_incompatible_shapes_raise(tmp_path):
    _save(tmp_path, _state(features=3))
    with pytest.raises(checkpointing.CheckpointError, match=str(tmp_path)) as info:
        _restore(tmp_path, _abstract(_state(features=5)))
    # Named from the saved metadata, before any array is read.
    assert "params/Dense_0/kernel is float32[4, 3], this run expects float32[4, 5]" in str(
        info.value
    )


def test_incompatible_dtype_raises(tmp_path):
    state = _state()
    _save(tmp_path, state)
    wide = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float16), state.params)
    with pytest.raises(checkpointing.CheckpointError, match="float16"):
        _restore(tmp_path, _abstract(state).replace(params=wide))


def test_missing_leaf_raises(tmp_path):
    state = _state()
    _save(tmp_path, state)
    fewer = _abstract(state).replace(batch_stats={})
    with pytest.raises(checkpointing.CheckpointError, match="tree structure.*batch_stats"):
        _restore(tmp_path, fewer)


_RESTORE_CORRUPT = """
import sys
from spectral_jax.training.checkpointing import CheckpointError
from tests.test_checkpointing import _abstract, _restore, _state
try:
    _restore(sys.argv[1], _abstract(_state()))
    print("restored")
except CheckpointError as error:
    print("CheckpointError:", error)
"""


def test_corrupt_checkpoint_raises_naming_directory(tmp_path):
    _save(tmp_path, _state())
    state_dir = tmp_path / "checkpoints" / "1" / "state"
    files = [p for p in state_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert files
    for path in files:  # Truncate every file of the state item to half its size.
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    # In a child process: a restore that fails half-way leaves orbax reads in flight.
    out = run_python_isolated(_RESTORE_CORRUPT, str(tmp_path))
    assert out.startswith("CheckpointError:"), out
    assert str(tmp_path / "checkpoints" / "1") in out


def test_directory_without_complete_checkpoint_raises(tmp_path):
    garbage = tmp_path / "checkpoints" / "step_one"
    garbage.mkdir(parents=True)
    (garbage / "state").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpointing.CheckpointError, match=str(tmp_path / "checkpoints")):
        _restore(tmp_path, _abstract(_state()))


def test_unfinished_first_save_starts_afresh(tmp_path):
    # A run killed while writing its first checkpoint leaves only orbax's temporary
    # directory: there is nothing to resume from.
    (tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-123").mkdir(parents=True)
    assert _restore(tmp_path, _abstract(_state())) is None


def test_bad_max_to_keep(tmp_path):
    with pytest.raises(ValueError, match="max_to_keep"):
        checkpointing.create_checkpoint_manager(tmp_path, max_to_keep=0)


def test_stale_temporary_directories_are_removed(tmp_path):
    # A run killed mid-save leaves orbax's temporary folder; the next run's manager
    # removes it rather than leaving it to accumulate beside the checkpoints.
    stale = tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp-1234"
    (stale / "state").mkdir(parents=True)
    _save(tmp_path, _state(), step=1)
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
