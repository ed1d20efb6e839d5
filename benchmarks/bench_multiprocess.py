r"""The cost of the process boundary: training steps/s and one gradient all-reduce.

Run from the repository root::

  python -m benchmarks.bench_multiprocess
  python -m benchmarks.bench_multiprocess --rounds 3 --steps 60 --trees tiny,resnet101

**Steps/s.** The tiny configuration (``experiments/configs/tiny.py``: ``resnet_tiny``
DeepLab v3+, batch 8, crop 65, the generated scenes through the real input pipeline)
trained by ``experiments.train`` under :func:`experiments.launch.run_processes`, as
1 process x 2 CPU devices and as 2 processes x 1 device: the same 2-device mesh and
program, but in the second the gradient's and the BatchNorm statistics' all-reduces
cross a process boundary (gloo over localhost), and each process runs its own input
pipeline. The rate is read from the run's ``metrics.jsonl``: steps over wall time between
the first log point (after the compilation) and the last one (before the final
evaluation and checkpoint, which are left out: ``--config.eval_every_steps=-1``).

**All-reduce.** One ``psum`` over the ``"data"`` axis of a tree of float32 arrays shaped
like a model's parameters (its gradient), each device holding its own copy, under
``jax.shard_map``; the median wall time of ``--repeats`` calls (each waited for) after
two warm-up calls, on process 0, for 1 process x 2 devices (in-process) and
2 processes x 1 device (gloo). Trees: ``tiny`` (the tiny config's model) and
``resnet101`` (the default config's DeepLab v3+ with a ResNet-101 backbone, 21 classes).

Both measurements interleave the two topologies in every round (A, B, A, B, ...); the
machine's load average is printed at the start and the end (compare within one run).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from benchmarks.timing import load_average, time_calls
from experiments import launch
from experiments import train as train_script
from experiments.configs import default, tiny
from spectral_jax import parallel
from spectral_jax.data import load_split
from spectral_jax.models import registry
from spectral_jax.training import train_state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGIES = ((1, 2), (2, 1))  # (processes, devices per process)


def _train_flags(steps: int, log_every: int) -> list[str]:
    return [
        "--config=experiments/configs/tiny.py",
        f"--config.num_train_steps={steps}",
        f"--config.log_every_steps={log_every}",
        "--config.eval_every_steps=-1",
        f"--config.checkpoint_every_steps={steps}",
        "--config.eval_split=validation[:2]",
        "--config.spectral_statistics=False",
        "--config.boundary_metrics=False",
        "--config.progress_bar=False",
        "--config.tensorboard=False",
    ]


def _launch(command: list[str], processes: int, devices: int) -> str:
    status, output = launch.run_captured(
        command, cwd=ROOT, num_processes=processes, devices_per_process=devices
    )
    if status:
        raise RuntimeError(f"{processes} x {devices} failed ({status}):\n{output[-4000:]}")
    return output


def steps_per_second(processes: int, devices: int, *, steps: int, log_every: int) -> float:
    """Steps/s of the tiny config's training loop between its first and last log points."""
    with tempfile.TemporaryDirectory() as workdir:
        command = [
            sys.executable,
            "-m",
            "experiments.train",
            *_train_flags(steps, log_every),
            f"--workdir={workdir}",
            "--config.distributed=True",
        ]
        _launch(command, processes, devices)
        with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as file:
            records = [json.loads(line) for line in file]
    rates = [r["train/steps_per_second"] for r in records if "train/steps_per_second" in r]
    timed = rates[1:]  # The first interval holds the compilation.
    return len(timed) * log_every / sum(log_every / rate for rate in timed)


def gradient_tree(name: str):
    """``jax.ShapeDtypeStruct`` leaves of the parameters of ``name``'s model."""
    config = {"tiny": tiny.get_config, "resnet101": default.get_config}[name]()
    model = registry.create_model(config.model, num_classes=21)
    shapes = jax.eval_shape(
        functools.partial(state_lib.init_variables, model, image_size=33, channels=3),
        jax.random.key(0),
    )
    return shapes["params"]


def allreduce_worker(trees: list[str], repeats: int) -> None:
    """In each launched process: times one psum of each tree; process 0 prints it."""
    if os.environ.get("JAX_NUM_PROCESSES"):
        jax.distributed.initialize(**train_script.distributed_arguments())
    mesh = parallel.create_mesh()
    local = mesh.devices.size // jax.process_count()

    # Every device holds its own gradient: row d of [D, ...] on device d.
    def place(leaf):
        rows = np.ones((local, *leaf.shape), np.float32)
        return jax.make_array_from_process_local_data(parallel.batch_sharding(mesh), rows)

    results = {}
    for name in trees:
        shapes = gradient_tree(name)
        gradients = jax.tree.map(place, shapes)
        allreduce = jax.jit(
            jax.shard_map(
                lambda tree: jax.tree.map(lambda g: jax.lax.psum(g[0], parallel.DATA_AXIS), tree),
                mesh=mesh,
                in_specs=P(parallel.DATA_AXIS),
                out_specs=P(),
            )
        )
        times = time_calls(allreduce, (gradients,), repeats + 2)[2:]  # 2 warm-up calls
        check = jax.tree.leaves(allreduce(gradients))[0]
        assert float(np.asarray(check.addressable_data(0)).ravel()[0]) == mesh.devices.size
        size = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
        results[name] = {"parameters": size, "ms": 1e3 * statistics.median(times)}
    if jax.process_index() == 0:
        print("RESULT " + json.dumps(results), flush=True)


def allreduce_times(processes: int, devices: int, trees: list[str], repeats: int) -> dict:
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_multiprocess",
        "--allreduce-worker",
        f"--trees={','.join(trees)}",
        f"--repeats={repeats}",
    ]
    output = _launch(command, processes, devices)
    line = next(line for line in output.splitlines() if "RESULT " in line)
    return json.loads(line.split("RESULT ", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--trees", default="tiny,resnet101")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--allreduce-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    trees = [name for name in args.trees.split(",") if name]
    if args.allreduce_worker:
        allreduce_worker(trees, args.repeats)
        return
    print(f"load average at start: {load_average()}, jax {jax.__version__}")
    if not args.skip_training:
        load_split("synthetic_scenes/pascal_like", "train")  # Built once, not per process.
        load_split("synthetic_scenes/pascal_like", "validation")
    rates = {topology: [] for topology in TOPOLOGIES}
    reduces = {topology: [] for topology in TOPOLOGIES}
    for round_index in range(args.rounds):
        for topology in TOPOLOGIES:
            if not args.skip_training:
                rate = steps_per_second(*topology, steps=args.steps, log_every=args.log_every)
                rates[topology].append(rate)
                print(f"round {round_index}: {topology[0]} x {topology[1]}: {rate:.2f} steps/s")
            if trees:
                result = allreduce_times(*topology, trees, args.repeats)
                reduces[topology].append(result)
                print(f"round {round_index}: {topology[0]} x {topology[1]} all-reduce: {result}")
    print(f"load average at end: {load_average()}")
    print("\n| processes x devices | steps/s (median) | rounds |")
    print("|---|---:|---|")
    for topology, values in rates.items():
        if values:
            rounds = ", ".join(f"{v:.2f}" for v in values)
            print(f"| {topology[0]} x {topology[1]} | {statistics.median(values):.2f} | {rounds} |")
    if trees:
        print("\n| tree | parameters | processes x devices | all-reduce ms (median) | rounds |")
        print("|---|---:|---|---:|---|")
        for name in trees:
            for topology, results in reduces.items():
                values = [r[name]["ms"] for r in results]
                size = results[0][name]["parameters"]
                rounds = ", ".join(f"{v:.1f}" for v in values)
                print(
                    f"| {name} | {size:,} | {topology[0]} x {topology[1]} | "
                    f"{statistics.median(values):.1f} | {rounds} |"
                )


if __name__ == "__main__":
    main()
