"""The timers every benchmark uses, and what a timing depends on (load, environment).

Wall times come from ``time.perf_counter`` and end in ``jax.block_until_ready``, so that
JAX's asynchronous dispatch is inside the measured interval; CPU times are user + system
time from ``time.process_time`` (this process) or ``getrusage`` (its children).

Example:
  >>> import jax.numpy as jnp
  >>> seconds = time_calls(jnp.sin, (jnp.ones(3),), repeats=2)
  >>> len(seconds), all(s >= 0 for s in seconds)
  (2, True)
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jaxlib
import numpy as np

try:
    import resource
except ImportError:  # Not on a Unix.
    resource = None


class Stopwatch:
    """Wall and CPU seconds since it started, frozen at the end of a ``with`` block.

    It starts when created (and again on entering a ``with`` block); outside a block
    ``wall_s`` and ``cpu_s`` keep running. A block that times JAX work blocks on its
    results itself (``jax.block_until_ready``).

    Example:
      >>> with Stopwatch() as watch:
      ...     _ = sum(range(1000))
      >>> watch.wall_s == watch.wall_s and watch.cpu_s >= 0
      True
    """

    def __init__(self) -> None:
        self._start = (time.perf_counter(), time.process_time())
        self._stop: tuple[float, float] | None = None

    def __enter__(self) -> Stopwatch:
        self.__init__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop = (time.perf_counter(), time.process_time())

    @property
    def wall_s(self) -> float:
        """Wall-clock seconds."""
        end = self._stop[0] if self._stop else time.perf_counter()
        return end - self._start[0]

    @property
    def cpu_s(self) -> float:
        """CPU seconds of this process (user + system, all threads)."""
        end = self._stop[1] if self._stop else time.process_time()
        return end - self._start[1]


def time_call(fn: Callable, *args) -> tuple[float, Any]:
    """Wall seconds of ``fn(*args)`` until its result is ready, and the result."""
    start = time.perf_counter()
    result = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, result


def time_calls(fn: Callable, args: Sequence[Any], repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` blocking calls ``fn(*args)``, one after the other."""
    return [time_call(fn, *args)[0] for _ in range(repeats)]


def minor_faults() -> int:
    """Minor page faults of this process so far (all threads); 0 where unknown."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def time_call_and_faults(fn: Callable, args: Sequence[Any]) -> tuple[float, int]:
    """Wall time of one blocking call, and the minor page faults it took (all threads)."""
    faults = minor_faults()
    seconds, _ = time_call(fn, *args)
    return seconds, minor_faults() - faults


def time_interleaved(
    candidates: dict[str, tuple[Callable, tuple]], repeats: int, *, seed: int = 1234
) -> tuple[dict[str, float], dict[str, list[float]], dict[str, list[int]]]:
    """Per candidate: first-call (compile) time, ``repeats`` interleaved wall times, faults.

    Each round calls every candidate once, in a random order drawn afresh every round.
    """
    compile_s = {name: time_call_and_faults(fn, args)[0] for name, (fn, args) in candidates.items()}
    for fn, args in candidates.values():  # A second warm-up call, after compilation.
        time_call_and_faults(fn, args)
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    faults: dict[str, list[int]] = {name: [] for name in names}
    # A fresh random order every round: a candidate that maps and frees much memory slows
    # the call after it, so a fixed neighbour would be charged for it in every round.
    rng = np.random.default_rng(seed)
    for _ in range(repeats):
        for name in rng.permutation(names):
            fn, args = candidates[name]
            seconds, count = time_call_and_faults(fn, args)
            times[name].append(seconds)
            faults[name].append(count)
    return compile_s, times, faults


def time_steps(step: Callable, state, batch, steps: int) -> tuple[Any, float, float, Any]:
    """Runs ``state, metrics = step(state, batch)`` ``steps`` times, blocking at the end.

    Returns:
      ``(state, wall seconds per step, CPU seconds per step, metrics of the last step)``.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    metrics = None
    with Stopwatch() as watch:
        for _ in range(steps):
            state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
    return state, watch.wall_s / steps, watch.cpu_s / steps, metrics


def children_cpu_seconds() -> float:
    """User + system seconds of this process's finished children (all their threads)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, ``"n/a"`` where the platform has none."""
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def available_cores() -> int:
    """The cores this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def environment() -> dict[str, Any]:
    """Versions, device, cores and XLA flags: what a timing depends on besides the load."""
    device = jax.devices()[0]
    return dict(
        jax=jax.__version__,
        jaxlib=jaxlib.__version__,
        numpy=np.__version__,
        python=platform.python_version(),
        backend=jax.default_backend(),
        device=f"{device.platform}: {device.device_kind}",
        num_devices=jax.device_count(),
        cpu_count=os.cpu_count(),
        usable_cores=available_cores(),
        processor=platform.processor() or platform.machine(),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        x64=bool(jax.config.jax_enable_x64),
    )
