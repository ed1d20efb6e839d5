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

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import jax
import numpy as np
import pytest

from experiments import launch
from experiments import train as train_script
from spectral_jax import parallel
from spectral_jax.data import load_split
from spectral_jax.training import checkpointing
from tests import multiprocess_worker as worker
from tests.helpers import compiler

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    status, out = launch.run_captured(
        [sys.executable, "-c", _SCRIPT, "ok"], cwd=ROOT, num_processes=3, devices_per_process=1
    )
    assert status == 0, out
    for index in range(3):
        assert f"[process {index}] hello from {index} of 3\n" in out


def test_launcher_stops_the_others_when_one_process_fails():
    """Process 1 exits with 3; process 0 ignores SIGTERM and is killed after the grace."""
    start = time.monotonic()
    status, out = launch.run_captured(
        [sys.executable, "-c", _SCRIPT, "fail"],
        cwd=ROOT,
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
    command = [
        sys.executable,
        "-m",
        "tests.multiprocess_worker",
        str(out),
        "evaluate,step,create_once",
    ]
    status, log = launch.run_captured(command, cwd=ROOT, num_processes=2, devices_per_process=2)
    assert status == 0, log[-4000:]
    return out


def test_evaluation_in_two_processes_equals_one(two_processes):
    """Every metric of the evaluator equals the single-process value on every process.

    The processes evaluate their own rows of each batch of 4 (with ``crop_size=None``
    one host's rows are smaller than the batch's largest example, and in the last batch
    process 1 holds filling rows only). Counts agree exactly (confusion matrix,
    boundary counts, examples evaluated, kept predictions); the float32 loss and
    spectral sums to reduction-order rounding (``rtol=1e-5``; the band components, which
    cancel, also to ``1e-6`` of their largest: measured 3.7e-9 absolute on 1.6e-4 beside
    8.0 with LLVM's optimisations off); the float64 sums of the float32 per-example
    outputs (and the kept outputs) to float32 rounding (``rtol=1e-6``: a device computes
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
                atol = 1e-6 * float(np.max(np.abs(value))) if name == "band_ce" else 0.0
                np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=atol, err_msg=name)
            elif name in ("gates_sum", "example_gates"):
                np.testing.assert_allclose(got[name], value, rtol=1e-6, err_msg=name)
            else:
                np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_create_once_creates_on_process_zero_while_the_other_waits(two_processes):
    """``parallel.create_once``: one creation (process 0's, which takes 1 s), and both
    processes read it after the call."""
    assert (two_processes / "creators.log").read_text() == "0\n"
    for index in range(2):
        assert (two_processes / f"seen{index}.txt").read_text() == "0"


def test_create_once_in_one_process(tmp_path):
    created = []
    target = tmp_path / "file"

    def create():
        created.append(1)
        target.write_text("x")

    for _ in range(2):
        parallel.create_once("one process", target.exists, create)
    assert created == [1] and target.read_text() == "x"


def test_train_steps_in_two_processes_equal_one_and_restore_in_one(two_processes):
    """Three train steps over 2 processes equal those in 1, and their checkpoint (written
    by both processes) restores in this single process to the state they held.

    Tolerance as in ``tests/test_parallel.py``: the gradient and the BatchNorm statistics
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


# ---------------------------------------------------------------------------------------
# The command line: python -m experiments.launch ... -- <experiments/train.py flags>.


def test_first_run_of_two_processes_builds_the_missing_data_set_once(tmp_path):
    """A user's first multi-process run: the TFDS data directory is empty. Every process
    called ``download_and_prepare`` into it (process 0 died with ``FileExistsError``,
    process 1 timed out in gloo); now process 0 builds it while process 1 waits at a
    barrier, and the 2-step run ends with its summary. Kept cheap: 1 device per
    process, 33 x 33 crops, batches of 2, 2 validation images, no spectral or boundary
    statistics."""
    data_dir = tmp_path / "tensorflow_datasets"
    data_dir.mkdir()
    workdir = tmp_path / "run"
    env = _launch_env()
    env["TFDS_DATA_DIR"] = str(data_dir)
    flags = (
        "--config=experiments/configs/tiny.py",
        "--config.num_train_steps=2",
        "--config.crop_size=33",
        "--config.batch_size=2",
        "--config.eval_batch_size=2",
        "--config.eval_split=validation[:2]",
        "--config.log_every_steps=1",
        "--config.checkpoint_every_steps=-1",
        "--config.spectral_statistics=False",
        "--config.boundary_metrics=False",
        "--config.progress_bar=False",
        "--config.tensorboard=False",
    )
    command = [sys.executable, "-m", "experiments.launch", "--processes=2"]
    command += ["--devices-per-process=1", "--grace-seconds=5", "--", *flags]
    result = subprocess.run(
        [*command, f"--workdir={workdir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert re.search(r"^\[process 0\] .*summary: ", output, re.MULTILINE), output[-4000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["num_devices"] == 2
    assert np.isfinite(summary["mean_iou"])
    # Built once, completely: one version directory and no leftover "incomplete.*" one.
    built = sorted(p.name for p in (data_dir / "synthetic_scenes" / "pascal_like").iterdir())
    assert built == ["1.0.0"], built
    assert len(re.findall(r"Dataset synthetic_scenes downloaded and prepared", output)) == 1


_STEPS = 8
_TRAIN_FLAGS = (
    "--config=experiments/configs/tiny.py",
    f"--config.num_train_steps={_STEPS}",
    # At the tiny config's 0.05 the float32 rounding of the reduction order grows to
    # percents of some BatchNorm statistics within 16 steps (measured); 0.01 keeps it
    # near 1e-5 over 8 steps on 4 devices.
    "--config.learning_rate=0.01",
    "--config.crop_size=33",
    "--config.checkpoint_every_steps=2",
    "--config.keep_checkpoints=10",
    "--config.log_every_steps=2",
    "--config.eval_every_steps=-1",
    # 3 examples, batches of 8: with 2 processes, process 1 holds filling rows only.
    "--config.eval_split=validation[:3]",
    "--config.progress_bar=False",
    "--config.tensorboard=False",
)


def _launch_command(workdir, processes: int, devices: int, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.launch",
        f"--processes={processes}",
        f"--devices-per-process={devices}",
        "--grace-seconds=5",
        "--",
        *_TRAIN_FLAGS,
        *flags,
        f"--workdir={workdir}",
    ]


def _launch_env(*, users_compiler: bool = False) -> dict[str, str]:
    """The launcher's environment; ``users_compiler`` drops the tests' XLA settings."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if users_compiler:
        env["XLA_FLAGS"] = compiler.without_test_flags(env.get("XLA_FLAGS", ""))
    return env


def _train(workdir, processes: int, devices: int, *flags: str, users_compiler: bool = False) -> str:
    result = subprocess.run(
        _launch_command(workdir, processes, devices, *flags),
        cwd=ROOT,
        env=_launch_env(users_compiler=users_compiler),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    return result.stdout


def _final_state(workdir) -> dict[str, np.ndarray]:
    tree, step = checkpointing.load_checkpoint(workdir)
    assert step == _STEPS
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree.leaves_with_path(tree)}


def _assert_states_close(got, want, *, relative: float) -> float:
    """Each array agrees to ``relative`` of its largest entry; the largest such error."""
    assert sorted(got) == sorted(want) and len(want) > 10
    worst = 0.0
    for name, value in want.items():
        scale = max(float(np.max(np.abs(value))), 1e-6)
        error = float(np.max(np.abs(got[name] - value))) / scale
        assert error <= relative, (name, error)
        worst = max(worst, error)
    return worst


def _finished_steps(workdir) -> list[int]:
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return [int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "state").is_dir()]


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory):
    """The tiny config trained by 2 processes x 2 devices: ``(workdir, output)``."""
    load_split("synthetic_scenes/pascal_like", "train")  # Build once, not in each process.
    load_split("synthetic_scenes/pascal_like", "validation")
    workdir = tmp_path_factory.mktemp("two_by_two")
    return workdir, _train(workdir, 2, 2, users_compiler=True)


_SCORES = ("mean_iou", "pixel_accuracy", "eval_loss", "mean_ce")


@pytest.mark.slow
def test_two_processes_by_two_devices_equal_one_by_four(two_by_two, tmp_path):
    """2 x 2 and 1 x 4 (one 4-device mesh) end with the same parameters and scores.

    Tolerance: the gradient's all-reduce sums the devices' parts within a process and
    across the processes (gloo) where one process sums all four: 1.5e-6 of an array's
    largest entry after one step, 5e-5 after eight (measured; the training amplifies
    it); each array must agree to 1e-3 of its largest entry, the scores to
    ``rtol=1e-5`` (measured: equal). The files are written once, by process 0:
    ``metrics.jsonl`` holds every logged step once, ``summary.json`` is process 0's.
    Both runs compile with XLA's defaults, as the tolerance was measured: with the tests'
    cheaper settings (LLVM at level 0, loop emitters) the eight steps drifted to 3e-3 and
    8e-3 in two runs.
    """
    reference, output = two_by_two
    assert re.search(r"^\[process 1\] ", output, re.MULTILINE), output[-2000:]
    # The script's own progress, and no other library's INFO lines (orbax logs every
    # checkpoint operation: about 40 lines per process before experiments/train.py
    # left the root logger at WARNING). absl's prefix names the file, not the package.
    assert re.search(r"^\[process 0\] .*summary: ", output, re.MULTILINE), output[-2000:]
    ours = {
        path.name
        for package in ("experiments", "spectral_jax")
        for path in pathlib.Path(ROOT, package).rglob("*.py")
    }
    info_files = re.findall(r"^\[process \d\] I\d{4} [\d:.]+ +\d+ ([^:\s]+):\d+\]", output, re.M)
    assert info_files and set(info_files) <= ours, sorted(set(info_files) - ours)
    single = tmp_path / "one_by_four"
    _train(single, 1, 4, users_compiler=True)
    worst = _assert_states_close(_final_state(reference), _final_state(single), relative=1e-3)
    print(f"2x2 against 1x4: largest difference {worst:.2e} of the array's largest entry")
    got = json.loads((reference / "summary.json").read_text())
    want = json.loads((single / "summary.json").read_text())
    assert got["num_devices"] == want["num_devices"] == 4
    for name in _SCORES:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=name)
    for name, value in want["boundary"].items():
        np.testing.assert_allclose(got["boundary"][name], value, rtol=1e-5, err_msg=name)
    records = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 6, 8]
    assert [r["step"] for r in records if "eval/mean_iou" in r] == [8]


@pytest.mark.slow
def test_replicas_of_several_seeds_in_two_processes_equal_one(tmp_path):
    """``config.num_seeds=2`` over 2 processes x 1 device: the stacked replicas (batches
    ``[2, B, ...]`` split along ``B`` across the processes, keys replicated to every
    process) end as in one process with 2 devices, and ``summary.json`` holds both."""
    load_split("synthetic_scenes/pascal_like", "train")  # Build once, not in each process.
    load_split("synthetic_scenes/pascal_like", "validation")
    two = tmp_path / "two_by_one"
    one = tmp_path / "one_by_two"
    _train(two, 2, 1, "--config.num_seeds=2")
    _train(one, 1, 2, "--config.num_seeds=2")
    _assert_states_close(_final_state(two), _final_state(one), relative=1e-3)
    got = json.loads((two / "summary.json").read_text())
    want = json.loads((one / "summary.json").read_text())
    assert got["seeds"] == want["seeds"] == [0, 1]
    for replica_got, replica_want in zip(got["replicas"], want["replicas"], strict=True):
        for name in _SCORES:
            np.testing.assert_allclose(
                replica_got[name], replica_want[name], rtol=1e-5, err_msg=name
            )


@pytest.mark.slow
def test_killed_process_stops_the_launcher_and_the_rerun_resumes(two_by_two, tmp_path):
    """SIGKILL to process 1 after the first checkpoint: the launcher names it and exits
    with 137 within a bounded time; the same command then resumes from the latest
    checkpoint and ends with the parameters of the uninterrupted 2 x 2 run (bit-equal:
    the same program on the same devices, and the data stream is a function of the step).
    """
    reference, _ = two_by_two
    workdir = tmp_path / "killed"
    launcher = subprocess.Popen(
        _launch_command(workdir, 2, 2),
        cwd=ROOT,
        env=_launch_env(users_compiler=True),  # as the reference run
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    victim = None
    while victim is None:
        line = launcher.stdout.readline()
        assert line, "".join(lines)
        lines.append(line)
        if match := re.match(r"\[launch\] process 1 started \(pid (\d+)\)", line):
            victim = int(match.group(1))
    drain = threading.Thread(target=lambda: lines.extend(launcher.stdout), daemon=True)
    drain.start()
    deadline = time.monotonic() + 600
    while not _finished_steps(workdir):
        assert launcher.poll() is None, "".join(lines)[-4000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    status = launcher.wait(timeout=120)
    stopped_after = time.monotonic() - killed_at
    drain.join(timeout=10)
    launcher.stdout.close()
    output = "".join(lines)
    assert not (workdir / "summary.json").exists(), "the run finished before the kill"
    assert status == 128 + signal.SIGKILL, output[-4000:]
    assert f"[launch] process 1 (pid {victim}) exited with signal SIGKILL" in output, output
    assert stopped_after < 30, stopped_after  # The grace is 5 s.
    resumed_from = max(_finished_steps(workdir))
    assert resumed_from < _STEPS
    _train(workdir, 2, 2, users_compiler=True)
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["resumed_from_step"] >= resumed_from
    got, want = _final_state(workdir), _final_state(reference)
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    reference_summary = json.loads((reference / "summary.json").read_text())
    assert summary["mean_iou"] == reference_summary["mean_iou"]


@pytest.mark.slow
@pytest.mark.parametrize("processes,devices", [(1, 4), (1, 1)])
def test_checkpoint_of_two_by_two_resumes_on_another_topology(
    two_by_two, tmp_path, processes, devices
):
    """The 2 x 2 run's checkpoint at step 6 (its later ones removed) resumed by 1 x 4 and
    by 1 x 1 ends where the 2 x 2 run ended.

    The restored state is the saved one (orbax stores each array once, whatever the
    devices); the remaining 2 steps then differ by the reduction order only: 1e-3 of
    each array's largest entry (as tests/test_parallel.py's 4-against-1 training test).
    """
    reference, _ = two_by_two
    workdir = tmp_path / "resumed"
    shutil.copytree(reference, workdir)
    (workdir / "summary.json").unlink()
    for step in _finished_steps(workdir):
        if step > 6:
            shutil.rmtree(workdir / "checkpoints" / str(step))
    _train(workdir, processes, devices, users_compiler=True)  # as the reference run
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["resumed_from_step"] == 6
    assert summary["num_devices"] == processes * devices
    worst = _assert_states_close(_final_state(workdir), _final_state(reference), relative=1e-3)
    print(f"resumed on {processes}x{devices}: largest difference {worst:.2e}")
