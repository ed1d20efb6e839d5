r"""Wall times of the CE spectral decomposition against the bare ``rfft2`` floor.

Run from the repository root (``make bench`` runs the first form)::

  python -m benchmarks.bench_ce_spectrum
  python -m benchmarks.bench_ce_spectrum --shapes 8x129x129x21 --repeats 30 --json /tmp/b.json

For each shape ``BxHxWxC`` the script builds one PASCAL-like batch (background class 0 plus
one or two of the other classes as a few ellipses per image, a ``255`` void band a few
pixels wide along the object boundaries, like VOC's border) and realistic-ish logits
(one-hot labels spatially smoothed, plus noise, times 5), then times, jitted and after
warm-up, with ``jax.block_until_ready``:

* ``floor``: ``jnp.fft.rfft2`` of a contiguous float32 ``[B, 2C, H, W]`` array, the bare
  transform of the ``2C`` maps (negative log-probabilities and one-hot labels) that any
  decomposition has to transform;
* the dense ``ce_spectrum``, ``ce_half_spectrum``, ``band_profile``, ``band_limit_sweep``,
  one ``relative_discrepancy`` and ``jax.vmap`` of it over all ``R`` band limits;
* the class-sparse ``ce_spectrum`` and ``band_limit_sweep`` with ``max_classes_present=3``;
* a plain float64 NumPy reference (``np.fft.fft2`` of the full spectrum of every class),
  timed once or twice since it is slow.

Repeats of the jitted candidates are interleaved (one call of each per round, in a random
order drawn afresh every round) so that drift of the machine affects them alike; the table gives the
median and minimum over the rounds and the ratio of each median to the floor's median. The
table also gives the minor page faults per call: XLA's CPU runtime maps fresh memory for
large outputs and temporaries on every call, and touching it first costs kernel time. The
same run checks the jitted results against the float64 reference, so the timings are of
correct code, and prints which performance targets hold. Numbers vary from machine to
machine and with the load of other processes (the load average is printed); compare
ratios, and only within one run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import spectral_jax as sj
from spectral_jax.data import IGNORE_INDEX

try:
    import resource
except ImportError:  # Not on a Unix.
    resource = None

MAX_CLASSES_PRESENT = 3
DEFAULT_SHAPES = "8x129x129x21,2x513x513x21"
# Shapes with more than this many logits (B*H*W*C) count as "large": fewer default repeats.
LARGE_ELEMENTS = 4_000_000
DEFAULT_REPEATS_SMALL = 20
DEFAULT_REPEATS_LARGE = 8
MIN_REPEATS_SMALL = 10
MIN_REPEATS_LARGE = 5
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# float32 FFTs against float64: errors relative to the largest component.
TOLERANCE = 1e-4

# Performance targets: (candidate, baseline, bound) meaning median(candidate) <= bound *
# median(baseline).
TARGETS = (
    ("ce_spectrum", "floor", 1.0),
    ("band_limit_sweep", "floor", 1.0),
    ("ce_spectrum[k=3]", "floor", 0.5),
    ("band_limit_sweep[k=3]", "floor", 0.5),
    ("band_limit_sweep", "ce_half_spectrum", 1.1),
    ("vmap_relative_discrepancy", "relative_discrepancy", 1.1),
)


# --------------------------------------------------------------------------------------
# Synthetic PASCAL-like data.


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square (Chebyshev) dilation of ``[..., H, W]`` booleans by ``radius`` pixels."""
    out = mask
    for axis in (-2, -1):
        grown = out.copy()
        n = out.shape[axis]
        for shift in range(1, radius + 1):
            if shift >= n:
                break
            lo = [slice(None)] * out.ndim
            hi = [slice(None)] * out.ndim
            lo[axis], hi[axis] = slice(0, n - shift), slice(shift, n)
            grown[tuple(lo)] |= out[tuple(hi)]
            grown[tuple(hi)] |= out[tuple(lo)]
        out = grown
    return out


def pascal_like_labels(
    rng: np.random.Generator, batch: int, height: int, width: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Label maps with background 0, 1-2 object classes as ellipses, and a void border.

    Returns:
      ``(labels, clean)``: ``[B, H, W]`` int32 labels with ``IGNORE_INDEX`` on a band
      along the object boundaries, and the same maps without the band.
    """
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    clean = np.zeros((batch, height, width), np.int32)
    for i in range(batch):
        num_objects = int(rng.integers(1, 3)) if num_classes > 2 else min(num_classes - 1, 1)
        classes = rng.choice(np.arange(1, num_classes), size=num_objects, replace=False)
        for cls in classes:
            for _ in range(int(rng.integers(1, 4))):
                cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
                ay, ax = rng.uniform(0.06, 0.22) * height, rng.uniform(0.06, 0.22) * width
                angle = rng.uniform(0.0, np.pi)
                dy, dx = yy - cy, xx - cx
                u = (dx * np.cos(angle) + dy * np.sin(angle)) / ax
                v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ay
                clean[i][u * u + v * v <= 1.0] = cls
    # Boundary pixels (both sides of every label change), grown into a band ~5 px wide.
    edge = np.zeros(clean.shape, bool)
    vertical = clean[:, 1:, :] != clean[:, :-1, :]
    horizontal = clean[:, :, 1:] != clean[:, :, :-1]
    edge[:, 1:, :] |= vertical
    edge[:, :-1, :] |= vertical
    edge[:, :, 1:] |= horizontal
    edge[:, :, :-1] |= horizontal
    void_radius = max(1, min(height, width) // 200)
    labels = np.where(_dilate(edge, void_radius), IGNORE_INDEX, clean).astype(np.int32)
    return labels, clean


def _box_blur(x: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Moving average of width ``2 * radius + 1`` along ``axis`` (edges replicated)."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius + 1, radius)
    c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis, dtype=np.float32)
    n = x.shape[axis]
    hi = np.take(c, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis=axis)
    lo = np.take(c, np.arange(0, n), axis=axis)
    return (hi - lo) / np.float32(2 * radius + 1)


def realistic_logits(rng: np.random.Generator, clean: np.ndarray, num_classes: int):
    """``[B, H, W, C]`` float32: smoothed one-hot labels plus noise, times 5."""
    height = clean.shape[1]
    onehot = (clean[..., None] == np.arange(num_classes)).astype(np.float32)
    radius = max(1, height // 32)
    smooth = _box_blur(_box_blur(onehot, radius, axis=1), radius, axis=2)
    noise = rng.normal(0.0, 0.3, size=smooth.shape).astype(np.float32)
    return np.float32(5.0) * (smooth + noise)


# --------------------------------------------------------------------------------------
# Float64 NumPy reference.


def reference_ce_spectrum(
    logits: np.ndarray,
    labels: np.ndarray,
    ignore_index: int = IGNORE_INDEX,
    ignore_mode: str = "labels",
):
    """``(spectrum [B, H, W], ce [B])`` in float64, straight from the definition.

    ``L(nu) = Re sum_c conj(b(nu, c)) y_hat(nu, c) / (N H W)`` with the full ``fft2`` of
    every class's map, and the per-image mean CE over valid pixels computed directly.
    ``ignore_mode`` as in :func:`spectral_jax.ce_spectrum` (finite logits assumed):
    ``"labels"`` zeroes only the one-hot labels at ignored pixels, ``"both"`` also
    ``y_hat``'s map.
    """
    logits = np.asarray(logits, np.float64)
    batch, height, width, num_classes = logits.shape
    spectrum = np.zeros((batch, height, width))
    ce = np.zeros(batch)
    for i in range(batch):
        y = logits[i]
        peak = y.max(axis=-1, keepdims=True)
        log_partition = peak[..., 0] + np.log(np.exp(y - peak).sum(axis=-1))
        valid = labels[i] != ignore_index
        count = max(int(valid.sum()), 1)
        acc = np.zeros((height, width))
        for c in range(num_classes):
            kept = valid if ignore_mode == "both" else np.ones_like(valid)
            neg_log_prob = np.where(kept, log_partition - y[..., c], 0.0)
            target = ((labels[i] == c) & valid).astype(np.float64)
            acc += (np.conj(np.fft.fft2(target)) * np.fft.fft2(neg_log_prob)).real
        spectrum[i] = acc / (count * height * width)
        picked = np.take_along_axis(y, np.where(valid, labels[i], 0)[..., None], axis=-1)
        ce[i] = np.where(valid, log_partition - picked[..., 0], 0.0).sum() / count
    return spectrum, ce


def reference_chebyshev_bands(height: int, width: int) -> np.ndarray:
    """``[H, W]`` band ``max(|nu_h|, |nu_w|)`` in DFT order, independent of the library."""
    fh = np.abs(np.rint(np.fft.fftfreq(height) * height)).astype(int)
    fw = np.abs(np.rint(np.fft.fftfreq(width) * width)).astype(int)
    return np.maximum(fh[:, None], fw[None, :])


def reference_sweep(spectrum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(profile [B, R], R(nu_max) [R])`` as a ratio of batch means, from the spectrum."""
    batch, height, width = spectrum.shape
    bands = reference_chebyshev_bands(height, width).ravel()
    num = int(bands.max()) + 1
    profile = np.stack([np.bincount(bands, s.ravel(), minlength=num) for s in spectrum])
    truncated = np.cumsum(profile, axis=-1).sum(axis=0)
    total = truncated[-1]
    return profile, np.abs(truncated - total) / total


# --------------------------------------------------------------------------------------
# Timing.


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"shape must be BxHxWxC, got {item!r}")
        shapes.append(tuple(int(p) for p in parts))
    return shapes


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def _call(fn: Callable, args: Sequence[Any]) -> tuple[float, int]:
    """Wall time of one blocking call, and the minor page faults it took (all threads)."""
    faults = _minor_faults()
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, _minor_faults() - faults


def time_interleaved(candidates: dict[str, tuple[Callable, tuple]], repeats: int):
    """Per candidate: first-call (compile) time, ``repeats`` interleaved wall times, faults."""
    compile_s = {name: _call(fn, args)[0] for name, (fn, args) in candidates.items()}
    for fn, args in candidates.values():  # A second warm-up call, after compilation.
        _call(fn, args)
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    faults: dict[str, list[int]] = {name: [] for name in names}
    # A fresh random order every round: a candidate that maps and frees much memory slows
    # the call after it, so a fixed neighbour would be charged for it in every round.
    rng = np.random.default_rng(1234)
    for _ in range(repeats):
        for name in rng.permutation(names):
            fn, args = candidates[name]
            seconds, count = _call(fn, args)
            times[name].append(seconds)
            faults[name].append(count)
    return compile_s, times, faults


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:10.1f}"


def bench_shape(
    shape, repeats: int, ref_repeats: int, seed: int, class_chunk_sizes: Sequence[int] = ()
) -> dict[str, Any]:
    batch, height, width, num_classes = shape
    rng = np.random.default_rng(seed)
    labels_np, clean = pascal_like_labels(rng, batch, height, width, num_classes)
    logits_np = realistic_logits(rng, clean, num_classes)
    present = [np.unique(row[row != IGNORE_INDEX]).size for row in labels_np]
    void = float(np.mean(labels_np == IGNORE_INDEX))

    logits = jax.device_put(logits_np)
    labels = jax.device_put(labels_np)
    # The floor's input: the 2C maps, channels first, contiguous.
    onehot = (labels_np[..., None] == np.arange(num_classes)).astype(np.float32)
    stacked = np.ascontiguousarray(
        np.concatenate([logits_np, onehot], axis=-1).transpose(0, 3, 1, 2)
    )
    floor_input = jax.device_put(stacked)
    del onehot, stacked
    num_bands = sj.num_bands((height, width))
    band_limits = jnp.arange(num_bands)
    one_limit = jnp.asarray(num_bands // 4)

    sparse = dict(max_classes_present=MAX_CLASSES_PRESENT)
    vmapped = lambda lg, lb, limits: jax.vmap(lambda b: sj.relative_discrepancy(lg, lb, b))(limits)
    candidates = {
        "floor": (jax.jit(jnp.fft.rfft2), (floor_input,)),
        "ce_spectrum": (jax.jit(sj.ce_spectrum), (logits, labels)),
        "ce_half_spectrum": (jax.jit(sj.ce_half_spectrum), (logits, labels)),
        "band_profile": (jax.jit(sj.band_profile), (logits, labels)),
        "band_limit_sweep": (jax.jit(sj.band_limit_sweep), (logits, labels)),
        "relative_discrepancy": (jax.jit(sj.relative_discrepancy), (logits, labels, one_limit)),
        "vmap_relative_discrepancy": (jax.jit(vmapped), (logits, labels, band_limits)),
        "ce_spectrum[k=3]": (
            jax.jit(functools.partial(sj.ce_spectrum, **sparse)),
            (logits, labels),
        ),
        "band_limit_sweep[k=3]": (
            jax.jit(functools.partial(sj.band_limit_sweep, **sparse)),
            (logits, labels),
        ),
    }
    for chunk in class_chunk_sizes:  # The default is in the plain entries above.
        for name in ("ce_spectrum", "band_limit_sweep"):
            fn = functools.partial(getattr(sj, name), class_chunk_size=chunk)
            candidates[f"{name}[chunk={chunk}]"] = (jax.jit(fn), (logits, labels))

    print(
        f"\n=== shape B={batch} H={height} W={width} C={num_classes}: R={num_bands} bands, "
        f"{repeats} interleaved repeats; classes present per image {min(present)}-"
        f"{max(present)}, void {100 * void:.1f}% of pixels"
    )
    compile_s, times, faults = time_interleaved(candidates, repeats)

    # NumPy float64 reference: slow, timed on its own, and the ground truth of the checks.
    ref_times = []
    for _ in range(ref_repeats):
        start = time.perf_counter()
        ref_spectrum, ref_ce = reference_ce_spectrum(logits_np, labels_np, IGNORE_INDEX)
        ref_times.append(time.perf_counter() - start)
    ref_profile, ref_sweep = reference_sweep(ref_spectrum)

    floor = float(np.median(times["floor"]))
    rows: dict[str, dict[str, Any]] = {}
    floor_min = float(np.min(times["floor"]))
    print(
        f"{'candidate':<28}{'median ms':>10}{'min ms':>10}{'x floor':>9}{'(min)':>7}"
        f"{'faults MiB':>12}{'compile s':>11}"
    )
    for name in candidates:
        med, low = float(np.median(times[name])), float(np.min(times[name]))
        fault_mib = float(np.median(faults[name])) * PAGE_BYTES / 2**20
        rows[name] = dict(
            median_s=med,
            minor_fault_mib=fault_mib,
            min_s=low,
            ratio_to_floor=med / floor,
            compile_s=compile_s[name],
            times_s=times[name],
        )
        print(
            f"{name:<28}{_ms(med)}{_ms(low)}{med / floor:9.2f}{low / floor_min:7.2f}"
            f"{fault_mib:12.1f}{compile_s[name]:11.2f}"
        )
    ref_med = float(np.median(ref_times))
    rows["numpy_float64_reference"] = dict(
        median_s=ref_med, min_s=float(np.min(ref_times)), ratio_to_floor=ref_med / floor,
        times_s=ref_times,
    )  # fmt: skip
    print(
        f"{'numpy_float64_reference':<28}{_ms(ref_med)}{_ms(min(ref_times))}"
        f"{ref_med / floor:9.2f}{min(ref_times) / floor_min:7.2f}{'':>12}"
        f"{'(' + str(len(ref_times)) + ' runs)':>11}"
    )

    print(
        "x floor = median / floor median; (min) = min / floor min; faults MiB = median minor "
        "page faults per call x page size (first touch of fresh buffers, kernel time)"
    )

    # Correctness against the float64 reference.
    scale = np.abs(ref_spectrum).max()
    checks: dict[str, dict[str, float]] = {}

    def spectrum_errors(spectrum) -> dict[str, float]:
        spectrum = np.asarray(spectrum, np.float64)
        totals = spectrum.sum(axis=(1, 2))
        return dict(
            totals=float(np.max(np.abs(totals - ref_ce) / np.abs(ref_ce))),
            spectrum=float(np.max(np.abs(spectrum - ref_spectrum)) / scale),
        )

    checks["reference (Parseval)"] = dict(
        totals=float(np.max(np.abs(ref_spectrum.sum(axis=(1, 2)) - ref_ce) / np.abs(ref_ce)))
    )
    chunked = [name for name in candidates if "[chunk=" in name]
    for name in ["ce_spectrum", "ce_spectrum[k=3]"] + chunked[::2]:
        fn, args = candidates[name]
        checks[name] = spectrum_errors(fn(*args))
    fn, args = candidates["ce_half_spectrum"]
    half = np.asarray(fn(*args), np.float64)
    kw = width // 2 + 1
    checks["ce_half_spectrum"] = dict(
        spectrum=float(np.max(np.abs(half - ref_spectrum[..., :kw])) / scale)
    )
    fn, args = candidates["band_profile"]
    profile = np.asarray(fn(*args), np.float64)
    checks["band_profile"] = dict(
        totals=float(np.max(np.abs(profile.sum(-1) - ref_ce) / np.abs(ref_ce))),
        profile=float(np.max(np.abs(profile - ref_profile)) / np.abs(ref_profile).max()),
    )
    sweeps = ["band_limit_sweep", "band_limit_sweep[k=3]", "vmap_relative_discrepancy"]
    for name in sweeps + chunked[1::2]:
        fn, args = candidates[name]
        checks[name] = dict(sweep_abs=float(np.max(np.abs(np.asarray(fn(*args)) - ref_sweep))))
    fn, args = candidates["relative_discrepancy"]
    checks["relative_discrepancy"] = dict(
        sweep_abs=float(abs(float(fn(*args)) - ref_sweep[int(one_limit)]))
    )
    print(
        "check vs NumPy float64: totals = max_i |CE_i - ref_i| / ref_i; spectrum, profile = "
        "max |x - ref| / max |ref|; sweep_abs = max |R - R_ref|"
    )
    ok = True
    for name, errs in checks.items():
        bad = any(v > TOLERANCE or not np.isfinite(v) for v in errs.values())
        ok &= not bad
        text = "  ".join(f"{k} {v:.1e}" for k, v in errs.items())
        print(f"  {name:<28}{text:<40}{'FAIL' if bad else 'ok'}")

    targets = []
    print("targets (median against median):")
    for cand, base, bound in TARGETS:
        ratio = rows[cand]["median_s"] / rows[base]["median_s"]
        holds = ratio <= bound
        targets.append(dict(candidate=cand, baseline=base, bound=bound, ratio=ratio, holds=holds))
        print(
            f"  {cand + ' <= ' + format(bound, '.1f') + 'x ' + base:<62}"
            f"{ratio:6.2f}x  {'HOLDS' if holds else 'MISSES'}"
        )
    return dict(
        shape=list(shape),
        repeats=repeats,
        num_bands=num_bands,
        classes_present=[int(p) for p in present],
        void_fraction=void,
        results=rows,
        checks=checks,
        checks_ok=bool(ok),
        targets=targets,
    )


def environment() -> dict[str, Any]:
    device = jax.devices()[0]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # Not on Linux.
        cores = os.cpu_count()
    return dict(
        jax=jax.__version__,
        jaxlib=getattr(jax.lib, "__version__", None) or _jaxlib_version(),
        numpy=np.__version__,
        python=platform.python_version(),
        backend=jax.default_backend(),
        device=f"{device.platform}: {device.device_kind}",
        num_devices=jax.device_count(),
        cpu_count=os.cpu_count(),
        usable_cores=cores,
        processor=platform.processor() or platform.machine(),
        xla_flags=os.environ.get("XLA_FLAGS", ""),
        x64=bool(jax.config.jax_enable_x64),
    )


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _jaxlib_version() -> str | None:
    try:
        import jaxlib

        return jaxlib.__version__
    except (ImportError, AttributeError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", type=parse_shapes, default=parse_shapes(DEFAULT_SHAPES))
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"interleaved timed rounds per shape (default {DEFAULT_REPEATS_SMALL}, or "
        f"{DEFAULT_REPEATS_LARGE} for shapes of more than {LARGE_ELEMENTS} logits)",
    )
    parser.add_argument(
        "--ref-repeats",
        type=int,
        default=None,
        help="timed runs of the NumPy reference (default 2, or 1 for large shapes)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--class-chunk-sizes",
        type=lambda text: [int(k) for k in text.split(",")],
        default=[],
        help="also time ce_spectrum and band_limit_sweep with these class_chunk_size values "
        f"(the plain entries use the default, {sj.loss_spectrum.DEFAULT_CLASS_CHUNK_SIZE})",
    )
    parser.add_argument("--json", type=pathlib.Path, default=None, help="write results here")
    args = parser.parse_args(argv)
    for option in ("repeats", "ref_repeats"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")

    env = environment()
    print(
        f"JAX {env['jax']} (jaxlib {env['jaxlib']}), NumPy {env['numpy']}, Python {env['python']}"
    )
    print(
        f"device: {env['device']} x{env['num_devices']}; CPU count {env['cpu_count']} "
        f"(usable {env['usable_cores']}), {env['processor']}"
    )
    print(f"XLA_FLAGS: {env['xla_flags'] or '(unset)'}; jax_enable_x64={env['x64']}")
    print(f"load average at start: {_load()} (other processes on the machine skew timings)")

    start = time.perf_counter()
    results = []
    for shape in args.shapes:
        large = int(np.prod(shape)) > LARGE_ELEMENTS
        repeats = args.repeats or (DEFAULT_REPEATS_LARGE if large else DEFAULT_REPEATS_SMALL)
        minimum = MIN_REPEATS_LARGE if large else MIN_REPEATS_SMALL
        if repeats < minimum:
            print(f"warning: {repeats} repeats for {shape}; at least {minimum} recommended")
        ref_repeats = args.ref_repeats or (1 if large else 2)
        results.append(bench_shape(shape, repeats, ref_repeats, args.seed, args.class_chunk_sizes))
    elapsed = time.perf_counter() - start
    ok = all(r["checks_ok"] for r in results)
    print(
        f"\ntotal {elapsed:.0f} s; load average at end: {_load()}; "
        f"correctness checks {'passed' if ok else 'FAILED'}"
    )

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(dict(environment=env, shapes=results, elapsed_s=elapsed), indent=2)
        )
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
