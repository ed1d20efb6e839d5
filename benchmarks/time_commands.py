r"""The wall-clock and CPU time of the README's two commands, `make demo` and `make test`.

Run from the repository root, with nothing else running on the machine::

  python -m benchmarks.time_commands                  # this checkout
  python -m benchmarks.time_commands --clone          # a fresh clone of HEAD, as a newcomer
  make timings                                        # the same as --clone

Each command runs as a child process; its wall time is measured around it and its CPU
time (user + system, of all its processes and threads) from ``getrusage`` of the
children. `make demo` writes into a new work directory, so the embedded data set is built
from scratch as on a first run. With ``--clone`` the repository's ``HEAD`` is cloned into
a temporary directory and ``make .venv`` and the test extras are installed there first
(timed apart: the installation is not part of either command's time). The load average
before and after is printed: numbers taken on a busy machine are not the commands'.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import tempfile

from benchmarks.timing import Stopwatch, children_cpu_seconds, load_average

ROOT = pathlib.Path(__file__).resolve().parent.parent


def timed(command: list[str], cwd: pathlib.Path) -> tuple[float, float, int]:
    """Runs ``command`` in ``cwd``; returns ``(wall_s, cpu_s, exit_code)``."""
    cpu_before = children_cpu_seconds()
    with Stopwatch() as watch:
        exit_code = subprocess.call(command, cwd=cwd)
    return watch.wall_s, children_cpu_seconds() - cpu_before, exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clone", action="store_true", help="Time a fresh clone of HEAD.")
    parser.add_argument("--skip_demo", action="store_true", help="Do not time `make demo`.")
    parser.add_argument("--skip_test", action="store_true", help="Do not time `make test`.")
    args = parser.parse_args(argv)

    scratch = pathlib.Path(tempfile.mkdtemp(prefix="spectral_jax_timings_"))
    checkout = ROOT
    rows = []
    print(f"load average (1 / 5 / 15 min) at start: {load_average()}", flush=True)
    if args.clone:
        checkout = scratch / "clone"
        subprocess.check_call(["git", "clone", "--quiet", str(ROOT), str(checkout)])
        rows.append(
            ("install (make lint: .venv, extras, ruff)", *timed(["make", "lint"], checkout))
        )
    if not args.skip_demo:
        demo_workdir = scratch / "demo"
        command = ["make", "demo", f"DEMO_WORKDIR={demo_workdir}"]
        rows.append(("make demo", *timed(command, checkout)))
    if not args.skip_test:
        rows.append(("make test", *timed(["make", "test"], checkout)))
    print(f"\nload average (1 / 5 / 15 min) at end: {load_average()}")
    print(f"checkout: {checkout}\n")
    print("| command | wall | CPU | exit code |")
    print("|---|---:|---:|---:|")
    for name, wall, cpu, code in rows:
        print(f"| {name} | {wall:.0f} s ({wall / 60:.1f} min) | {cpu:.0f} s | {code} |")
    return max((code for *_, code in rows), default=0)


if __name__ == "__main__":
    sys.exit(main())
