r"""Repeated eager calls of the public spectral functions against the same calls jitted.

Run from the repository root::

  python -m benchmarks.bench_eager_calls
  python -m benchmarks.bench_eager_calls --shape 8x129x129x21 --repeats 10 --json /tmp/e.json
  python -m benchmarks.bench_eager_calls --only ce_spectrum,spectral_jacobian

A notebook user calls ``sj.ce_spectrum(logits, labels)`` directly, again and again; the
target is that such a repeated eager call costs at most 1.2x the same call
under ``jax.jit`` at the edge. For every public function the script times, after two
warm-up calls each, ``repeats`` interleaved rounds of the eager call and of
``jax.jit(fn, static_argnames=...)`` on the same inputs (the order within a round drawn
afresh every round), with ``jax.block_until_ready``, and prints the medians, their ratio,
and the first eager call (which compiles).

Inputs: PASCAL-like labels and logits of ``--shape BxHxWxC`` (default ``8x129x129x21``,
the data of ``bench_ce_spectrum``) for the CE decomposition, its reductions, the spectral
IoU and the statistics update; for the Jacobians the benchmarked layer, a 3x3 circular
conv of 4 channels + ReLU on a ``--jacobian-size`` map (default 33x33x4), 32 rows or
columns, and a 1x1 conv head to 5 classes with bilinear x2 up-sampling on 17x17x4
features for the CE spectral gradient. Timings vary with the load of other processes
(printed at the start and the end); compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import spectral_jax as sj
from benchmarks import _ce_inputs as data
from benchmarks.timing import Stopwatch, load_average, time_interleaved
from spectral_jax import probes

TARGET = 1.2


def _update(stats, logits, labels):
    return stats.update(logits, labels)


def cases(shape: tuple[int, int, int, int], jacobian_size: int, seed: int) -> dict[str, Any]:
    """``name -> (eager thunk, jitted thunk)`` for every public function."""
    batch, height, width, num_classes = shape
    rng = np.random.default_rng(seed)
    labels_np, clean = data.pascal_like_labels(rng, batch, height, width, num_classes)
    logits = jnp.asarray(data.realistic_logits(rng, clean, num_classes))
    labels = jnp.asarray(labels_np)
    probs = jax.nn.softmax(logits)
    band_limit = jnp.asarray(sj.num_bands((height, width)) // 4)
    profile = jax.jit(sj.band_profile)(logits, labels)
    stats = sj.SpectralStatistics.create((height, width), num_classes)

    size = jacobian_size
    key_x, key_k, key_f, key_w = jax.random.split(jax.random.key(seed), 4)
    x = jax.random.uniform(key_x, (size, size, 4), minval=-1.0, maxval=1.0)
    kernel = probes.random_kernel(key_k, (3, 3), (4, 4))
    layer = functools.partial(probes.conv_activation, kernel=kernel, activation="relu")
    indices = jnp.arange(0, size * size, size * size // 32)[:32]
    features = jax.random.normal(key_f, (17, 17, 4))
    weights = jax.random.normal(key_w, (4, 5))
    head = functools.partial(_linear_head, weights=weights)
    head_labels = jnp.asarray(rng.integers(0, 5, size=(34, 34)), jnp.int32)

    def pair(fn, *args, static=(), static_argnums=(), **kwargs):
        jitted = jax.jit(fn, static_argnums=static_argnums, static_argnames=static)
        return (lambda: fn(*args, **kwargs)), (lambda: jitted(*args, **kwargs))

    ce = dict(static=("ignore_index", "max_classes_present"))
    reduced = dict(static=("ignore_index", "radius", "max_classes_present"))
    jac = dict(static_argnums=0, static=("chunk_size", "mode"))
    return {
        "ce_spectrum": pair(sj.ce_spectrum, logits, labels, **ce),
        "ce_spectrum[k=3]": pair(sj.ce_spectrum, logits, labels, max_classes_present=3, **ce),
        "ce_half_spectrum": pair(sj.ce_half_spectrum, logits, labels, **ce),
        "band_profile": pair(sj.band_profile, logits, labels, **reduced),
        "magnitude_profiles": pair(
            sj.magnitude_profiles, logits, labels, static=("ignore_index", "radius")
        ),
        "truncated_ce": pair(sj.truncated_ce, logits, labels, band_limit, **reduced),
        "relative_discrepancy": pair(
            sj.relative_discrepancy, logits, labels, band_limit, **reduced
        ),
        "band_limit_sweep": pair(sj.band_limit_sweep, logits, labels, **reduced),
        "sweep_from_band_profile": pair(sj.sweep_from_band_profile, profile, static=("per_image",)),
        "spectral_iou": pair(sj.spectral_iou, probs, labels, static=("ignore_index", "binarize")),
        "spectral_iou_terms": pair(
            sj.spectral_iou_terms, probs, labels, static=("ignore_index", "binarize")
        ),
        "SpectralStatistics.update": pair(_update, stats, logits, labels),
        "spectral_jacobian": pair(sj.spectral_jacobian, layer, x, **jac),
        "spectral_jacobian_rows": pair(
            sj.spectral_jacobian_rows, layer, x, indices, static_argnums=0, static=("chunk_size",)
        ),
        "spectral_jacobian_columns": pair(
            sj.spectral_jacobian_columns,
            layer,
            x,
            indices,
            static_argnums=0,
            static=("chunk_size",),
        ),
        "spectral_jacobian_band_energy": pair(
            sj.spectral_jacobian_band_energy,
            layer,
            x,
            static_argnums=0,
            static=("radius", "chunk_size", "mode"),
        ),
        "ce_spectral_gradient": pair(
            sj.ce_spectral_gradient,
            head,
            features,
            head_labels,
            static_argnums=0,
            static=("ignore_index", "chunk_size", "mode"),
        ),
    }


def _linear_head(features, weights):
    """A 1x1 conv ``[H, W, Cin] -> [H, W, C]``, then bilinear x2 up-sampling."""
    return probes.upsample_bilinear(features @ weights, factor=2)


def run(
    shape, jacobian_size: int, repeats: int, seed: int, only: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    all_cases = cases(shape, jacobian_size, seed)
    names = [name for name in all_cases if not only or name in only]
    rows: dict[str, dict[str, Any]] = {}
    print(f"{'function':<32}{'first eager s':>14}{'eager ms':>10}{'jit ms':>10}{'eager/jit':>11}")
    for name in names:
        eager, jitted = all_cases[name]
        first_s, times, _ = time_interleaved({"eager": (eager, ()), "jit": (jitted, ())}, repeats)
        first = first_s["eager"]
        eager_s, jit_s = (float(np.median(times[k])) for k in ("eager", "jit"))
        rows[name] = dict(
            first_eager_s=first, eager_s=eager_s, jit_s=jit_s, ratio=eager_s / jit_s, times=times
        )
        print(
            f"{name:<32}{first:14.2f}{eager_s * 1e3:10.2f}{jit_s * 1e3:10.2f}"
            f"{eager_s / jit_s:10.2f}x",
            flush=True,
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shape", type=data.parse_shapes, default=data.parse_shapes("8x129x129x21")
    )
    parser.add_argument("--jacobian-size", type=int, default=33)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=lambda s: s.split(","), default=None)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    (shape,) = args.shape
    print(f"JAX {jax.__version__}, {jax.devices()[0].device_kind}; load average {load_average()}")
    print(f"shape {shape}, Jacobians on {args.jacobian_size}x{args.jacobian_size}x4, "
          f"{args.repeats} interleaved repeats; target eager <= {TARGET}x jit")  # fmt: skip
    watch = Stopwatch()
    rows = run(shape, args.jacobian_size, args.repeats, args.seed, args.only)
    worst = max(rows.values(), key=lambda row: row["ratio"])
    print(
        f"total {watch.wall_s:.0f} s; load average at end {load_average()}; "
        f"largest ratio {worst['ratio']:.2f}x"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(shape=shape, results=rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
