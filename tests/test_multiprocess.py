"""Several JAX processes on this machine: the launcher, evaluation, steps, checkpoints.

The processes are real: :func:`experiments.launch.run_processes` starts them with the
coordinator on a free localhost port, each with its own CPU devices, and they exchange
data through gloo collectives. By default one short run of two processes with two
devices each (``tests/multiprocess_worker.py``: the evaluator, three train steps of a
small model and an orbax checkpoint written by both) is compared with the same
computation in this single process; two devices per process, so that a process reads
back its rows from more than one shard. The ``slow`` tests train the tiny config through
``python -m experiments.launch`` (the command line a user runs): 2 processes x 2 devices
against 1 x 4, a process killed and the run resumed, and a checkpoint of 2 x 2 resumed
on 1 x 4 and 1 x 1.
"""

from __future__ import annotations

import io
import os
import re
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from experiments import launch
from experiments import train as train_script
from spectral_jax.training import checkpointing
from tests import multiprocess_worker as worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(command, *, num_processes, devices_per_process, **kwargs) -> tuple[int, str]:
    out = io.StringIO()
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    status = launch.run_processes(
        command,
        num_processes=num_processes,
        devices_per_process=devices_per_process,
        env=env,
        out=out,
        cwd=ROOT,
        **kwargs,
    )
    return status, out.getvalue()


# ---------------------------------------------------------------------------------------
# The launcher and the cluster settings (no JAX in the processes: fast).


def test_distributed_arguments_from_the_launcher_environment():
    env = launch.process_environment(
        {"XLA_FLAGS": "--xla_cpu_foo=1 --xla_force_host_platform_device_count=8"},
        process_id=1,
        num_processes=3,
        devices_per_process=2,
        port=1234,
    )
    assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:1234"
    assert env["XLA_FLAGS"] == "--xla_cpu_foo=1 --xla_force_host_platform_device_count=2"
    assert env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] == "gloo"
    assert train_script.distributed_arguments(env) == {"num_processes": 3, "process_id": 1}
    # On a cluster neither is set: jax.distributed.initialize() asks the cluster.
    assert train_script.distributed_arguments({}) == {}
    with pytest.raises(ValueError, match="set both JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
        train_script.distributed_arguments({"JAX_PROCESS_ID": "0"})
    with pytest.raises(ValueError, match="must be integers"):
        train_script.distributed_arguments({"JAX_PROCESS_ID": "0", "JAX_NUM_PROCESSES": "two"})


_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    index = int(os.environ["JAX_PROCESS_ID"])
    print(f"hello from {index} of {os.environ['JAX_NUM_PROCESSES']}", flush=True)
    if sys.argv[1] == "fail" and index == 1:
        sys.exit(3)
    if sys.argv[1] == "fail":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # A peer stuck in a collective.
        time.sleep(120)
    """
)


def test_launcher_prefixes_output_and_returns_zero():
    status, out = _run(
        [sys.executable, "-c", _SCRIPT, "ok"], num_processes=3, devices_per_process=1
    )
    assert status == 0, out
    for index in range(3):
        assert f"[process {index}] hello from {index} of 3\n" in out


def test_launcher_stops_the_others_when_one_process_fails():
    """Process 1 exits with 3; process 0 ignores SIGTERM and is killed after the grace."""
    start = time.monotonic()
    status, out = _run(
        [sys.executable, "-c", _SCRIPT, "fail"],
        num_processes=2,
        devices_per_process=1,
        grace_seconds=1.0,
    )
    assert time.monotonic() - start < 30, out
    assert status == 3, out
    assert re.search(r"\[launch\] process 1 \(pid \d+\) exited with status 3", out), out
    assert "[launch] process 0 stopped (signal SIGKILL)." in out, out
    assert "[launch] failed: process 1; exit status 3." in out, out


def test_launcher_refuses_bad_arguments():
    with pytest.raises(ValueError, match="num_processes"):
        launch.run_processes(["true"], num_processes=0, devices_per_process=1)
    with pytest.raises(ValueError, match="devices_per_process"):
        launch.run_processes(["true"], num_processes=1, devices_per_process=0)


# ---------------------------------------------------------------------------------------
# Two processes x one device against one process (the default multi-process test).


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Runs the evaluator and the train steps in 2 processes x 2 devices; the outputs."""
    out = tmp_path_factory.mktemp("two_processes")
    command = [sys.executable, "-m", "tests.multiprocess_worker", str(out), "evaluate,step"]
    status, log = _run(command, num_processes=2, devices_per_process=2)
    assert status == 0, log[-4000:]
    return out


def test_evaluation_in_two_processes_equals_one(two_processes):
    """Every metric of the evaluator equals the single-process value on every process.

    The processes evaluate their own rows of each batch of 4 (with ``crop_size=None``
    one host's rows are smaller than the batch's largest example, and in the last batch
    process 1 holds filling rows only). Counts agree exactly (confusion matrix,
    boundary counts, examples evaluated, kept predictions); the float32 loss and
    spectral sums to reduction-order rounding (``rtol=1e-5``); the float64 sums of the
    float32 per-example outputs (and the kept outputs) to float32 rounding (``rtol=1e-6``: a device computes
    the example's mean in a batch of 2 instead of 4; measured 1.1e-7).
    """
    want = worker.result_arrays(worker.evaluate())
    assert int(want["num_evaluated"]) == len(worker.EVAL_SIZES)
    assert want["example_prediction"].shape == (worker.NUM_EXAMPLES_KEPT, 16, 16)
    for index in range(2):
        got = np.load(two_processes / f"evaluator{index}.npz")
        assert sorted(got.files) == sorted(want)
        for name, value in want.items():
            if name in ("loss", "band_ce", "spatial_ce"):
                np.testing.assert_allclose(got[name], value, rtol=1e-5, err_msg=name)
            elif name in ("gates_sum", "example_gates"):
                np.testing.assert_allclose(got[name], value, rtol=1e-6, err_msg=name)
            else:
                np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_train_steps_in_two_processes_equal_one_and_restore_in_one(two_processes):
    """Three train steps over 2 processes equal those in 1, and their checkpoint (written
    by both processes) restores in this single process to the state they held.

    Tolerance as in ``tests/test_sharding.py``: the gradient and the BatchNorm statistics
    are summed per process then across processes, ``rtol=1e-5, atol=1e-6``. The
    checkpoint holds the float32 arrays as they were: exact.
    """
    state = worker.train_steps()
    want = {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree.leaves_with_path(state)}
    got = [np.load(two_processes / f"state{index}.npz") for index in range(2)]
    assert sorted(got[0].files) == sorted(want) and len(want) > 6
    for name, value in want.items():
        np.testing.assert_allclose(got[0][name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_array_equal(got[1][name], got[0][name], err_msg=name)
    assert int(got[0][".step"]) == worker.TRAIN_STEPS
    # Restored as the trainer restores, into this process's (one device) state.
    manager = checkpointing.create_checkpoint_manager(two_processes / "steps", asynchronous=False)
    try:
        restored, step = checkpointing.restore_latest(
            manager, state, metadata={"steps": worker.TRAIN_STEPS}
        )
    finally:
        manager.close()
    assert step == worker.TRAIN_STEPS
    for path, value in jax.tree.leaves_with_path(restored):
        name = jax.tree_util.keystr(path)
        np.testing.assert_array_equal(np.asarray(value), got[0][name], err_msg=name)
