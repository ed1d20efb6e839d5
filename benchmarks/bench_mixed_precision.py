"""Training steps per second of DeepLab v3+ in float32 against bfloat16 (mixed precision).

Run from the repository root::

  python -m benchmarks.bench_mixed_precision                  # tiny
  python -m benchmarks.bench_mixed_precision --configs tiny,full --rounds 5

The model and the step are those of :mod:`benchmarks.bench_train_step` (its ``tiny``
and ``full`` configurations, same weights and batch): the JAX train step compiled with
``jax.jit(..., donate_argnums=0)``, once with the model's ``dtype=float32`` and once with
``dtype=bfloat16`` (``--config.model.dtype=bfloat16``: convolutions and BatchNorm
outputs in bfloat16; parameters, optimizer state, BatchNorm statistics, logits and loss
in float32). After ``--warmup`` steps (the first compiles), ``--rounds`` rounds of
``--steps`` steps alternate between the two dtypes, so that drift of the machine affects
both; the table gives the median time per step and the speed-up of bfloat16. The loss of
the first step of each is printed too (the same weights and batch: they should agree to
about 1e-2).

A CPU without bfloat16 arithmetic emulates it (convert, compute in float32, round), so
there bfloat16 is expected to be slower; the speed-up it is for needs bfloat16 matrix
units (GPU tensor cores, TPU). Numbers depend on the machine and its load (the load
average is printed); compare the ratio within one run.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import jax
import jax.numpy as jnp

from benchmarks._deeplab_step import CONFIGS, init_variables, make_batch, make_jax_step
from benchmarks.timing import Stopwatch, load_average, time_steps

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def time_dtypes(config, batch, *, warmup: int, steps: int, rounds: int) -> dict[str, dict]:
    """Median seconds per step per dtype over interleaved rounds, and the first losses."""
    model = config.flax_model()
    variables = init_variables(model, config)
    runs = {}
    for name, dtype in DTYPES.items():
        # A copy per dtype: the step donates its state, buffers included.
        copy = jax.tree.map(jnp.array, variables)
        state, step = make_jax_step(model.clone(dtype=dtype), copy)
        first_loss = None
        with Stopwatch() as watch:
            for _ in range(warmup):
                state, metrics = step(state, batch)
                first_loss = float(metrics["loss"]) if first_loss is None else first_loss
            jax.block_until_ready(state)
        runs[name] = dict(
            state=state,
            step=step,
            warmup=watch.wall_s,
            first_loss=first_loss,
            times=[],
        )
    for _ in range(rounds):
        for run in runs.values():
            run["state"], seconds, _, _ = time_steps(run["step"], run["state"], batch, steps)
            run["times"].append(seconds)
    return {
        name: dict(
            seconds=statistics.median(run["times"]),
            warmup=run["warmup"],
            first_loss=run["first_loss"],
        )
        for name, run in runs.items()
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny", help="comma-separated: tiny, full")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compiles)")
    parser.add_argument("--steps", type=int, default=None, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown or not names or args.warmup < 1:
        parser.error(
            f"--configs must name some of {tuple(CONFIGS)} (got {args.configs!r}) and "
            "--warmup must be at least 1."
        )
    args.configs = names
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = jax.devices()[0]
    print(
        f"jax {jax.__version__} ({device.platform}: {device.device_kind}), "
        f"python {platform.python_version()}, load average at start {load_average()}"
    )
    table = []
    for name in args.configs:
        config = CONFIGS[name]
        steps = args.steps or (10 if name == "tiny" else 3)
        results = time_dtypes(
            config, make_batch(config), warmup=args.warmup, steps=steps, rounds=args.rounds
        )
        for dtype, result in results.items():
            print(
                f"[{name}] {dtype}: warm-up {result['warmup']:.1f} s ({args.warmup} steps, "
                f"first compiles), first loss {result['first_loss']:.6f}"
            )
        table.append((name, config, results))
    print(f"\nload average at end {load_average()}\n")
    print("| config | model | batch x crop | dtype | steps/s | ms/step | speed-up |")
    print("|---|---|---|---|---:|---:|---:|")
    for name, config, results in table:
        shape = f"{config.batch_size} x {config.crop_size}"
        for dtype, result in results.items():
            speedup = results["float32"]["seconds"] / result["seconds"]
            print(
                f"| {name} | {config.backbone} | {shape} | {dtype} | "
                f"{1 / result['seconds']:.2f} | {1000 * result['seconds']:.0f} | "
                f"{speedup:.2f}x |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
