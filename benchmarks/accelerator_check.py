r"""One prepared accelerator check: the spectra, the Jacobians, the training step and loop.

Run from the repository root, on one accelerator (one NVIDIA H200 or one TPU host), in
at most 8 minutes (``benchmarks/accelerator_check.sh`` first installs the carried wheels,
see ``benchmarks/README.md``)::

  python -m benchmarks.accelerator_check --out runs/accelerator_check
  python -m benchmarks.accelerator_check --smoke          # tiny sizes, CPU, under a minute
  python -m benchmarks.accelerator_check --sections spectrum,jacobian

Sections (``--sections``, in this order by default):

* ``spectrum``: ``ce_spectrum``, ``band_limit_sweep`` and their class-sparse paths
  (``max_classes_present=3``) against the floor, ``rfft2`` of a contiguous float32
  ``[B, 2C, H, W]`` array (:mod:`benchmarks.bench_ce_spectrum`), at ``(8, 513, 513, 21)``
  and ``(8, 513, 513, 150)`` (an ADE20K-sized class count). Before timing, the results
  are checked: the spectra of the first ``reference_images`` images against the float64
  NumPy reference, every image's Parseval total against its CE computed directly
  (log-softmax, no FFT), and the sweeps against the reference sweep of the checked
  spectra. Targets: dense <= 1.0x the floor, sparse <= 0.5x.
* ``jacobian``: the full 129 x 129 spectral Jacobian of the paper's conv layer (3x3
  circular conv + softplus, :mod:`benchmarks.bench_spectral_jacobian`) and its banded
  energy at 257 x 257: time and device memory, each checked against the closed form
  :math:`\|J\|_F^2 = \|A\|_F^2 = \sum_p \sigma'(z_p)^2 \sum_k K_k^2` (``J = F A F^{-1}``
  with ``F / sqrt(M)`` unitary; ``A = diag(sigmoid(z)) C`` for the circular conv ``C``).
* ``train_step``: DeepLab v3+ ResNet-101, output stride 16, batch 8, 513 x 513 crops,
  float32 and bfloat16 (``config.model.dtype``): compile time, steps/s, images/s and
  device memory of :func:`spectral_jax.training.train_step` (as
  :mod:`benchmarks.bench_train_step` compiles it), and the same model in PyTorch:
  torchvision's ResNet-101 with the ASPP and decoder of :mod:`benchmarks._torch_deeplab`
  (``torch.autocast`` and channels-last for bfloat16). Targets: JAX >= 1.0x PyTorch at
  equal precision, bfloat16 >= 1.6x float32. Without PyTorch (or torchvision) its rows
  say so and the JAX rows still run.
* ``loop``: 100 steps of the paper's training loop (``experiments/configs/pascal.py``
  through :func:`spectral_jax.training.train_and_evaluate`, the function that
  ``experiments/train.py`` calls) on generated 513 x 513 scenes (the
  ``synthetic_scenes`` TFDS builder with a ``pascal_like`` config of that size), ending
  with one evaluation with spectral statistics; then one evaluation pass timed with
  :class:`spectral_jax.evaluation.Evaluator` with and without the spectral statistics
  (target <= 1.2x).

Output: a Markdown table printed row by row as the check goes, and ``--out`` DIR /
``accelerator_check.json`` and ``accelerator_check.md``, rewritten after every row, so a
run stopped by a time limit leaves what it measured. A section that fails records its
error and the next one runs. Exit status 1 if a section failed or a correctness check
did not hold (a missed performance target is a result, not a failure).

Device memory: per compiled function, XLA's own account (``compiled.memory_analysis()``:
arguments + outputs + temporaries - aliased), on every backend; the process's peak
(``memory_stats()["peak_bytes_in_use"]``, None on the CPU) after each section; for
PyTorch ``torch.cuda.max_memory_allocated`` per row.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import functools
import gc
import json
import math
import os
import pathlib
import platform
import re
import statistics
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import spectral_jax as sj
from benchmarks import _ce_inputs, _deeplab_step, _jacobian_cases, timing
from experiments.configs import pascal
from spectral_jax import parallel
from spectral_jax.data import IGNORE_INDEX, synthetic
from spectral_jax.data import pipeline as pipeline_lib
from spectral_jax.data.inputs import InputPipeline, input_pipeline_from_sources
from spectral_jax.evaluation import Evaluator, inference_apply_fn
from spectral_jax.models import registry
from spectral_jax.training import load_variables, train_and_evaluate
from spectral_jax.training.writers import json_ready

try:  # PyTorch is optional: without it the PyTorch rows say so.
    import torch

    from benchmarks import _torch_deeplab
except ImportError:
    torch = _torch_deeplab = None

SECTIONS = ("spectrum", "jacobian", "train_step", "loop")
MAX_CLASSES_PRESENT = 3
# float32 against float64 references: errors relative to the largest value.
TOLERANCE = 1e-4
# Performance targets (ratios: candidate over baseline): the dense CE decomposition at most the
# FFT floor and its class-sparse path half of it; the JAX train step at most PyTorch's and at
# least 1.6x faster in bfloat16; evaluation with spectral statistics at most 1.2x without.
DENSE_BOUND, SPARSE_BOUND = 1.0, 0.5
JAX_OVER_TORCH_BOUND, BF16_SPEEDUP_BOUND = 1.0, 1.6
SPECTRAL_EVALUATION_BOUND = 1.2
MIB = 2**20


@dataclasses.dataclass(frozen=True)
class CheckSizes:
    """Sizes of one run: the accelerator's (:data:`FULL`) or the CPU smoke's (:data:`SMOKE`)."""

    spectrum_shapes: tuple[tuple[int, int, int, int], ...]
    spectrum_repeats: int
    reference_images: int  # images checked against the float64 NumPy spectrum
    jacobian_size: int
    jacobian_chunk: int
    band_energy_size: int
    band_energy_chunk: int
    jacobian_repeats: int
    train: _deeplab_step.BenchConfig
    train_warmup: int
    train_steps: int
    train_rounds: int
    loop_steps: int
    loop_image_size: int
    loop_batch_size: int
    loop_num_train: int
    loop_num_validation: int
    loop_model: tuple[tuple[str, Any], ...]  # overrides of pascal's config.model
    eval_repeats: int


FULL = CheckSizes(
    spectrum_shapes=((8, 513, 513, 21), (8, 513, 513, 150)),
    spectrum_repeats=20,
    reference_images=1,
    jacobian_size=129,
    jacobian_chunk=512,
    band_energy_size=257,
    band_energy_chunk=512,
    jacobian_repeats=3,
    train=_deeplab_step.BenchConfig("resnet101", batch_size=8, crop_size=513),
    train_warmup=2,
    train_steps=10,
    train_rounds=3,
    loop_steps=100,
    loop_image_size=513,
    loop_batch_size=8,
    loop_num_train=64,
    loop_num_validation=16,
    loop_model=(),
    eval_repeats=3,
)

SMOKE = CheckSizes(
    spectrum_shapes=((2, 33, 33, 5),),
    spectrum_repeats=3,
    reference_images=2,
    jacobian_size=9,
    jacobian_chunk=16,
    band_energy_size=9,
    band_energy_chunk=16,
    jacobian_repeats=1,
    train=_deeplab_step.BenchConfig(
        "resnet_tiny",
        batch_size=2,
        crop_size=33,
        aspp_channels=8,
        low_level_channels=4,
        decoder_channels=8,
    ),
    train_warmup=1,
    train_steps=2,
    train_rounds=1,
    loop_steps=3,
    loop_image_size=33,
    loop_batch_size=2,
    loop_num_train=4,
    loop_num_validation=3,
    loop_model=(
        ("backbone", "resnet_tiny"),
        ("aspp_channels", 8),
        ("low_level_channels", 4),
        ("decoder_channels", 8),
    ),
    eval_repeats=1,
)


# ---------------------------------------------------------------------------------------
# The report: rows printed as they come, JSON and Markdown rewritten after each.


@dataclasses.dataclass
class Row:
    """One line of the table.

    Attributes:
      section, name: where the row belongs and what it measures.
      value, unit: the main measurement (``"ms"``, ``"s"``, ``"steps/s"``); None when
        the row did not run (``note`` says why).
      memory_mib: device memory of the row (see the module docstring), or None.
      ratio, baseline: ``value`` against the row named by ``baseline`` (time over
        time, or rate over rate); None without a baseline.
      bound, higher_is_better: the target ``ratio <= bound`` (or ``>=``); None if none.
      details: further numbers (compile time, images/s, errors, ...).
      note: free text for the table.
    """

    section: str
    name: str
    value: float | None
    unit: str
    memory_mib: float | None = None
    ratio: float | None = None
    baseline: str = ""
    bound: float | None = None
    higher_is_better: bool = False
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    note: str = ""

    @property
    def holds(self) -> bool | None:
        if self.bound is None or self.ratio is None or not math.isfinite(self.ratio):
            return None
        return self.ratio >= self.bound if self.higher_is_better else self.ratio <= self.bound

    @property
    def target(self) -> str:
        if self.bound is None:
            return ""
        return f"{'>=' if self.higher_is_better else '<='} {self.bound:g}x {self.baseline}"

    def markdown(self) -> str:
        value = "" if self.value is None else f"{self.value:.4g} {self.unit}"
        memory = "" if self.memory_mib is None else f"{self.memory_mib:.0f}"
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}x {self.baseline}"
        holds = {None: "", True: "yes", False: "**no**"}[self.holds]
        cells = [self.section, self.name, value, memory, ratio, self.target, holds, self.note]
        return "| " + " | ".join(cells) + " |"


TABLE_HEADER = (
    "| section | row | value | device MiB | ratio | target | holds | note |\n"
    "|---|---|---:|---:|---|---|---|---|"
)


class Report:
    """Collects rows, checks and section statuses; prints rows and rewrites the files."""

    def __init__(self, out_dir: pathlib.Path | None, header: dict[str, Any]):
        self.out_dir = out_dir
        self.header = header
        self.rows: list[Row] = []
        self.checks: list[dict[str, Any]] = []
        self.sections: dict[str, dict[str, Any]] = {}
        self.watch = timing.Stopwatch()
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
        print(TABLE_HEADER, flush=True)
        self.write()

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(row.markdown(), flush=True)
        self.write()
        return row

    def check(self, section: str, name: str, error: float, tolerance: float = TOLERANCE) -> bool:
        """Records ``error <= tolerance`` (NaN fails); returns whether it held."""
        ok = bool(np.isfinite(error) and error <= tolerance)
        self.checks.append(
            dict(section=section, name=name, error=float(error), tolerance=tolerance, ok=ok)
        )
        print(
            f"  check [{section}] {name}: {error:.2e} (tolerance {tolerance:.0e}) "
            f"{'ok' if ok else 'FAILED'}",
            flush=True,
        )
        self.write()
        return ok

    def section(self, name: str, **fields) -> None:
        self.sections[name] = fields
        self.write()

    @property
    def ok(self) -> bool:
        failed = any(s.get("status") == "error" for s in self.sections.values())
        return not failed and all(c["ok"] for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        rows = []
        for row in self.rows:
            entry = dataclasses.asdict(row)
            entry.update(holds=row.holds, target=row.target)
            rows.append(entry)
        return json_ready(
            dict(
                **self.header,
                elapsed_s=self.watch.wall_s,
                sections=self.sections,
                rows=rows,
                checks=self.checks,
                checks_ok=all(c["ok"] for c in self.checks),
                ok=self.ok,
            )
        )

    def markdown(self) -> str:
        env = self.header["environment"]
        lines = [
            f"# Accelerator check{' (smoke)' if self.header.get('smoke') else ''}",
            "",
            f"{env.get('device')} x{env.get('num_devices')}; JAX {env.get('jax')}, "
            f"PyTorch {env.get('torch') or 'not installed'}; "
            f"{self.watch.wall_s:.0f} s",
            "",
            TABLE_HEADER,
            *[row.markdown() for row in self.rows],
            "",
            "| section | status | seconds | error |",
            "|---|---|---:|---|",
        ]
        for name, fields in self.sections.items():
            error = (fields.get("error") or "").splitlines()[-1:] or [""]
            lines.append(
                f"| {name} | {fields.get('status')} | {fields.get('elapsed_s', 0):.1f} | "
                f"{error[0]} |"
            )
        lines += ["", "| check | error | tolerance | ok |", "|---|---:|---:|---|"]
        for check in self.checks:
            lines.append(
                f"| {check['section']}: {check['name']} | {check['error']:.2e} | "
                f"{check['tolerance']:.0e} | {'yes' if check['ok'] else '**no**'} |"
            )
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        if self.out_dir is None:
            return
        for name, text in (
            ("accelerator_check.json", json.dumps(self.as_dict(), indent=2)),
            ("accelerator_check.md", self.markdown()),
        ):
            path = self.out_dir / name
            partial = path.with_suffix(path.suffix + ".partial")
            partial.write_text(text)
            os.replace(partial, path)  # A reader never sees half a file.


# ---------------------------------------------------------------------------------------
# Compilation, timing and device memory.


def compile_timed(fn: Callable, args: Sequence[Any]) -> tuple[Any, float, float | None]:
    """``(compiled, compile seconds, device MiB)``: ``jax.jit(fn)`` lowered and compiled.

    The memory is XLA's account of the executable: arguments + outputs + temporaries -
    aliased (donated) bytes; None where the backend gives none.
    """
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    with timing.Stopwatch() as watch:
        compiled = jitted.lower(*args).compile()
    return compiled, watch.wall_s, compiled_memory_mib(compiled)


def compiled_memory_mib(compiled) -> float | None:
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # Not implemented on this backend.
        return None
    if analysis is None:
        return None
    total = (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )
    return total / MIB


def device_peak_mib() -> float | None:
    """The process's peak device memory so far (None where the backend keeps no stats)."""
    stats = jax.local_devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / MIB


def convolution_dtypes(lowered) -> dict[str, int]:
    """Count of the convolutions of a lowered (StableHLO) program by operand element type."""
    counts: collections.Counter[str] = collections.Counter()
    for line in lowered.as_text().splitlines():
        if "stablehlo.convolution" in line:
            found = re.search(r":\s*\(tensor<[0-9x?]*x?([a-z]+[0-9]*)>", line)
            counts[found.group(1) if found else "unknown"] += 1
    return dict(counts)


# ---------------------------------------------------------------------------------------
# spectrum: the CE decomposition against the FFT floor.


@functools.partial(jax.jit, static_argnames=("num_classes", "radius"))
def realistic_logits(clean: jax.Array, key: jax.Array, *, num_classes: int, radius: int):
    """``[B, H, W, C]``: 5 x (box-blurred one-hot of ``clean`` + N(0, 0.3^2)), on device.

    :func:`benchmarks._ce_inputs.realistic_logits`'s recipe computed by JAX (at
    ``8 x 513 x 513 x 150`` the NumPy one takes tens of seconds), zero-padded at the edges.
    """
    smooth = jax.nn.one_hot(clean, num_classes, dtype=jnp.float32)
    width = 2 * radius + 1
    for window in ((1, width, 1, 1), (1, 1, width, 1)):
        total = jax.lax.reduce_window(smooth, 0.0, jax.lax.add, window, (1, 1, 1, 1), "SAME")
        smooth = total / width
    return 5.0 * (smooth + 0.3 * jax.random.normal(key, smooth.shape))


@functools.partial(jax.jit, static_argnames="num_classes")
def floor_input(logits: jax.Array, labels: jax.Array, *, num_classes: int) -> jax.Array:
    """The floor's input: the ``2C`` maps, ``[B, 2C, H, W]`` contiguous float32."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # 255 -> all zeros
    return jnp.concatenate([logits, onehot], axis=-1).transpose(0, 3, 1, 2)


@jax.jit
def direct_mean_ce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``[B]`` mean CE over each image's valid pixels, by log-softmax (no FFT)."""
    valid = labels != IGNORE_INDEX
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, jnp.where(valid, labels, 0)[..., None], axis=-1)
    total = -jnp.sum(jnp.where(valid, picked[..., 0], 0.0), axis=(1, 2))
    return total / jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1)


def run_spectrum(sizes: CheckSizes, report: Report) -> dict[str, Any]:
    results = {}
    for shape in sizes.spectrum_shapes:
        results["x".join(map(str, shape))] = _spectrum_shape(shape, sizes, report)
        gc.collect()
    return results


def _spectrum_shape(shape, sizes: CheckSizes, report: Report) -> dict[str, Any]:
    batch, height, width, num_classes = shape
    tag = "x".join(map(str, shape))
    rng = np.random.default_rng(0)
    labels_np, clean = _ce_inputs.pascal_like_labels(rng, batch, height, width, num_classes)
    labels = jax.device_put(labels_np)
    logits = realistic_logits(
        jax.device_put(clean), jax.random.key(0), num_classes=num_classes, radius=height // 32 or 1
    )
    maps = floor_input(logits, labels, num_classes=num_classes)
    sparse = dict(max_classes_present=MAX_CLASSES_PRESENT)
    k = MAX_CLASSES_PRESENT
    functions = {
        "floor": (jnp.fft.rfft2, (maps,)),
        "ce_spectrum": (sj.ce_spectrum, (logits, labels)),
        "band_limit_sweep": (sj.band_limit_sweep, (logits, labels)),
        f"ce_spectrum[k={k}]": (functools.partial(sj.ce_spectrum, **sparse), (logits, labels)),
        f"band_limit_sweep[k={k}]": (
            functools.partial(sj.band_limit_sweep, **sparse),
            (logits, labels),
        ),
    }
    compiled, compile_s, memory = {}, {}, {}
    for name, (fn, args) in functions.items():
        compiled[name], compile_s[name], memory[name] = compile_timed(fn, args)

    # Correctness before timing.
    section = f"spectrum {tag}"
    direct = np.asarray(direct_mean_ce(logits, labels), np.float64)
    count = min(sizes.reference_images, batch)
    ref_spectrum, ref_ce = _ce_inputs.reference_ce_spectrum(
        np.asarray(logits[:count]), labels_np[:count], IGNORE_INDEX
    )
    report.check(
        section, "direct CE vs float64", float(np.max(np.abs(direct[:count] - ref_ce) / ref_ce))
    )
    scale = np.abs(ref_spectrum).max()
    for name in ("ce_spectrum", f"ce_spectrum[k={k}]"):
        spectrum = np.asarray(compiled[name](logits, labels), np.float64)
        error = np.max(np.abs(spectrum[:count] - ref_spectrum)) / scale
        report.check(section, f"{name} vs float64 ({count} images)", float(error))
        totals = spectrum.sum(axis=(1, 2))
        report.check(
            section,
            f"{name} Parseval (all images)",
            float(np.max(np.abs(totals - direct) / direct)),
        )
        if name == "ce_spectrum":
            checked_spectrum = spectrum if count < batch else ref_spectrum
    _, ref_sweep = _ce_inputs.reference_sweep(checked_spectrum)
    for name in ("band_limit_sweep", f"band_limit_sweep[k={k}]"):
        sweep = np.asarray(compiled[name](logits, labels), np.float64)
        report.check(
            section, f"{name} vs reference sweep", float(np.max(np.abs(sweep - ref_sweep)))
        )

    _, times, _ = timing.time_interleaved(
        {name: (fn, functions[name][1]) for name, fn in compiled.items()}, sizes.spectrum_repeats
    )
    medians = {name: float(np.median(t)) for name, t in times.items()}
    for name in functions:
        bound = None
        if name != "floor":
            bound = SPARSE_BOUND if "[k=" in name else DENSE_BOUND
        report.add(
            Row(
                section="spectrum",
                name=f"{name} {tag}",
                value=1e3 * medians[name],
                unit="ms",
                memory_mib=memory[name],
                ratio=None if name == "floor" else medians[name] / medians["floor"],
                baseline="floor",
                bound=bound,
                details=dict(
                    compile_s=compile_s[name], min_ms=1e3 * min(times[name]), times_s=times[name]
                ),
                note="rfft2 of [B, 2C, H, W]" if name == "floor" else "",
            )
        )
    present = [np.unique(row[row != IGNORE_INDEX]).size for row in labels_np]
    return dict(
        median_s=medians,
        compile_s=compile_s,
        memory_mib=memory,
        classes_present=present,
        void_fraction=float(np.mean(labels_np == IGNORE_INDEX)),
        device_peak_mib=device_peak_mib(),
    )


# ---------------------------------------------------------------------------------------
# jacobian: the full spectral Jacobian and the banded energy.


def conv_layer_jacobian_norm(x, kernel) -> float:
    r"""``|A|_F^2`` of ``softplus(circular conv(x, kernel))`` at ``x``, in float64.

    ``A = diag(sigmoid(z)) C`` with ``z = C x`` the circular cross-correlation; every row
    of ``C`` holds the ``Kh Kw`` taps once (``H >= Kh``, ``W >= Kw``), so
    ``|A|_F^2 = \sum_p sigmoid(z_p)^2 \sum_k K_k^2``.

    Args:
      x: ``[H, W, 1]``; kernel: ``[Kh, Kw, 1, 1]`` (``spectral_jax.probes.conv`` layout).
    """
    x = np.asarray(x, np.float64)[..., 0]
    kernel = np.asarray(kernel, np.float64)[..., 0, 0]
    kh, kw = kernel.shape
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    # probes.conv pads by ((k - 1) // 2, k // 2) with wrap: z[h] = sum_a K[a] x[h + a - ph].
    z = sum(
        kernel[a, b] * np.roll(x, (ph - a, pw - b), axis=(0, 1))
        for a in range(kh)
        for b in range(kw)
    )
    sigmoid = 1.0 / (1.0 + np.exp(-z))
    return float(np.sum(sigmoid**2) * np.sum(kernel**2))


@jax.jit
def _frobenius_squared(matrix: jax.Array) -> jax.Array:
    return jnp.sum(jnp.abs(matrix) ** 2)


def run_jacobian(sizes: CheckSizes, report: Report) -> dict[str, Any]:
    results = {}
    cases = (
        (f"full:{sizes.jacobian_size}:reverse", sizes.jacobian_chunk, "spectral_jacobian"),
        (
            f"band_energy:{sizes.band_energy_size}:{sizes.band_energy_chunk}",
            sizes.band_energy_chunk,
            "spectral_jacobian_band_energy",
        ),
    )
    for case, chunk, label in cases:
        size = int(case.split(":")[1])
        compute, args = _jacobian_cases.build_case(case, chunk)
        compiled, compile_s, memory = compile_timed(compute, args)
        result = jax.block_until_ready(compiled(*args))
        x, kernel = _jacobian_cases.layer_input(size)
        expected = conv_layer_jacobian_norm(x, kernel)
        if case.startswith("full"):
            actual = float(_frobenius_squared(result))
            result_mib = result.size * result.dtype.itemsize / MIB
        else:
            actual = float(np.sum(np.asarray(result, np.float64)))
            result_mib = None
        del result
        report.check(
            "jacobian",
            f"{label} {size}x{size}: |J|_F^2 vs closed form",
            abs(actual - expected) / expected,
        )
        times = timing.time_calls(compiled, args, sizes.jacobian_repeats)
        row = report.add(
            Row(
                section="jacobian",
                name=f"{label} {size}x{size} (chunk {chunk})",
                value=1e3 * float(np.median(times)),
                unit="ms",
                memory_mib=memory,
                details=dict(compile_s=compile_s, times_s=times, result_mib=result_mib),
                note=f"compile {compile_s:.1f} s"
                + (f"; result {result_mib:.0f} MiB complex64" if result_mib else ""),
            )
        )
        results[case] = dataclasses.asdict(row)
    results["device_peak_mib"] = device_peak_mib()
    return results


# ---------------------------------------------------------------------------------------
# train_step: DeepLab v3+ ResNet-101 in JAX and in PyTorch.


def train_model_config(bench: _deeplab_step.BenchConfig, dtype: str):
    """``experiments/configs/pascal.py``'s ``config.model`` with ``bench``'s sizes.

    ``dtype != "float32"`` sets ``config.model.dtype`` (the models compute their
    convolutions in it; the parameters stay float32).
    """
    model_config = pascal.get_config().model
    model_config.backbone = bench.backbone
    model_config.output_stride = bench.output_stride
    model_config.aspp_channels = bench.aspp_channels
    model_config.low_level_channels = bench.low_level_channels
    model_config.decoder_channels = bench.decoder_channels
    model_config.dropout_rate = bench.dropout_rate
    if dtype != "float32":
        model_config.dtype = dtype
    return model_config


def _jax_train_row(sizes: CheckSizes, batch, dtype: str, torch_rate: float | None) -> Row:
    bench = sizes.train
    name = f"JAX {dtype}"
    try:
        model = registry.create_model(
            train_model_config(bench, dtype), num_classes=bench.num_classes
        )
        variables = _deeplab_step.init_variables(model, bench)
        state, step = _deeplab_step.make_jax_step(model, variables)
        del variables
        jax_batch = jax.device_put(batch)
        compiling = timing.Stopwatch()
        lowered = step.lower(state, jax_batch)
    except (TypeError, ValueError) as error:
        if dtype == "float32":
            raise
        # The registry or the model rejects config.model.dtype.
        return Row("train_step", name, None, "steps/s", note=f"not supported: {error}")
    convolutions = convolution_dtypes(lowered)
    if dtype == "bfloat16" and not convolutions.get("bf16"):
        return Row(
            "train_step",
            name,
            None,
            "steps/s",
            details=dict(convolution_dtypes=convolutions),
            note=f"not supported: config.model.dtype left the convolutions in {convolutions}",
        )
    compiled = lowered.compile()
    compile_s = compiling.wall_s
    memory = compiled_memory_mib(compiled)
    state, _, _, metrics = timing.time_steps(compiled, state, jax_batch, sizes.train_warmup)
    step_times = []
    for _ in range(sizes.train_rounds):
        state, seconds, _, metrics = timing.time_steps(
            compiled, state, jax_batch, sizes.train_steps
        )
        step_times.append(seconds)
    rate = 1.0 / statistics.median(step_times)
    loss = float(metrics["loss"])
    return Row(
        "train_step",
        name,
        rate,
        "steps/s",
        memory_mib=memory,
        ratio=None if torch_rate is None else rate / torch_rate,
        baseline=f"PyTorch {dtype}",
        bound=JAX_OVER_TORCH_BOUND,
        higher_is_better=True,
        details=dict(
            compile_s=compile_s,
            images_per_s=rate * bench.batch_size,
            step_s=step_times,
            loss=loss,
            convolution_dtypes=convolutions,
            device_peak_mib=device_peak_mib(),
        ),
        note=f"compile {compile_s:.1f} s; {rate * bench.batch_size:.1f} images/s; loss {loss:.3f}",
    )


def _torch_train_row(sizes: CheckSizes, batch, dtype: str) -> Row:
    bench = sizes.train
    name = f"PyTorch {dtype}" + (" (autocast, channels-last)" if dtype == "bfloat16" else "")
    if torch is None:
        return Row("train_step", name, None, "steps/s", note="torch not installed")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        module = _torch_deeplab.torchvision_deeplab(**bench.model_settings())
    except ImportError:
        return Row("train_step", name, None, "steps/s", note="torchvision not installed")
    module = module.to(device)
    images, labels = _deeplab_step.torch_batch(batch, torch)
    images, labels = images.to(device), labels.to(device)
    autocast_dtype = None
    if dtype == "bfloat16":
        module = module.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
        autocast_dtype = torch.bfloat16
    step = _deeplab_step.make_torch_step(module, torch, autocast_dtype=autocast_dtype)
    cuda = device.type == "cuda"
    synchronize = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.backends.cudnn.benchmark = True  # Fixed shapes: let cuDNN pick its kernels.
        torch.cuda.reset_peak_memory_stats()
    with timing.Stopwatch() as first_call:
        step(images, labels)
        synchronize()
    first_s = first_call.wall_s
    for _ in range(sizes.train_warmup):
        loss = step(images, labels)[0]
    synchronize()
    step_times = []
    for _ in range(sizes.train_rounds):
        with timing.Stopwatch() as watch:
            for _ in range(sizes.train_steps):
                loss = step(images, labels)[0]
            synchronize()
        step_times.append(watch.wall_s / sizes.train_steps)
    rate = 1.0 / statistics.median(step_times)
    memory = torch.cuda.max_memory_allocated() / MIB if cuda else None
    widths = ""
    if bench.backbone not in ("resnet50", "resnet101"):  # The smoke's resnet_tiny.
        widths = "; torchvision's widths, not the Flax model's: no ratio"
    loss = float(loss)
    del module, step, images, labels
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()  # Leave the memory to JAX.
    return Row(
        "train_step",
        name,
        rate,
        "steps/s",
        memory_mib=memory,
        details=dict(
            first_step_s=first_s,
            images_per_s=rate * bench.batch_size,
            step_s=step_times,
            loss=loss,
            device=str(device),
        ),
        note=f"first step {first_s:.1f} s; {rate * bench.batch_size:.1f} images/s; loss {loss:.3f}{widths}",
    )


def run_train_step(sizes: CheckSizes, report: Report) -> dict[str, Any]:
    batch = _deeplab_step.make_batch(sizes.train)
    rows = {}
    # PyTorch first: the JAX rows then print their ratio, and PyTorch's cached memory is
    # released before JAX allocates.
    for dtype in ("float32", "bfloat16"):
        rows[f"torch_{dtype}"] = report.add(_torch_train_row(sizes, batch, dtype))
    for dtype in ("float32", "bfloat16"):
        # The smoke's tiny Flax model has no torchvision counterpart of equal width.
        comparable = sizes.train.backbone in ("resnet50", "resnet101")
        torch_rate = rows[f"torch_{dtype}"].value if comparable else None
        rows[f"jax_{dtype}"] = report.add(_jax_train_row(sizes, batch, dtype, torch_rate))
        gc.collect()
    for framework in ("jax", "torch"):
        low, high = rows[f"{framework}_float32"].value, rows[f"{framework}_bfloat16"].value
        label = "JAX" if framework == "jax" else "PyTorch"
        report.add(
            Row(
                "train_step",
                f"{label} bfloat16 speed-up",
                None if low is None or high is None else high / low,
                "x",
                ratio=None if low is None or high is None else high / low,
                baseline=f"{label} float32",
                bound=BF16_SPEEDUP_BOUND if framework == "jax" else None,
                higher_is_better=True,
            )
        )
    return {name: dataclasses.asdict(row) for name, row in rows.items()}


# ---------------------------------------------------------------------------------------
# loop: the paper's training loop on generated scenes, and the evaluation's cost.


def synthetic_input_pipeline(
    config, *, image_size: int, num_train: int, num_validation: int, data_dir: str
) -> InputPipeline:
    """``config``'s pipeline on ``pascal_like`` scenes of ``image_size`` (TFDS build).

    The scenes are the ``synthetic_scenes`` builder's (built into ``data_dir`` on first
    use, ArrayRecord files read through ``tfds.data_source``); the classes and the
    normalisation are the ``pascal_like`` preset's, the augmentation and the evaluation
    stream :func:`spectral_jax.data.pipeline.train_batches` and ``eval_batches`` with
    ``config``'s settings, as :func:`spectral_jax.data.create_input_pipeline` reads them.
    """
    scenes = synthetic.SyntheticScenesConfig(
        name=f"pascal_like_{image_size}",
        scene="pascal_like",
        image_size=image_size,
        num_train=num_train,
        num_validation=num_validation,
        ignore_border=max(1, round(image_size / 129)),  # VOC's ~5 pixels at 513
    )
    info = pipeline_lib.dataset_info("synthetic_scenes/pascal_like")
    sources = {
        split: pipeline_lib.load_split(
            "synthetic_scenes", split, data_dir=data_dir, builder_kwargs={"config": scenes}
        )
        for split in synthetic.SPLITS
    }
    return input_pipeline_from_sources(config, info, sources["train"], sources["validation"])


def loop_config(sizes: CheckSizes):
    """``experiments/configs/pascal.py`` for ``sizes.loop_steps`` steps, one evaluation."""
    config = pascal.get_config()
    config.dataset = f"synthetic_scenes/pascal_like ({sizes.loop_image_size} px, generated)"
    config.crop_size = config.eval_crop_size = sizes.loop_image_size
    config.batch_size = config.eval_batch_size = sizes.loop_batch_size
    config.num_train_steps = sizes.loop_steps
    config.eval_every_steps = -1  # One evaluation, at the end.
    config.log_every_steps = max(1, sizes.loop_steps // 4)
    config.checkpoint_every_steps = sizes.loop_steps
    config.keep_checkpoints = 1
    config.spectral_statistics = True
    config.progress_bar = False
    config.tensorboard = False
    for field, value in sizes.loop_model:
        config.model[field] = value
    return config


def run_loop(sizes: CheckSizes, report: Report, scratch: str) -> dict[str, Any]:
    config = loop_config(sizes)
    workdir = os.path.join(scratch, "loop")
    building = timing.Stopwatch()
    pipeline = synthetic_input_pipeline(
        config,
        image_size=sizes.loop_image_size,
        num_train=sizes.loop_num_train,
        num_validation=sizes.loop_num_validation,
        data_dir=os.path.join(scratch, "tensorflow_datasets"),
    )
    build_s = building.wall_s
    with timing.Stopwatch() as looping:
        summary = train_and_evaluate(config, workdir, input_pipeline=pipeline)
    loop_s = looping.wall_s
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as file:
        records = [json.loads(line) for line in file]
    losses = [r["train/loss"] for r in records if r.get("train/loss") is not None]
    final_loss = losses[-1] if losses else float("nan")
    report.check(
        "loop", "final training loss is finite", 0.0 if math.isfinite(final_loss) else math.inf
    )
    report.check("loop", "mIoU in [0, 1]", 0.0 if 0.0 <= summary["mean_iou"] <= 1.0 else math.inf)
    report.check("loop", "Parseval error of the evaluation's spectra", summary["parseval_error"])
    discrepancy = summary["relative_discrepancy"] or {}
    report.add(
        Row(
            "loop",
            f"train_and_evaluate: {sizes.loop_steps} steps + evaluation",
            loop_s,
            "s",
            memory_mib=device_peak_mib(),
            details=dict(
                build_data_s=build_s,
                final_train_loss=final_loss,
                train_losses=losses,
                summary={k: summary[k] for k in summary if k not in ("band_profile", "iou")},
            ),
            note=f"compiles included; loss {final_loss:.3f}, mIoU {summary['mean_iou']:.3f}, "
            + ", ".join(f"R({nu}) {value:.3f}" for nu, value in discrepancy.items())
            + f"; data built in {build_s:.0f} s",
        )
    )
    evaluation = _time_evaluation(sizes, report, config, pipeline, workdir)
    return dict(summary=summary, loop_s=loop_s, build_data_s=build_s, evaluation=evaluation)


def _time_evaluation(sizes, report: Report, config, pipeline: InputPipeline, workdir: str):
    """One evaluation pass with :class:`Evaluator`: plain, + spectral, as the trainer's."""
    model = registry.create_model(config.model, num_classes=pipeline.num_classes)
    mesh = parallel.create_mesh(jax.devices())  # The trainer's: its compiled step is reused.
    variables = parallel.replicate(load_variables(workdir), mesh)
    batches = list(pipeline.eval_batches(int(config.eval_batch_size), 0, 1))
    common = dict(
        num_classes=pipeline.num_classes,
        ignore_index=pipeline.ignore_index,
        mesh=mesh,
        batch_size=parallel.local_batch_size(int(config.eval_batch_size), mesh),
    )
    apply_fn = inference_apply_fn(model)
    evaluators = {
        "plain": Evaluator(apply_fn, spectral_statistics=False, boundary_metrics=False, **common),
        "spectral": Evaluator(apply_fn, spectral_statistics=True, boundary_metrics=False, **common),
        "trainer": Evaluator(apply_fn, spectral_statistics=True, boundary_metrics=True, **common),
    }
    first, results = {}, {}
    for name, evaluator in evaluators.items():
        with timing.Stopwatch() as watch:
            results[name] = evaluator(variables, batches)
        first[name] = watch.wall_s
    times: dict[str, list[float]] = {name: [] for name in evaluators}
    for _ in range(sizes.eval_repeats):  # Interleaved rounds.
        for name, evaluator in evaluators.items():
            with timing.Stopwatch() as watch:
                evaluator(variables, batches)
            times[name].append(watch.wall_s)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    report.check(
        "loop",
        "evaluation mIoU with and without spectral statistics agree",
        abs(results["plain"].mean_iou - results["spectral"].mean_iou),
    )
    labels = {
        "plain": "evaluation pass, plain (mIoU, CE)",
        "spectral": "evaluation pass + spectral statistics",
        "trainer": "evaluation pass + spectral statistics + boundary metrics (the trainer's)",
    }
    for name in evaluators:
        report.add(
            Row(
                "loop",
                labels[name],
                1e3 * medians[name],
                "ms",
                ratio=None if name == "plain" else medians[name] / medians["plain"],
                baseline="plain",
                bound=SPECTRAL_EVALUATION_BOUND if name == "spectral" else None,
                details=dict(first_call_s=first[name], times_s=times[name]),
                note=f"{len(batches)} batches of {config.eval_batch_size}; first call "
                f"{first[name]:.1f} s",
            )
        )
    return dict(median_s=medians, first_call_s=first, mean_iou=results["plain"].mean_iou)


# ---------------------------------------------------------------------------------------
# Main.


def environment() -> dict[str, Any]:
    env = timing.environment()
    env.update(
        default_matmul_precision=str(jax.config.jax_default_matmul_precision),
        xla_python_client_preallocate=os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
        torch=None,
    )
    if torch is not None:
        env.update(
            torch=torch.__version__,
            torch_cuda=torch.cuda.is_available(),
            torch_device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            torch_cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            torch_matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
        with contextlib.suppress(ImportError):
            import torchvision  # Only its version.

            env["torchvision"] = torchvision.__version__
    return env


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CPU, under a minute)")
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated, run in this order; some of {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--out", type=pathlib.Path, default=None, help="write accelerator_check.{json,md} here"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="start no further section after this many seconds (default 480: 8 minutes)",
    )
    parser.add_argument(
        "--scratch",
        default=None,
        help="directory for the generated data set and the loop's checkpoints (default: a "
        "temporary directory, removed at the end)",
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        parser.error(f"--sections must name some of {SECTIONS}, got {args.sections!r}.")
    args.sections = names
    return args


def main(argv: Sequence[str] | None = None) -> int:
    # Before the backend starts: JAX takes device memory as it needs it, so PyTorch (in
    # the same process) has room, and the peaks are those of the work done.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    args = parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    header = dict(
        smoke=bool(args.smoke),
        started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        arguments=list(sys.argv[1:] if argv is None else argv),
        sizes=dataclasses.asdict(sizes),
        environment=environment(),
        python=platform.python_version(),
    )
    env = header["environment"]
    print(
        f"accelerator check{' (smoke)' if args.smoke else ''}: {env['device']} "
        f"x{env['num_devices']}, JAX {env['jax']}, PyTorch {env['torch'] or 'not installed'}; "
        f"sections {', '.join(args.sections)}",
        flush=True,
    )
    report = Report(args.out, header)
    with contextlib.ExitStack() as stack:
        scratch = args.scratch or stack.enter_context(tempfile.TemporaryDirectory())
        runners = {
            "spectrum": lambda: run_spectrum(sizes, report),
            "jacobian": lambda: run_jacobian(sizes, report),
            "train_step": lambda: run_train_step(sizes, report),
            "loop": lambda: run_loop(sizes, report, scratch),
        }
        for name in args.sections:
            elapsed = report.watch.wall_s
            if elapsed > args.budget_s:
                report.section(
                    name,
                    status="skipped",
                    elapsed_s=0.0,
                    error=f"time budget: {elapsed:.0f} s > {args.budget_s:.0f} s",
                )
                print(f"section {name}: skipped (time budget)", flush=True)
                continue
            section_watch = timing.Stopwatch()
            report.section(name, status="running", elapsed_s=0.0)
            try:
                results = runners[name]()
            except KeyboardInterrupt:  # A time limit (SIGINT): keep what was measured.
                report.section(name, status="interrupted", elapsed_s=section_watch.wall_s)
                raise
            except Exception:  # Recorded; the next section still runs.
                error = traceback.format_exc()
                print(f"section {name} FAILED:\n{error}", file=sys.stderr, flush=True)
                report.section(name, status="error", elapsed_s=section_watch.wall_s, error=error)
            else:
                report.section(
                    name,
                    status="ok",
                    elapsed_s=section_watch.wall_s,
                    results=results,
                    device_peak_mib=device_peak_mib(),
                )
            gc.collect()
            jax.clear_caches()  # Free the section's executables before the next.
    report.write()
    print(
        f"\n{report.watch.wall_s:.0f} s; sections: "
        + ", ".join(f"{n} {s['status']}" for n, s in report.sections.items())
        + f"; correctness checks {'passed' if all(c['ok'] for c in report.checks) else 'FAILED'}"
        + (f"; wrote {args.out}" if args.out else ""),
        flush=True,
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
