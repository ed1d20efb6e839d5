"""Time and peak memory of exact spectral Jacobians (``spectral_jax.spectral_gradient``).

Every case runs in its own subprocess, so that its peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is its own; the table also gives the
peak of a process that only imports JAX and builds the input (``baseline``). The probe is
the paper's convolutional layer (Eq. 9): a 3x3 circular-padded conv + softplus on one
channel, ``x ~ U(-1, 1)``.

Cases (default invocation, about 2-3 minutes on 2 CPU cores):

* ``full``: ``spectral_jacobian`` (``mode="forward"`` and ``"reverse"``), jitted with a
  static ``chunk_size``, at 33, 65 and 129 (the 129 matrix is 16641^2 complex64, 2.2 GB);
* ``naive``: unchunked ``jax.jacfwd`` of the real layer, then ``fftn``/``ifftn`` over
  the two index pairs, at 33 and 65 (at 129 its ``[N, N]`` intermediates do not fit);
* ``band_energy``: ``spectral_jacobian_band_energy`` (rows, ``jax.vjp``) at 129 and 257,
  never holding J, with chunk sizes 64 and 16 (the faster ones on this CPU: at 257 a
  row costs 1.7 ms in chunks of 16 and 2.4 ms in chunks of 256, cache effects);
* ``rows``: ``spectral_jacobian_rows`` of 32 rows; the time per row.

Times are the minimum of ``--repeats`` calls after a first call (reported apart: it
includes compilation), with ``jax.block_until_ready``; a first call slower than 5 s is
not repeated and its time (compilation included, about 1 s) is the reported time.

Usage::

    .venv/bin/python -m benchmarks.bench_spectral_jacobian
    .venv/bin/python -m benchmarks.bench_spectral_jacobian --cases full:129:reverse
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from benchmarks._jacobian_cases import build_case, layer_input
from benchmarks.timing import time_call

DEFAULT_CASES = (
    "baseline:129",
    "full:33:forward",
    "full:65:forward",
    "full:65:reverse",
    "full:129:forward",
    "full:129:reverse",
    "naive:33",
    "naive:65",
    "band_energy:129:64",
    "band_energy:257:16",
    "rows:129",
    "rows:257",
)


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _run_case(case: str, repeats: int, chunk_size: int) -> dict:
    """Runs one case in this process; returns its timings."""
    kind = case.split(":")[0]
    if kind == "baseline":
        layer_input(int(case.split(":")[1]))
        return {"first_s": 0.0, "time_s": 0.0, "peak_mib": _peak_mib()}
    compute, args = build_case(case, chunk_size)
    first, result = time_call(compute, *args)
    times = []
    # A call slower than 5 s is not repeated: compilation is about 1 s of it.
    for _ in range(repeats if first < 5.0 else 0):
        del result
        seconds, result = time_call(compute, *args)
        times.append(seconds)
    times = times or [first]
    out = {"first_s": first, "time_s": min(times), "peak_mib": _peak_mib()}
    if kind == "rows":
        out["per_row_ms"] = 1e3 * min(times) / args[1].shape[0]
    if kind in ("full", "naive"):
        out["result_mib"] = result.size * result.dtype.itemsize / 2**20
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one:
        print(json.dumps(_run_case(args.run_one, args.repeats, args.chunk_size)))
        return 0
    results = {}
    print(
        "| case | size | first call (s) | time (s) | per row (ms) | result (MiB) | peak RSS (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for case in args.cases.split(","):
        command = [
            sys.executable,
            "-m",
            "benchmarks.bench_spectral_jacobian",
            "--run-one",
            case,
            "--repeats",
            str(args.repeats),
            "--chunk-size",
            str(args.chunk_size),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"| {case} | failed: {done.stderr.strip().splitlines()[-1:]} |||||")
            results[case] = None
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results[case] = result
        kind, size, *rest = case.split(":")
        name = kind + (f" ({rest[0]})" if rest and kind == "full" else "")
        name += f" (chunk {rest[0]})" if rest and kind == "band_energy" else ""
        per_row = f"{result['per_row_ms']:.2f}" if "per_row_ms" in result else ""
        size_mib = f"{result['result_mib']:.0f}" if "result_mib" in result else ""
        print(
            f"| {name} | {size}x{size} | {result['first_s']:.2f} | {result['time_s']:.2f} | "
            f"{per_row} | {size_mib} | {result['peak_mib']:.0f} |",
            flush=True,
        )
    for size in ("33", "65"):
        for mode in ("forward", "reverse"):
            naive, full = results.get(f"naive:{size}"), results.get(f"full:{size}:{mode}")
            if naive and full:
                print(
                    f"chunked ({mode}) / naive jacfwd at {size}x{size}: time "
                    f"{full['time_s'] / naive['time_s']:.2f}x, peak RSS "
                    f"{full['peak_mib'] / naive['peak_mib']:.2f}x"
                )
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
