r"""Compile time and step time of the DeepLab v3+ train step: stacked blocks against unrolled.

Run from the repository root::

  python -m benchmarks.bench_compile_depth                      # compile times, ~5 min
  python -m benchmarks.bench_compile_depth --rounds 3 --step-time

The train step is that of ``benchmarks.bench_train_step`` (pixel CE, training-mode
BatchNorm, SGD with momentum and weight decay, metrics), jitted the same way. Variants of
the backbone (:class:`spectral_jax.models.ResNet`):

* ``unrolled``: ``scan_blocks=False``, one module per bottleneck (the layout before
  blocks were scanned);
* ``scanned``: ``scan_blocks=True`` (the default), the blocks after the first of each
  stage under ``nn.scan``;
* ``remat``: ``scanned`` with ``remat_blocks=True`` (each scanned block recomputed in the
  backward pass).

Compile time: for ResNet-50 and ResNet-101 at batch 1, 65 x 65 (the ``full`` widths of
``bench_train_step`` otherwise), ``jax.jit(step).lower(state, batch)`` (tracing and
lowering to StableHLO) and ``.compile()`` (XLA) are timed separately, ``--rounds``
times, every (backbone, variant) once per round in a fixed interleaved order; a fresh
model and a fresh ``functools.partial`` per measurement, so nothing is cached in the
process (the persistent compilation cache is off unless configured). The table gives
medians of the wall time and of the process's CPU time (``time.process_time``, all
threads: less sensitive to other processes on a loaded machine than the wall time),
with the ResNet-101 / ResNet-50 ratios of the totals.

Step time (``--step-time``): the ``full`` config of ``bench_train_step`` (ResNet-101,
output stride 16, batch 2, crop 257), each variant compiled once and run
``--warmup`` steps, then ``--rounds`` rounds of ``--steps`` steps per variant,
interleaved; median wall and CPU seconds per step. Numbers depend on the machine and its load (the
load average is printed); compare within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys

import jax

from benchmarks import _deeplab_step as bench
from benchmarks import timing

VARIANTS = {
    "unrolled": {"scan_blocks": False},
    "scanned": {"scan_blocks": True},
    "remat": {"scan_blocks": True, "remat_blocks": True},
}
BACKBONES = ("resnet50", "resnet101")


def compile_config(backbone: str, batch_size: int, crop_size: int) -> bench.BenchConfig:
    """The ``full`` widths of ``bench_train_step`` with another backbone and input."""
    return dataclasses.replace(
        bench.CONFIGS["full"], backbone=backbone, batch_size=batch_size, crop_size=crop_size
    )


def make_state_and_step(config: bench.BenchConfig, variant: str):
    """``(state, step)`` of ``bench_train_step`` for one variant; the step is not compiled."""
    model = config.flax_model().clone(**VARIANTS[variant])
    return bench.make_jax_step(model, bench.init_variables(model, config))


def time_compile(config: bench.BenchConfig, variant: str) -> dict[str, float]:
    """Wall and CPU seconds to trace and lower the step, and to compile it with XLA."""
    state, step = make_state_and_step(config, variant)
    batch = jax.device_put(bench.make_batch(config))
    with timing.Stopwatch() as lowering:
        lowered = step.lower(state, batch)
    with timing.Stopwatch() as compiling:
        lowered.compile()
    return {
        "lower": lowering.wall_s,
        "compile": compiling.wall_s,
        "lower_cpu": lowering.cpu_s,
        "compile_cpu": compiling.cpu_s,
    }


def time_steps(variants, *, warmup: int, steps: int, rounds: int) -> dict[str, tuple]:
    """Median wall and CPU seconds per step of each variant on the ``full`` config."""
    config = bench.CONFIGS["full"]
    batch = jax.device_put(bench.make_batch(config))
    runs = {}
    for variant in variants:
        state, step = make_state_and_step(config, variant)
        for _ in range(warmup):
            state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
        runs[variant] = [state, step]
    times = {variant: [] for variant in variants}
    cpu_times = {variant: [] for variant in variants}
    for _ in range(rounds):
        for variant in variants:
            state, step = runs[variant]
            state, wall, cpu, _ = timing.time_steps(step, state, batch, steps)
            times[variant].append(wall)
            cpu_times[variant].append(cpu)
            runs[variant][0] = state
    return {
        variant: (statistics.median(times[variant]), statistics.median(cpu_times[variant]))
        for variant in variants
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="unrolled,scanned,remat")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--batch", type=int, default=1, help="batch of the compile timing")
    parser.add_argument("--crop", type=int, default=65, help="crop of the compile timing")
    parser.add_argument("--no-compile-time", action="store_true", help="skip compile timing")
    parser.add_argument("--step-time", action="store_true", help="time the full-config step")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps (--step-time)")
    parser.add_argument("--steps", type=int, default=2, help="steps per round (--step-time)")
    args = parser.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        parser.error(f"--variants must name some of {tuple(VARIANTS)}, got {unknown}.")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}); "
        f"load average at start {timing.load_average()}"
    )
    if not args.no_compile_time:
        results = {(b, v): [] for b in BACKBONES for v in args.variants}
        for round_ in range(args.rounds):
            for backbone in BACKBONES:
                config = compile_config(backbone, args.batch, args.crop)
                for variant in args.variants:
                    result = time_compile(config, variant)
                    results[backbone, variant].append(result)
                    print(
                        f"round {round_}: {backbone} {variant}: lower {result['lower']:.1f} s "
                        f"(CPU {result['lower_cpu']:.1f} s), compile {result['compile']:.1f} s "
                        f"(CPU {result['compile_cpu']:.1f} s), load {timing.load_average()}",
                        flush=True,
                    )
        print(
            f"\nTrain step at batch {args.batch}, {args.crop} x {args.crop}; median of "
            f"{args.rounds} interleaved rounds; load average at end {timing.load_average()}\n"
        )
        print(
            "| variant | backbone | trace + lower, s | XLA compile, s | total, s | 101 / 50 "
            "| total CPU, s | 101 / 50 (CPU) |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for variant in args.variants:
            totals, cpu_totals = {}, {}
            for backbone in BACKBONES:
                rows = results[backbone, variant]
                lower = statistics.median(r["lower"] for r in rows)
                compile_ = statistics.median(r["compile"] for r in rows)
                totals[backbone] = statistics.median(r["lower"] + r["compile"] for r in rows)
                cpu_totals[backbone] = statistics.median(
                    r["lower_cpu"] + r["compile_cpu"] for r in rows
                )
                ratio = totals[backbone] / totals["resnet50"]
                cpu_ratio = cpu_totals[backbone] / cpu_totals["resnet50"]
                print(
                    f"| {variant} | {backbone} | {lower:.1f} | {compile_:.1f} | "
                    f"{totals[backbone]:.1f} | {ratio:.2f}x | {cpu_totals[backbone]:.1f} | "
                    f"{cpu_ratio:.2f}x |"
                )
    if args.step_time:
        times = time_steps(args.variants, warmup=args.warmup, steps=args.steps, rounds=args.rounds)
        print(
            f"\nFull-config step (ResNet-101, batch 2, 257 x 257), median of {args.rounds} "
            f"interleaved rounds of {args.steps} steps; load average at end "
            f"{timing.load_average()}\n"
        )
        print("| variant | ms/step | / unrolled | CPU ms/step | / unrolled (CPU) |")
        print("|---|---:|---:|---:|---:|")
        base, cpu_base = times.get("unrolled", (None, None))
        for variant, (seconds, cpu_seconds) in times.items():
            ratio = f"{seconds / base:.2f}x" if base else "-"
            cpu_ratio = f"{cpu_seconds / cpu_base:.2f}x" if cpu_base else "-"
            print(
                f"| {variant} | {1000 * seconds:.0f} | {ratio} | {1000 * cpu_seconds:.0f} | "
                f"{cpu_ratio} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
