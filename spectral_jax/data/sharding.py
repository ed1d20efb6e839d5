"""Data parallelism over a device mesh: a ``"data"`` axis, batches split, state replicated.

Every device of every host forms one 1-D :class:`jax.sharding.Mesh` with the axis
``"data"``. The batch is split along its first axis over it (``P("data")``) and the
train state is replicated (``P()``). ``jax.jit`` with these in/out shardings compiles one
SPMD program: the gradient's mean over the batch and the BatchNorm batch statistics
become all-reduces over the devices, so the sharded step computes the same update as the
single-device step, up to the order of the float32 reductions.

With several hosts (``jax.distributed.initialize()`` called first), each host loads its
own ``batch_size / process_count`` examples and :func:`shard_batch` assembles the global
array from the host-local pieces. :func:`prefetch_to_device` does so ahead of the step
that reads them, so that the next batch is on the devices while a step runs.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def create_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (all devices of all hosts)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices must not be empty.")
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh, *, batch_axis: int = 0) -> NamedSharding:
    """Split the batch axis (``batch_axis``, the leading one by default) over ``"data"``.

    ``batch_axis=1`` splits ``[S, B, ...]`` batches of ``S`` replicas
    (``config.num_seeds``) along ``B``, each replica's batch over all devices.
    """
    if batch_axis < 0:
        raise ValueError(f"batch_axis must be non-negative, got {batch_axis}.")
    return NamedSharding(mesh, P(*([None] * batch_axis), DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device."""
    return NamedSharding(mesh, P())


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """Examples this host loads per step: ``global_batch_size / process_count``.

    Raises:
      ValueError: if ``global_batch_size`` is not a multiple of the number of devices.
    """
    num_devices = mesh.devices.size
    if global_batch_size % num_devices:
        raise ValueError(
            f"batch_size={global_batch_size} must be a multiple of the number of devices "
            f"({num_devices})."
        )
    return global_batch_size // jax.process_count()


def shard_batch(
    batch: dict[str, np.ndarray], mesh: Mesh, *, batch_axis: int = 0
) -> dict[str, jax.Array]:
    """Global arrays from this host's part of the batch, split over ``"data"``.

    Args:
      batch: host-local arrays, each ``[B / process_count, ...]`` (``[S, B /
        process_count, ...]`` with ``batch_axis=1``).
      mesh: the data mesh.
      batch_axis: the axis of the examples (:func:`batch_sharding`).

    Returns:
      the same keys with global ``[B, ...]`` arrays sharded by ``P("data")`` (``[S, B,
      ...]`` by ``P(None, "data")``).
    """
    sharding = batch_sharding(mesh, batch_axis=batch_axis)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in batch.items()
    }


def prefetch_to_device(
    batches: Iterable[dict[str, np.ndarray]], mesh: Mesh, *, size: int = 2, batch_axis: int = 0
) -> Iterator[dict[str, jax.Array]]:
    """The batches of ``batches`` as global arrays on ``mesh``, placed ``size - 1`` ahead.

    flax's ``jax_utils.prefetch_to_device`` for a mesh: every batch goes through
    :func:`shard_batch` (split over ``"data"``, assembled from the hosts' pieces) as soon
    as it enters a buffer of ``size`` batches, the one being yielded included. Placing a
    batch starts its host-to-device copy and returns; with ``size=2`` the next batch is
    on its way to the devices while the caller's step on the current one runs (JAX
    dispatches the step and returns), and the step never waits for its input. Reads
    ``size - 1`` batches more than it yields, on the caller's thread.

    Args:
      batches: host-local batches ``{name: [B / process_count, ...]}``.
      mesh: the data mesh.
      size: batches on the devices at once (>= 1); 1 places each batch when it is asked
        for.
      batch_axis: the axis of the examples (:func:`shard_batch`).

    Yields:
      ``{name: [B, ...]}`` global arrays sharded by ``P("data")``, in order.

    Raises:
      ValueError: if ``size`` is smaller than 1.

    Example:
      >>> mesh = create_mesh()
      >>> stream = ({"label": np.full((2, 3), i, np.int32)} for i in range(3))
      >>> [int(batch["label"][0, 0]) for batch in prefetch_to_device(stream, mesh, size=2)]
      [0, 1, 2]
    """
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}.")
    iterator = iter(batches)
    queue: collections.deque[dict[str, jax.Array]] = collections.deque()

    def enqueue(count: int) -> None:
        for batch in itertools.islice(iterator, count):
            queue.append(shard_batch(batch, mesh, batch_axis=batch_axis))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` with every array placed on all devices of ``mesh``."""
    return jax.device_put(tree, replicated_sharding(mesh))
