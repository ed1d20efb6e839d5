r"""Where XLA:CPU runs an FFT, and what that does to the decomposition against its floor.

Run from the repository root::

  python -m benchmarks.bench_fft_threads
  python -m benchmarks.bench_fft_threads --shape 2x513x513x21 --repeats 10
  taskset -c 0 python -m benchmarks.bench_fft_threads   # everything on one core

``bench_ce_spectrum``'s floor is ``jnp.fft.rfft2`` of a contiguous ``[B, 2C, H, W]``
parameter: the FFT is the program's only operation. XLA:CPU hands every FFT its intra-op
thread pool (DUCC splits the transform into one task per pool thread and waits for
them). What the measurements below are consistent with (thread identities were not
recorded): the first operation of a program runs on the calling thread, so the floor's
tasks get every pool thread; an operation that follows a loop fusion split over the pool
(``outer_dimension_partitions`` in the compiled HLO, which XLA chooses for large
elementwise work; the script prints whether the fusion before each FFT has it) runs on
the pool thread that finished that fusion, and that thread then blocks on its own
tasks, so the FFT gets one pool thread fewer: on 2 cores, one core. Every FFT of the
decomposition follows such a fusion (the one that builds the maps it transforms).

The script times, interleaved in a random order per round, with the wall time and the
process's CPU time per wall second (``cpu/wall``; 2.0 means both cores busy):

* ``floor``: ``rfft2`` of the ``[B, 2C, H, W]`` parameter (the floor);
* ``fft_after_fusion``: ``rfft2(2 * x)`` of the same parameter: the same transform after
  one elementwise loop fusion;
* ``chunk_scan_fft``: the decomposition's FFTs with the least around them: a
  ``lax.scan`` over ``C // k`` chunks of ``[2, k, B, H, W]`` random maps (``k`` the
  default ``class_chunk_size``; a remainder of ``C mod k`` classes is left out), each
  step slicing its chunk out of the stacked input (a copy), transforming it and adding
  one real part to the carry;
* ``one_chunk_fft``: the ``rfft2`` of one such chunk as a parameter, times the number of
  chunks (its wall time is multiplied; its ``cpu/wall`` is its own);
* ``ce_half_spectrum``: the library's dense decomposition on the data of
  ``bench_ce_spectrum``.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import spectral_jax as sj
from benchmarks._ce_inputs import parse_shapes, pascal_like_labels, realistic_logits
from benchmarks.timing import Stopwatch, load_average
from spectral_jax.loss_spectrum import DEFAULT_CLASS_CHUNK_SIZE as CHUNK


def _chunk_scan_fft(chunks):
    """``[K, 2, k, B, H, W]`` -> ``[B, H, W // 2 + 1]``: FFT each chunk, sum a real part."""

    def step(total, chunk):
        return total + jnp.fft.rfft2(chunk)[0, 0].real, None

    init = jnp.zeros(chunks.shape[3:-1] + (chunks.shape[-1] // 2 + 1,), chunks.dtype)
    return jax.lax.scan(step, init, chunks)[0]


def candidates(shape: tuple[int, int, int, int], seed: int):
    batch, height, width, num_classes = shape
    rng = np.random.default_rng(seed)
    labels, clean = pascal_like_labels(rng, batch, height, width, num_classes)
    logits = jnp.asarray(realistic_logits(rng, clean, num_classes))
    labels = jnp.asarray(labels)
    maps = jnp.asarray(rng.normal(size=(batch, 2 * num_classes, height, width)), jnp.float32)
    num_chunks = num_classes // CHUNK
    chunks = jnp.asarray(rng.normal(size=(num_chunks, 2, CHUNK, batch, height, width)), jnp.float32)
    rfft2 = jax.jit(jnp.fft.rfft2)
    return {
        "floor": (rfft2, (maps,), 1),
        "fft_after_fusion": (jax.jit(lambda x: jnp.fft.rfft2(2.0 * x)), (maps,), 1),
        "chunk_scan_fft": (jax.jit(_chunk_scan_fft), (chunks,), 1),
        "one_chunk_fft": (rfft2, (chunks[0],), num_chunks),
        "ce_half_spectrum": (sj.ce_half_spectrum, (logits, labels), 1),
    }


def fusion_before_fft_is_split(fn, args) -> bool | None:
    """Whether an FFT of ``fn``'s compiled HLO takes a fusion split over the thread pool.

    ``None`` when the program has no FFT fed by a fusion (the floor: a parameter).
    """
    text = fn.lower(*args).compile().as_text()
    fused = [m.group(1) for m in re.finditer(r"\sfft\(%([\w.-]+)\)", text)]
    if not any(f"%{name} = " in text and "fusion(" in _line(text, name) for name in fused):
        return None
    return any("outer_dimension_partitions" in _line(text, name) for name in fused)


def _line(text: str, name: str) -> str:
    """The line of the HLO ``text`` that defines ``%name``."""
    match = re.search(rf"^\s*%{re.escape(name)} = .*$", text, re.MULTILINE)
    return match.group(0) if match else ""


def run(shape, repeats: int, seed: int) -> dict[str, tuple[float, float, bool | None]]:
    """``{name: (median wall s, CPU s per wall s, fusion before the FFT split?)}``."""
    cases = candidates(shape, seed)
    split = {
        name: fusion_before_fft_is_split(fn if hasattr(fn, "lower") else jax.jit(fn), args)
        for name, (fn, args, _) in cases.items()
    }
    for fn, args, _ in cases.values():  # Compile and warm up.
        jax.block_until_ready(fn(*args))
        jax.block_until_ready(fn(*args))
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    order_rng = np.random.default_rng(seed + 1)
    for _ in range(repeats):
        for name in order_rng.permutation(list(cases)):
            fn, args, _ = cases[name]
            with Stopwatch() as watch:
                jax.block_until_ready(fn(*args))
            walls[name].append(watch.wall_s)
            cpus[name].append(watch.cpu_s / watch.wall_s)
    return {
        name: (
            float(np.median(walls[name])) * cases[name][2],
            float(np.median(cpus[name])),
            split[name],
        )
        for name in cases
    }


def _print_table(shape, results: dict[str, tuple[float, float, bool | None]]) -> None:
    floor = results["floor"][0]
    print(f"\n{'x'.join(map(str, shape))}  (load average {load_average()})")
    print("| case | ms | x floor | cpu/wall | FFT input from a pool-split fusion |")
    print("|---|---:|---:|---:|---|")
    for name, (wall, cpu, split) in results.items():
        fed = {None: "no fusion (a parameter)", True: "yes", False: "no"}[split]
        print(f"| `{name}` | {wall * 1e3:.1f} | {wall / floor:.2f} | {cpu:.2f} | {fed} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=parse_shapes, default=parse_shapes("8x129x129x21"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    for shape in args.shape:
        _print_table(shape, run(shape, args.repeats, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
