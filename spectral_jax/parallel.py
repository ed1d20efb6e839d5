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

A host can read only the rows on its own devices: :func:`process_local_rows` gives back
its piece of a batch-sharded output, :func:`gather_rows` the whole global batch (a
collective), and :func:`sum_over_processes` adds up sums that each host computed over
its own rows (exactly, in int64 and float64, without ``jax_enable_x64``). Every process
must call the last two in the same order.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "batch_sharding",
    "create_mesh",
    "create_once",
    "gather_rows",
    "local_batch_size",
    "prefetch_to_device",
    "process_local_rows",
    "replicate",
    "replicated_sharding",
    "shard_batch",
    "spans_processes",
    "sum_over_processes",
]

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
    """``tree`` with every array placed on all devices of ``mesh``.

    With several processes every process passes the same values (host arrays, or arrays
    on its own devices; PRNG key arrays included) and gets the global replicated arrays.
    """
    target = replicated_sharding(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, target)

    def place(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            return jax.device_put(leaf, target)  # Already global: reshard.
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            data = place(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        # device_put refuses a local jax.Array for a sharding over other processes'
        # devices; every process contributes its (identical) full copy instead.
        return jax.make_array_from_process_local_data(target, np.asarray(leaf))

    return jax.tree.map(place, tree)


def process_local_rows(array: jax.Array | np.ndarray) -> np.ndarray:
    """This process's rows of a batch-sharded array, in order, as NumPy.

    The inverse of :func:`shard_batch` for one process: for ``array = shard_batch(batch,
    mesh)[name]`` it returns ``batch[name]``. The rows are read from the addressable
    shards only (``jax.device_get`` of an array that spans other processes' devices
    fails). A fully addressable array (one process) is returned whole.

    Args:
      array: ``[B, ...]`` split over ``"data"`` (:func:`batch_sharding`), or any array
        that is fully addressable.

    Returns:
      ``[B / process_count, ...]`` (``[B, ...]`` when fully addressable).
    """
    if not isinstance(array, jax.Array) or array.is_fully_addressable:
        return np.asarray(array)
    # One shard per row block: a device's copy of a block another local device also
    # holds (a mesh with more axes) is read once.
    blocks = {shard.index[0].start or 0: shard for shard in array.addressable_shards}
    return np.concatenate([np.asarray(blocks[start].data) for start in sorted(blocks)])


def gather_rows(array: jax.Array | np.ndarray) -> np.ndarray:
    """The whole global batch on every process, as NumPy (a collective).

    Args:
      array: a global ``[B, ...]`` array (e.g. from :func:`shard_batch`), or a host-local
        ``[B / process_count, ...]`` NumPy array with the same shape on every process.

    Returns:
      ``[B, ...]``: the global array, or the host-local pieces concatenated in process
      order (the rows :func:`shard_batch` would give them).
    """
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def sum_over_processes(tree: Any) -> Any:
    """The sum over processes of a tree of host-local NumPy values (a collective).

    Exact for int64 and float64 without ``jax_enable_x64``: the values travel as their
    bytes (one all-gather for the whole tree) and are added on the host, in process
    order. Every process must pass a tree of the same structure, shapes and dtypes.

    Args:
      tree: NumPy arrays or Python numbers.

    Returns:
      the same structure; NumPy arrays of the leaves' dtypes (Python numbers become
      0-d arrays of NumPy's dtype for them).
    """
    leaves, treedef = jax.tree.flatten(tree)
    arrays = [np.asarray(leaf) for leaf in leaves]
    if jax.process_count() == 1 or not arrays:
        return jax.tree.unflatten(treedef, arrays)
    payload = np.concatenate([np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays])
    gathered = np.asarray(multihost_utils.process_allgather(payload))  # [P, nbytes]
    totals, offset = [], 0
    for value in arrays:
        pieces = gathered[:, offset : offset + value.nbytes].copy().view(value.dtype)
        totals.append(np.sum(pieces.reshape(-1, *value.shape), axis=0, dtype=value.dtype))
        offset += value.nbytes
    return jax.tree.unflatten(treedef, totals)


def spans_processes() -> bool:
    """Whether this program is one of several JAX processes (``jax.distributed``)."""
    return jax.distributed.is_initialized() and jax.process_count() > 1


def create_once(name: str, exists: Callable[[], bool], create: Callable[[], None]) -> None:
    """Creates what several processes need (a data set, a statistics file) once.

    One process: ``create()`` unless ``exists()``. Several processes
    (``jax.distributed``): process 0 calls ``create()`` unless ``exists()`` there,
    while the others wait at a barrier; then every process finds it. Without this each
    process created it at once in the same place (TFDS's ``download_and_prepare`` of
    two processes into one data directory: ``FileExistsError`` in one, a collective
    timeout in the other). A process that still misses it after the barrier (a
    directory local to its host) creates it itself.

    Every process of the run must call it (the barrier is a collective); ``exists``
    must not depend on anything but what ``create`` makes.

    Args:
      name: the barrier's name, the same on every process (it says what is awaited).
      exists: whether it is there (on this process's file system).
      create: makes it; on several processes, called by process 0 only (and by a
        process that does not see process 0's).
    """
    if not spans_processes():
        if not exists():
            create()
        return
    if jax.process_index() == 0 and not exists():
        create()
    multihost_utils.sync_global_devices(name)
    if not exists():
        create()
