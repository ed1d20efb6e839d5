"""Runs a training command as several JAX processes on this machine (CPU devices).

For developing and testing the multi-process path on one host: each process is one
``jax.distributed`` task with ``--devices-per-process`` CPU devices, the processes talk
through gloo collectives, and process 0 runs the coordinator on a free localhost port::

  python -m experiments.launch --processes 2 --devices-per-process 2 -- \\
      --config experiments/configs/tiny.py --workdir runs/tiny_2x2

The arguments after ``--`` are those of ``experiments/train.py``; the launcher appends
``--config.distributed=True``. Each process gets, in its environment,
``JAX_COORDINATOR_ADDRESS=127.0.0.1:<port>``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``
(read by :func:`experiments.train.distributed_arguments`), ``JAX_PLATFORMS=cpu``,
``JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo`` and
``XLA_FLAGS=--xla_force_host_platform_device_count=<devices per process>``.

Output: every line of a process's stdout and stderr is printed with its index,
``[process 1] ...``. When a process exits with a non-zero status (an error, a kill), the
launcher says which (``[launch] process 1 (pid 1234) exited with signal SIGKILL``),
stops the others (SIGTERM, then SIGKILL after ``--grace-seconds``: a peer blocked in a
collective never returns by itself) and exits with the worst status of the processes
that ended by themselves (a signal ``s`` counts as ``128 + s``); 0 when all succeeded.
Rerunning the same command resumes from the latest checkpoint of ``--workdir``.

On a cluster there is no launcher: the scheduler starts one process per host and
``jax.distributed.initialize()`` finds its peers (``experiments/README.md``, "Training").
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TextIO

#: The command each process runs, before the arguments given after ``--``.
TRAIN_COMMAND = (sys.executable, "-u", "-m", "experiments.train")

_PREFIX = "[launch]"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free when asked (the OS picks it)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_environment(
    base: Mapping[str, str],
    *,
    process_id: int,
    num_processes: int,
    devices_per_process: int,
    port: int,
) -> dict[str, str]:
    """The environment of process ``process_id``: ``base`` with the JAX cluster settings.

    ``XLA_FLAGS`` keeps the flags of ``base`` other than the host device count.
    """
    xla_flags = [
        flag
        for flag in base.get("XLA_FLAGS", "").split()
        if not flag.startswith("--xla_force_host_platform_device_count")
    ]
    xla_flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    return {
        **base,
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
        "JAX_NUM_PROCESSES": str(num_processes),
        "JAX_PROCESS_ID": str(process_id),
        "JAX_PLATFORMS": "cpu",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
        "XLA_FLAGS": " ".join(xla_flags),
        "PYTHONUNBUFFERED": "1",
    }


def _exit_status(returncode: int) -> int:
    """A shell's exit status: ``128 + s`` for a process ended by signal ``s``."""
    return 128 - returncode if returncode < 0 else returncode


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"status {returncode}"


def _forward(stream: TextIO, prefix: str, out: TextIO, lock: threading.Lock) -> None:
    """Copies the lines of ``stream`` to ``out``, each after ``prefix``, whole lines only."""
    for line in stream:
        with lock:
            out.write(f"{prefix} {line.rstrip(chr(10))}\n")
            out.flush()
    stream.close()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    """``sig`` to the process and its children (own session, so its own process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


@dataclasses.dataclass
class _Task:
    index: int
    process: subprocess.Popen
    forwarder: threading.Thread
    stopped_by_launcher: bool = False


def run_processes(
    command: Sequence[str],
    *,
    num_processes: int,
    devices_per_process: int,
    port: int | None = None,
    grace_seconds: float = 10.0,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    cwd: str | None = None,
) -> int:
    """Runs ``command`` as processes ``0 .. num_processes - 1`` of one JAX cluster.

    Args:
      command: the program and its arguments, the same for every process.
      num_processes: how many processes (>= 1).
      devices_per_process: CPU devices of each process (>= 1).
      port: the coordinator's port on 127.0.0.1; None picks a free one.
      grace_seconds: after a process failed, how long the others get between SIGTERM
        and SIGKILL.
      env: the base environment (default ``os.environ``).
      out: where the prefixed output lines and the launcher's messages go (default
        ``sys.stdout``).
      cwd: the working directory of the processes.

    Returns:
      0 when every process exited with 0; otherwise the worst exit status (``128 + s``
      for signal ``s``) of the processes that ended by themselves.

    Raises:
      ValueError: for a non-positive ``num_processes`` or ``devices_per_process``, or
        an empty ``command``.
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be positive, got {num_processes}.")
    if devices_per_process < 1:
        raise ValueError(f"devices_per_process must be positive, got {devices_per_process}.")
    if not command:
        raise ValueError("command must not be empty.")
    out = sys.stdout if out is None else out
    base = dict(os.environ if env is None else env)
    port = free_port() if port is None else int(port)
    lock = threading.Lock()

    def say(message: str) -> None:
        with lock:
            out.write(f"{_PREFIX} {message}\n")
            out.flush()

    tasks: list[_Task] = []
    failed: list[_Task] = []
    try:
        for index in range(num_processes):
            process = subprocess.Popen(
                list(command),
                cwd=cwd,
                env=process_environment(
                    base,
                    process_id=index,
                    num_processes=num_processes,
                    devices_per_process=devices_per_process,
                    port=port,
                ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )
            forwarder = threading.Thread(
                target=_forward, args=(process.stdout, f"[process {index}]", out, lock)
            )
            forwarder.daemon = True
            forwarder.start()
            tasks.append(_Task(index, process, forwarder))
            say(f"process {index} started (pid {process.pid}), coordinator 127.0.0.1:{port}")
        running = list(tasks)
        while running and not failed:
            time.sleep(0.05)
            for task in list(running):
                returncode = task.process.poll()
                if returncode is None:
                    continue
                running.remove(task)
                if returncode != 0:
                    failed.append(task)
                    say(
                        f"process {task.index} (pid {task.process.pid}) exited with "
                        f"{_describe(returncode)}; stopping the other processes."
                    )
    finally:
        # Also on KeyboardInterrupt in the launcher: no process outlives it.
        alive = [task for task in tasks if task.process.poll() is None]
        for task in alive:
            task.stopped_by_launcher = True
            _signal_group(task.process, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        for task in alive:
            try:
                task.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(task.process, signal.SIGKILL)
                task.process.wait()
        for task in alive:
            say(f"process {task.index} stopped ({_describe(task.process.returncode)}).")
        for task in tasks:
            task.forwarder.join(timeout=5.0)
    statuses = [
        _exit_status(task.process.returncode) for task in tasks if not task.stopped_by_launcher
    ]
    status = max(statuses, default=1)
    if failed:
        names = ", ".join(f"process {task.index}" for task in failed)
        say(f"failed: {names}; exit status {status}.")
    return status


def run_captured(
    command: Sequence[str], *, cwd: str, num_processes: int, devices_per_process: int, **kwargs
) -> tuple[int, str]:
    """:func:`run_processes` in ``cwd``, its output returned: ``(status, output)``.

    ``cwd`` is put first on the processes' ``PYTHONPATH``, so that they import the
    modules of that tree (a checkout's ``tests`` or ``benchmarks``). ``kwargs`` are
    :func:`run_processes`'s other arguments, except ``env`` and ``out``.
    """
    output = io.StringIO()
    env = dict(os.environ)
    env["PYTHONPATH"] = cwd + os.pathsep + env.get("PYTHONPATH", "")
    status = run_processes(
        command,
        num_processes=num_processes,
        devices_per_process=devices_per_process,
        env=env,
        out=output,
        cwd=cwd,
        **kwargs,
    )
    return status, output.getvalue()


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    argv = list(argv)
    if "--" not in argv:
        raise SystemExit(
            "usage: python -m experiments.launch --processes N --devices-per-process K "
            "-- <arguments of experiments/train.py>"
        )
    split = argv.index("--")
    parser = argparse.ArgumentParser(
        prog="python -m experiments.launch",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--processes", type=int, required=True, help="JAX processes to start.")
    parser.add_argument(
        "--devices-per-process", type=int, default=1, help="CPU devices of each process."
    )
    parser.add_argument("--port", type=int, default=None, help="Coordinator port (default: free).")
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=10.0,
        help="After a failure, seconds between SIGTERM and SIGKILL for the other processes.",
    )
    return parser.parse_args(argv[:split]), argv[split + 1 :]


def _raise_on_sigterm(signum, frame) -> None:
    del frame
    raise SystemExit(_exit_status(-signum))


def main(argv: Sequence[str]) -> int:
    """``python -m experiments.launch [launcher flags] -- <train flags>``; the exit status."""
    args, train_args = _parse(argv)
    # A launcher stopped with SIGTERM stops its processes first (run_processes' finally).
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    command = [*TRAIN_COMMAND, *train_args, "--config.distributed=True"]
    return run_processes(
        command,
        num_processes=args.processes,
        devices_per_process=args.devices_per_process,
        port=args.port,
        grace_seconds=args.grace_seconds,
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
