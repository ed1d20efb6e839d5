r"""Training steps per second of DeepLab v3+: ``spectral_jax`` (JAX/Flax) against PyTorch.

Run from the repository root (PyTorch must be installed; it is not a dependency of the
package)::

  python -m benchmarks.bench_train_step                      # tiny, then full
  python -m benchmarks.bench_train_step --configs tiny --steps 20

Both frameworks train the same model with the same step on the CPU:

* the model is :class:`spectral_jax.models.DeepLabV3Plus` (dilated ResNet, ASPP with
  image pooling, decoder on the stride-4 grid, bilinear up-sampling, dropout 0.5 after
  ASPP) and, in PyTorch, a ``torch.nn`` module that mirrors it layer by layer, with the
  same parameter names (:func:`benchmarks._torch_deeplab.mirror_deeplab`);
* the step is pixel-wise cross-entropy with ignore label 255, BatchNorm in training
  mode, SGD with momentum 0.9 and L2 weight decay 1e-4 on the convolution kernels, plus
  the step's metrics (accuracy, gradient norm). In JAX it is
  :func:`spectral_jax.training.steps.train_step` compiled with
  ``jax.jit(functools.partial(train_step, ...), donate_argnums=0)``; in PyTorch
  ``zero_grad``, forward, ``backward`` and ``torch.optim.SGD.step`` (parameter groups
  with ``weight_decay=1e-4`` for the convolution weights, 0 for the rest);
* the weights are drawn once (He-normal kernels, identity BatchNorm) and copied from the
  Flax variables into the PyTorch module.

Configurations:

* ``tiny``: ``resnet_tiny`` backbone (width 4), ASPP 32, low-level projection 12,
  decoder 32 channels, 21 classes, batch 8, crop 129;
* ``full``: ResNet-101, output stride 16, the paper's widths (256, 48, 256), 21 classes,
  batch 2, crop 257.

Before timing, the script checks that the frameworks compute the same thing: on a copy
of the model without dropout, from the same weights, the initial loss must agree to a
relative ``1e-4``, and the loss after one SGD update to ``1e-4`` or three times
PyTorch's own float32 error at that step (float32 against a float64 PyTorch run),
whichever is larger; the run exits with status 1 otherwise. Timing: ``--warmup`` steps
(the first compiles), then ``--rounds`` rounds of ``--steps`` steps per framework, the
frameworks alternating round by round so that drift of the machine affects both; JAX
rounds end with ``jax.block_until_ready``. The table gives the median over the rounds of
the time per step, steps per second and the ratio of JAX's steps per second to
PyTorch's.

Threads: XLA's CPU runtime sizes its thread pool by the cores in the process's affinity
mask, and PyTorch is given the same number with ``torch.set_num_threads``; by default
every available core, with ``--threads N`` the process is first pinned to ``N`` cores.
On a machine loaded beyond its cores, PyTorch's OpenMP workers spin-wait and lose most of
their time (the tiny step took 1 s with 2 threads against 73 ms with 1 on a 2-core
machine at load 5-10), so there compare with ``--threads 1`` too. Numbers depend on the
machine and on the load of other processes (the load average is printed); compare
ratios, within one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys

import jax

from benchmarks._deeplab_step import (
    CONFIGS,
    BenchConfig,
    build_torch_deeplab,
    check_same_losses,
    copy_flax_to_torch,
    init_variables,
    make_batch,
    make_jax_step,
    make_torch_step,
    torch_batch,
)
from benchmarks.timing import Stopwatch, available_cores, load_average, time_steps

try:  # PyTorch is optional: main() exits with status 2 without it.
    import torch
except ImportError:
    torch = None


def time_both(config: BenchConfig, batch, torch, *, warmup: int, steps: int, rounds: int):
    """Median seconds per step of each framework over interleaved rounds."""
    model = config.flax_model()
    variables = init_variables(model, config)
    module = build_torch_deeplab(config, torch)
    copy_flax_to_torch(variables, module, torch)
    state, jax_step = make_jax_step(model, variables)
    del variables  # The state's buffers are donated step by step.
    torch_step = make_torch_step(module, torch)
    images, labels = torch_batch(batch, torch)
    jax_batch = jax.device_put(batch)

    state, jax_warmup, _, _ = time_steps(jax_step, state, jax_batch, warmup)
    jax_warmup *= warmup
    with Stopwatch() as watch:
        for _ in range(warmup):
            torch_step(images, labels)
    torch_warmup = watch.wall_s

    jax_times, torch_times = [], []
    for _ in range(rounds):
        state, seconds, _, _ = time_steps(jax_step, state, jax_batch, steps)
        jax_times.append(seconds)
        with Stopwatch() as watch:
            for _ in range(steps):
                torch_step(images, labels)
        torch_times.append(watch.wall_s / steps)
    return {
        "jax": statistics.median(jax_times),
        "torch": statistics.median(torch_times),
        "jax_warmup": jax_warmup,
        "torch_warmup": torch_warmup,
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,full", help="comma-separated: tiny, full")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compiles)")
    parser.add_argument("--steps", type=int, default=None, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="pin the process to this many cores (both frameworks); default: all available",
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown or not names:
        parser.error(f"--configs must name some of {tuple(CONFIGS)}, got {args.configs!r}.")
    args.configs = names
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if torch is None:
        print(
            "bench_train_step needs PyTorch, which is not a dependency of spectral_jax: "
            "install it (e.g. `pip install torch`) to compare against it.",
            file=sys.stderr,
        )
        return 2
    threads = available_cores()
    if args.threads is not None:
        if not 1 <= args.threads <= threads:
            print(f"--threads must be in [1, {threads}], got {args.threads}.", file=sys.stderr)
            return 2
        # XLA sizes its CPU thread pool from the affinity mask when the backend starts,
        # which is on first use, after this.
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
        threads = args.threads
    torch.set_num_threads(threads)
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, "
        f"python {platform.python_version()}, {threads} cores; torch.set_num_threads({threads}), "
        f"XLA's thread pool uses the {threads} cores of the affinity mask; load average at start {load_average()}"
    )
    if threads > 1 and os.getloadavg()[0] > available_cores():
        print(
            "note: the machine is loaded beyond its cores; PyTorch's OpenMP workers "
            "spin-wait and lose most of their time to contention then. Compare with "
            "--threads 1 as well."
        )
    failed = False
    table = []
    for name in args.configs:
        config = CONFIGS[name]
        batch = make_batch(config)
        for row in check_same_losses(config, batch, torch):
            ok = row["difference"] <= row["tolerance"]
            failed |= not ok
            print(
                f"[{name}] loss at step {row['step']} (no dropout): jax {row['jax']:.9g}, "
                f"torch {row['torch']:.9g} (float64: {row['torch64']:.9g}); relative "
                f"difference {row['difference']:.1e}, tolerance {row['tolerance']:.1e} "
                f"({'ok' if ok else 'FAILED'})"
            )
        steps = args.steps or (10 if name == "tiny" else 3)
        times = time_both(config, batch, torch, warmup=args.warmup, steps=steps, rounds=args.rounds)
        print(
            f"[{name}] warm-up ({args.warmup} steps, first compiles): "
            f"jax {times['jax_warmup']:.1f} s, torch {times['torch_warmup']:.1f} s"
        )
        table.append((name, config, times, steps))
    print(f"\nload average at end {load_average()}\n")
    print("| config | model | batch x crop | framework | steps/s | ms/step | JAX / PyTorch |")
    print("|---|---|---|---|---:|---:|---:|")
    for name, config, times, _ in table:
        ratio = times["torch"] / times["jax"]
        shape = f"{config.batch_size} x {config.crop_size}"
        for framework, key in (("JAX (spectral_jax)", "jax"), ("PyTorch", "torch")):
            print(
                f"| {name} | {config.backbone} | {shape} | {framework} | "
                f"{1 / times[key]:.2f} | {1000 * times[key]:.0f} | "
                f"{f'{ratio:.2f}x' if key == 'jax' else '1.00x'} |"
            )
    print(
        f"\nMedian over {args.rounds} interleaved rounds; steps per round: "
        + ", ".join(f"{name} {steps}" for name, _, _, steps in table)
        + ". Ratio: JAX steps/s over PyTorch steps/s."
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
