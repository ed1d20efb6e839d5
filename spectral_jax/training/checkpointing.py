"""orbax checkpoints of the train state, with resumption and clear errors.

A run's checkpoints live in ``workdir/checkpoints/<step>/`` with two items: ``state``
(the :class:`~spectral_jax.training.train_state.TrainState` pytree, ``StandardSave``)
and ``metadata`` (JSON: the model configuration and anything that must match to resume).

:func:`restore_latest` never starts afresh silently: when the directory holds
checkpoints it either restores the latest one or raises :class:`CheckpointError` naming
the checkpoint directory, for a corrupt checkpoint (a truncated or garbled file) and for
an incompatible one (different model configuration, tree structure, shapes or dtypes).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

CHECKPOINT_SUBDIR = "checkpoints"
_STATE = "state"
_METADATA = "metadata"


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored into this run."""


def create_checkpoint_manager(
    workdir: str | os.PathLike, *, max_to_keep: int = 3, asynchronous: bool = True
) -> ocp.CheckpointManager:
    """A ``CheckpointManager`` over ``workdir/checkpoints`` keeping ``max_to_keep`` steps.

    Steps are saved when :func:`save_checkpoint` is called (the caller decides when).

    Raises:
      ValueError: if ``max_to_keep`` is not positive.
    """
    if max_to_keep < 1:
        raise ValueError(f"max_to_keep must be positive, got {max_to_keep}.")
    directory = os.path.abspath(os.path.join(os.fspath(workdir), CHECKPOINT_SUBDIR))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        # A run killed while saving leaves a temporary directory; remove it on restart.
        cleanup_tmp_directories=True,
        enable_async_checkpointing=asynchronous,
    )
    handlers = {_STATE: ocp.StandardCheckpointHandler(), _METADATA: ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def save_checkpoint(
    manager: ocp.CheckpointManager, step: int, state: Any, metadata: dict[str, Any]
) -> None:
    """Saves ``state`` and the JSON-serialisable ``metadata`` at ``step`` (asynchronously)."""
    manager.save(
        int(step),
        args=ocp.args.Composite(
            **{_STATE: ocp.args.StandardSave(state), _METADATA: ocp.args.JsonSave(metadata)}
        ),
        force=True,
    )


def _normalise(value):
    """JSON round trip, so that tuples and lists (and int/float keys) compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))


def _key_name(key) -> str:
    """One path element as a plain name: dict key, attribute or sequence index."""
    for attribute in ("key", "name", "idx"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


def _leaf_table(tree) -> dict[tuple[str, ...], tuple[tuple[int, ...], Any]]:
    """``{path: (shape, dtype)}`` of the array leaves of ``tree``, with plain-name paths.

    Works alike on the run's state (a dataclass, optax named tuples) and on orbax's saved
    tree metadata (nested dicts and lists), so the two can be compared before reading.
    """
    return {
        tuple(_key_name(key) for key in path): (tuple(leaf.shape), jax.numpy.dtype(leaf.dtype))
        for path, leaf in jax.tree.leaves_with_path(tree)
    }


def _check_saved_layout(manager: ocp.CheckpointManager, step: int, abstract_state, step_dir):
    """Raises CheckpointError if the saved arrays' paths, shapes or dtypes differ.

    Done from the checkpoint's metadata, before any array is read: an orbax restore that
    fails half-way leaves reads in flight on its event loop.
    """
    try:
        saved_tree = manager.item_metadata(step)[_STATE]
    except Exception as error:
        raise CheckpointError(
            f"could not read the array metadata of checkpoint {step_dir}: {error!r}"
        ) from error
    if saved_tree is None:
        raise CheckpointError(f"checkpoint {step_dir} has no readable state item.")
    saved, expected = _leaf_table(saved_tree), _leaf_table(abstract_state)
    missing = sorted("/".join(path) for path in expected.keys() - saved.keys())
    unexpected = sorted("/".join(path) for path in saved.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {step_dir} has another tree structure than this run's state: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    mismatches = [
        f"{'/'.join(path)} is {saved[path][1]}{list(saved[path][0])}, "
        f"this run expects {want_dtype}{list(want_shape)}"
        for path, (want_shape, want_dtype) in sorted(expected.items())
        if saved[path] != (want_shape, want_dtype)
    ]
    if mismatches:
        raise CheckpointError(f"checkpoint {step_dir}: " + "; ".join(mismatches) + ".")


def _step_entries(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        return []
    return sorted(name for name in os.listdir(directory) if not name.startswith("."))


def restore_latest(
    manager: ocp.CheckpointManager, abstract_state: Any, *, metadata: dict[str, Any]
) -> tuple[Any, int] | None:
    """Restores the latest checkpoint into the structure of ``abstract_state``.

    Args:
      manager: from :func:`create_checkpoint_manager`.
      abstract_state: the state to restore into, as arrays or ``jax.ShapeDtypeStruct``
        (with shardings, where the restored arrays should be placed).
      metadata: what was saved with :func:`save_checkpoint` must equal this (after a JSON
        round trip) for the checkpoint to be accepted.

    Returns:
      ``(state, step)``, or ``None`` when the directory holds no checkpoint.

    Raises:
      CheckpointError: naming the checkpoint directory, when the latest checkpoint is
        corrupt, incompatible (metadata, tree structure, shapes or dtypes differ), or
        when the directory holds entries but no finished checkpoint.
    """
    directory = os.fspath(manager.directory)
    step = manager.latest_step()
    if step is None:
        entries = [name for name in _step_entries(directory) if "tmp" not in name]
        if entries:
            raise CheckpointError(
                f"checkpoint directory {directory} holds {entries} but no complete checkpoint "
                "that orbax can read; move it away to start afresh."
            )
        return None
    step_dir = os.path.join(directory, str(step))
    try:
        saved = manager.restore(
            step, args=ocp.args.Composite(**{_METADATA: ocp.args.JsonRestore()})
        )[_METADATA]
    except Exception as error:
        raise CheckpointError(
            f"could not read the metadata of checkpoint {step_dir}: {error!r}"
        ) from error
    if _normalise(saved) != _normalise(metadata):
        expected, found = _normalise(metadata), _normalise(saved)
        differences = {
            key: (found.get(key), expected.get(key))
            for key in sorted(set(expected) | set(found))
            if found.get(key) != expected.get(key)
        }
        raise CheckpointError(
            f"checkpoint {step_dir} was written by an incompatible run: (saved, this run) = "
            f"{differences}. Use another workdir, or the same configuration."
        )
    _check_saved_layout(manager, step, abstract_state, step_dir)
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract_state)}),
        )[_STATE]
    except Exception as error:
        raise CheckpointError(
            f"could not restore checkpoint {step_dir} (corrupt, or incompatible with this "
            f"model): {error!r}"
        ) from error
    expected_leaves = jax.tree.leaves_with_path(abstract_state)
    restored_leaves = jax.tree.leaves_with_path(restored)
    # jaxlib ships no type information for PyTreeDef, which compares by value.
    if jax.tree.structure(restored) != jax.tree.structure(abstract_state):  # type: ignore[operator]
        raise CheckpointError(
            f"checkpoint {step_dir} has another tree structure than this run's state."
        )
    for (path, want), (_, got) in zip(expected_leaves, restored_leaves, strict=True):
        if tuple(want.shape) != tuple(got.shape) or want.dtype != got.dtype:
            raise CheckpointError(
                f"checkpoint {step_dir}: {jax.tree_util.keystr(path)} is "
                f"{got.dtype}{list(got.shape)}, this run expects {want.dtype}{list(want.shape)}."
            )
    return restored, int(step)


def restore_args_without_target(
    manager: ocp.CheckpointManager, step: int, *, device: jax.Device | None = None
) -> ocp.args.Composite:
    """Restore arguments for the state item as saved, every array on one ``device``.

    The target is built from the checkpoint's own array metadata (paths, shapes,
    dtypes), so the checkpoint loads whatever topology wrote it: orbax refuses to
    restore without a target when the saved shardings name devices this process does
    not have (a checkpoint of 2 processes x 2 devices read by one process).

    Args:
      manager: the run's checkpoint manager.
      step: the checkpoint to read.
      device: where the arrays go; the first local device when None.
    """
    sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
    saved = manager.item_metadata(step)[_STATE]
    target = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype, sharding=sharding), saved
    )
    return ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target)})


def load_checkpoint(workdir: str | os.PathLike, *, step: int | None = None) -> tuple[Any, int]:
    """The raw state tree (nested dicts of arrays) of a checkpoint in ``workdir``.

    The arrays are placed on this process's first device, whichever topology saved them
    (a multi-process run's checkpoint loads in one process).

    Args:
      workdir: the run's directory.
      step: the step to load; the latest when None.

    Returns:
      ``(tree, step)``: ``tree`` has ``"step"``, ``"params"``, ``"batch_stats"`` and
      ``"opt_state"``.

    Raises:
      CheckpointError: if there is no checkpoint.
    """
    manager = create_checkpoint_manager(workdir, asynchronous=False)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no checkpoint in {manager.directory}.")
        tree = manager.restore(step, args=restore_args_without_target(manager, step))
        return tree[_STATE], int(step)
    finally:
        manager.close()


def num_replicas(tree: Any) -> int | None:
    """The replicas a checkpoint's state tree holds along its leading axis (a run with
    ``config.num_seeds = S > 1``: ``S``), or None for the state of one model."""
    shape: tuple[int, ...] = getattr(tree["step"], "shape", ())
    return int(shape[0]) if len(shape) == 1 else None


def load_variables(
    workdir: str | os.PathLike, *, step: int | None = None, replica: int | None = None
) -> dict[str, Any]:
    """The model variables of a checkpoint: ``{"params", "batch_stats"}`` as JAX arrays.

    ``"batch_stats"`` is left out for a model without BatchNorm. Use them with the model
    of the run's config (:func:`spectral_jax.models.create_model`).

    Args:
      workdir: the run's directory.
      step: the step to load; the latest when None.
      replica: the replica to read from a run with several seeds (replica ``k`` trained
        with ``config.seed + k``); required there. For a run with one seed it may be None
        or 0.

    Raises:
      CheckpointError: if there is no checkpoint.
      ValueError: if ``replica`` is missing for a checkpoint of several replicas, or out
        of range.
    """
    tree, _ = load_checkpoint(workdir, step=step)
    count = num_replicas(tree)
    if count is None:
        if replica not in (None, 0):
            raise ValueError(f"replica={replica!r}: the checkpoint in {workdir} holds one model.")
    else:
        if replica is None:
            raise ValueError(
                f"the checkpoint in {workdir} holds {count} replicas (config.num_seeds); pass "
                f"replica=k with 0 <= k < {count}."
            )
        if isinstance(replica, bool) or not 0 <= int(replica) < count:
            raise ValueError(f"replica must lie in [0, {count}), got {replica!r}.")
        tree = jax.tree.map(lambda leaf: leaf[int(replica)], tree)
    variables = {"params": tree["params"]}
    if tree.get("batch_stats"):
        variables["batch_stats"] = tree["batch_stats"]
    return jax.tree.map(jax.numpy.asarray, variables)
