r"""Steps per second of the whole training loop (:func:`spectral_jax.training.train_and_evaluate`).

Run from the repository root::

  python -m benchmarks.bench_train_loop
  python -m benchmarks.bench_train_loop --steps 300 --log-every 25 --rounds 5 \
      --variants "prefetch_batches=1;prefetch_batches=2"
  python -m benchmarks.bench_train_loop --checkpoint-every 5 \
      --variants "async_checkpoints=0;async_checkpoints=1"

Unlike ``bench_train_step`` (one jitted step on a fixed batch), this times the loop as a
run uses it: the tiny configuration (``experiments/configs/tiny.py``: ``resnet_tiny``
DeepLab v3+, batch 8, crop 65) reading the generated ``synthetic_scenes/pascal_like``
scenes through the real input pipeline (decode, scale, crop, flip), placing every batch
on the data mesh, logging every ``--log-every`` steps and, on request, checkpointing
and evaluating in between.

Timing: the loop fetches its metrics at every log point (the host waits there for the
device), so the times of consecutive log points bound whole steps. The script records
the wall-clock time of every ``train/`` log record (a wrapper around the run's metric
writer) and reports ``(last_step - first_step) / (t_last - t_first)`` from the first
log point (the first interval holds the compilation) to the last one (before the final
evaluation and checkpoint, which are not timed).

Variants are ``;``-separated lists of ``field=value`` overrides of the configuration
(``a=1,b=2`` sets two); ``async_checkpoints=0`` is not a configuration field: it makes
the run's checkpoint manager synchronous. Every round runs each variant once, in turn
(interleaved, so that drift of a shared machine affects all); the table gives each
variant's median steps per second over the rounds and every round's value. A field the
loop does not read (e.g. ``prefetch_batches`` before it existed) is ignored by it, so
the same command runs against older versions of the loop. The load average is printed:
compare variants within one run.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import tempfile
from unittest import mock

import jax
import ml_collections

from benchmarks.timing import Stopwatch, load_average
from experiments.configs import tiny
from spectral_jax.training import checkpointing, train_and_evaluate
from spectral_jax.training import writers as writers_lib


class _TimingWriter:
    """Forwards to ``writer``; records ``(seconds, step)`` of every training log record."""

    def __init__(self, writer, records: list[tuple[float, int]], watch: Stopwatch):
        self._writer = writer
        self._records = records
        self._watch = watch

    def write_scalars(self, step, scalars):
        if "train/loss" in scalars:
            self._records.append((self._watch.wall_s, int(step)))
        self._writer.write_scalars(step, scalars)

    def flush(self):
        self._writer.flush()

    def close(self):
        self._writer.close()


def parse_variant(text: str) -> dict[str, str]:
    """``"a=1,b=2"`` -> ``{"a": "1", "b": "2"}``; ``""`` -> ``{}`` (the configuration as is)."""
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"a variant is field=value[,field=value], got {text!r}.")
        overrides[name.strip()] = value.strip()
    return overrides


def _value(text: str):
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def make_config(args: argparse.Namespace, overrides: dict[str, str]) -> ml_collections.ConfigDict:
    """The tiny configuration with the script's settings and a variant's overrides."""
    config = tiny.get_config()
    config.num_train_steps = args.steps
    config.log_every_steps = args.log_every
    config.eval_every_steps = args.eval_every
    config.checkpoint_every_steps = args.checkpoint_every
    config.eval_split = f"validation[:{args.eval_examples}]"
    config.spectral_statistics = True
    config.boundary_metrics = False
    config.progress_bar = False
    config.tensorboard = False
    for name, value in overrides.items():
        if name != "async_checkpoints":
            config[name] = _value(value)
    return config


def time_run(args: argparse.Namespace, overrides: dict[str, str]) -> float:
    """Steps per second of one run, between its first and last training log records."""
    config = make_config(args, overrides)
    records: list[tuple[float, int]] = []
    watch = Stopwatch()
    create_writer = writers_lib.create_default_writer
    asynchronous = bool(_value(overrides.get("async_checkpoints", "1")))
    create_manager = functools.partial(
        checkpointing.create_checkpoint_manager, asynchronous=asynchronous
    )
    with (
        tempfile.TemporaryDirectory() as workdir,
        mock.patch.object(
            writers_lib,
            "create_default_writer",
            lambda *a, **k: _TimingWriter(create_writer(*a, **k, console=False), records, watch),
        ),
        mock.patch.object(checkpointing, "create_checkpoint_manager", create_manager),
    ):
        train_and_evaluate(config, workdir)
    (t_first, first), (t_last, last) = records[0], records[-1]
    if last <= first:
        raise ValueError("--steps must allow two log points (--steps >= 2 * --log-every).")
    return (last - first) / (t_last - t_first)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps per run")
    parser.add_argument("--log-every", type=int, default=25, help="log (and fetch) interval")
    parser.add_argument("--eval-every", type=int, default=-1, help="<= 0: only at the end")
    parser.add_argument(
        "--checkpoint-every", type=int, default=0, help="<= 0: only the final checkpoint"
    )
    parser.add_argument("--eval-examples", type=int, default=8, help="evaluation scenes")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--variants",
        default="prefetch_batches=1;prefetch_batches=2",
        help="';'-separated variants, each 'field=value[,field=value]' ('' is the default)",
    )
    args = parser.parse_args(argv)
    if args.steps < 2 * args.log_every:
        parser.error("--steps must be at least 2 * --log-every (two timed log points).")
    try:
        args.variants = [parse_variant(text) for text in args.variants.split(";")]
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    names = [",".join(f"{k}={v}" for k, v in v.items()) or "(default)" for v in args.variants]
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}, {jax.device_count()} devices), "
        f"python {platform.python_version()}, {os.cpu_count()} cores; "
        f"load average at start {load_average()}"
    )
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name, overrides in zip(names, args.variants, strict=True):
            results[name].append(time_run(args, overrides))
            print(
                f"round {round_index + 1}: {name}: {results[name][-1]:.2f} steps/s "
                f"(load {load_average()})",
                flush=True,
            )
    print(f"\nload average at end {load_average()}\n")
    print("| variant | steps/s (median) | per round |")
    print("|---|---:|---|")
    for name in names:
        rounds = ", ".join(f"{value:.2f}" for value in results[name])
        print(f"| {name} | {statistics.median(results[name]):.2f} | {rounds} |")
    print(
        f"\n{args.steps} steps per run, timed from step {args.log_every} to step "
        f"{args.steps} (log every {args.log_every}); eval every {args.eval_every}, "
        f"checkpoint every {args.checkpoint_every} (<= 0: only at the end, untimed)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
