r"""Several seeds at once: ``S`` vmapped replicas against ``S`` runs one after the other.

Run from the repository root::

  python -m benchmarks.bench_seeds
  python -m benchmarks.bench_seeds --num-seeds 4 --rounds 10 --json runs/bench/seeds.json

The model and batch are the tiny configuration's (``experiments/configs/tiny.py``:
``resnet_tiny`` DeepLab v3+, batch 8, crop 65, 21 classes) with the loop's own compiled
program (``spectral_jax.training.train``): the step of one replica, and the step of ``S``
replicas (``config.num_seeds = S``: ``jax.vmap`` over the stacked state, batch ``[S, 8,
65, 65, 3]``). Two numbers:

* compile time: ``lower(...).compile()`` of the one-replica step and of the ``S``-replica
  step (after a first compilation of each, to warm JAX's own caches; XLA's cache is
  cleared in between). ``S`` runs in one process compile the one-replica step once (its
  seeds' keys are arguments), ``S`` processes ``S`` times;
* replica-steps per second: in every round, ``--steps`` calls of the ``S``-replica step
  and ``S x --steps`` calls of the one-replica step (the same work: ``S`` replicas
  advance ``--steps`` steps), interleaved, on a fixed batch already on the device, timed
  with ``jax.block_until_ready``. The table gives the median over the rounds.

Last, one convolution layer for ``S`` replicas, ``jax.vmap``-ed against written out one by
one, which shows where the vmapped step loses on the CPU.

The load average is printed: on a shared machine compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import Stopwatch, load_average, time_calls
from experiments import report
from experiments.configs import tiny
from spectral_jax import parallel
from spectral_jax.data import IGNORE_INDEX
from spectral_jax.models import registry
from spectral_jax.training import train
from spectral_jax.training import writers as writers_lib


def _program(config, num_replicas: int):
    return train._training_program(
        registry.create_model(config.model, num_classes=21),
        train._OptimizerSettings(
            learning_rate=float(config.learning_rate),
            total_steps=int(config.num_train_steps),
            power=float(config.lr_power),
            momentum=float(config.momentum),
            weight_decay=float(config.weight_decay),
        ),
        num_replicas=num_replicas,
        input_shape=registry.input_shape(config.model, image_size=int(config.crop_size)),
        ignore_index=IGNORE_INDEX,
        devices=tuple(jax.devices()),
    )


def _batch(config, num_replicas: int, mesh) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    shape = (num_replicas, config.batch_size, config.crop_size, config.crop_size)
    batch = {
        "image": rng.standard_normal((*shape, 3)).astype(np.float32),
        "label": rng.integers(0, 21, shape).astype(np.int32),
    }
    if num_replicas == 1:
        batch = {name: value[0] for name, value in batch.items()}
    return parallel.shard_batch(batch, mesh, batch_axis=int(num_replicas > 1))


def _compile_seconds(program, state, batch, keys) -> float:
    program.train_fn.lower(state, batch, keys).compile()  # Warms JAX's tracing caches.
    jax.clear_caches()
    with Stopwatch() as watch:
        program.train_fn.lower(state, batch, keys).compile()
    return watch.wall_s


def _conv_milliseconds(num_replicas: int, repeats: int = 10) -> dict[str, float]:
    """One 3x3 convolution (batch 8, 33 x 33, 32 -> 32 channels) per replica, forward and
    forward + both gradients: ``jax.vmap`` over replicas' kernels and inputs (XLA sees one
    grouped convolution) against the replicas' convolutions written out one by one."""

    def conv(kernel, x):
        return jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def gradients(kernel, x):
        return jax.grad(lambda k, v: jnp.sum(conv(k, v) ** 2), argnums=(0, 1))(kernel, x)

    x = jnp.ones((num_replicas, 8, 33, 33, 32), jnp.float32)
    kernel = jnp.full((num_replicas, 3, 3, 32, 32), 0.01, jnp.float32)
    candidates = {}
    for name, fn in (("forward", conv), ("forward and gradients", gradients)):
        candidates[f"{name}, vmap"] = jax.jit(jax.vmap(fn))
        candidates[f"{name}, one by one"] = jax.jit(
            lambda k, v, fn=fn: [fn(k[i], v[i]) for i in range(num_replicas)]
        )
    times = {}
    for name, fn in candidates.items():
        jax.block_until_ready(fn(kernel, x))
        times[name] = sum(time_calls(fn, (kernel, x), repeats)) / repeats * 1e3
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-seeds", type=int, default=4, help="replicas S")
    parser.add_argument("--steps", type=int, default=10, help="steps per replica per round")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    config = tiny.get_config()
    seeds = tuple(range(args.num_seeds))
    print(f"{report.cpu_model()}, jax {jax.__version__}, ")
    print(f"{jax.device_count()} {jax.devices()[0].platform} device(s), load {load_average()}")

    variants = {}
    for name, replica_seeds in (("one replica", seeds[:1]), (f"{len(seeds)} replicas", seeds)):
        program = _program(config, len(replica_seeds))
        init_keys, dropout_keys = train.replica_keys(replica_seeds)
        state = program.init_fn(init_keys)
        batch = _batch(config, len(replica_seeds), program.mesh)
        compile_s = _compile_seconds(program, state, batch, dropout_keys)
        variants[name] = dict(
            program=program, state=state, batch=batch, keys=dropout_keys, compile_s=compile_s
        )

    calls = {"one replica": args.num_seeds * args.steps, f"{args.num_seeds} replicas": args.steps}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for variant in variants.values():  # clear_caches dropped the first one's executable.
        state, _ = variant["program"].train_fn(variant["state"], variant["batch"], variant["keys"])
        variant["state"] = jax.block_until_ready(state)
    for _ in range(args.rounds):
        for name, variant in variants.items():
            state = variant["state"]
            with Stopwatch() as watch:
                for _ in range(calls[name]):
                    state, _ = variant["program"].train_fn(state, variant["batch"], variant["keys"])
                jax.block_until_ready(state)
            times[name].append(watch.wall_s)
            variant["state"] = state

    replica_steps = args.num_seeds * args.steps
    rows = []
    print(f"\n{args.num_seeds} replicas x {args.steps} steps per round, {args.rounds} rounds")
    print("| variant | compile (s) | replica-steps/s (median) | per round (s) |")
    print("|---|---:|---:|---|")
    for name, variant in variants.items():
        rate = replica_steps / statistics.median(times[name])
        rounds = ", ".join(f"{t:.2f}" for t in times[name])
        print(f"| {name} | {variant['compile_s']:.1f} | {rate:.1f} | {rounds} |")
        rows.append(
            {
                "variant": name,
                "compile_s": variant["compile_s"],
                "replica_steps_per_second": rate,
                "round_seconds": times[name],
            }
        )
    one, many = (rows[0]["replica_steps_per_second"], rows[1]["replica_steps_per_second"])
    print(f"\nvmapped / sequential throughput: {many / one:.2f}x; load {load_average()}")
    conv_times = _conv_milliseconds(args.num_seeds)
    print(f"\nOne conv layer for {args.num_seeds} replicas (ms per call):")
    print("| | ms |\n|---|---:|")
    for name, milliseconds in conv_times.items():
        print(f"| {name} | {milliseconds:.1f} |")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as file:
            record = {"args": vars(args), "rows": rows, "conv_ms": conv_times}
            json.dump(writers_lib.json_ready(record), file, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
