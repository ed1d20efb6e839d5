"""Compares every number of two output folders: ``python -m benchmarks.compare_outputs A B``.

For checking that a refactor changes no result (``benchmarks/tiny_outputs.sh`` writes the
folders). JSON: every leaf; CSV: every cell; NPZ: every array, exactly. Fields and columns
whose names say they are times or paths, and the differing lines of Markdown reports, are
listed apart for a reader to look at; so are orbax's checkpoint files, whose names are
random. Exits with 1 if a number differs or a file is missing on one side.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import re
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

TIMING_OR_PATH = re.compile(
    r"second|time|wall|cpu|date|host|duration|_s$|elapsed|machine|data_dir|workdir|path", re.I
)
SKIPPED_PARTS = ("tfds", "checkpoints")


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{prefix}[{index}]")
    else:
        yield prefix, value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return a == b


def _arrays_equal(a: np.ndarray, b: np.ndarray) -> bool:
    try:
        return bool(np.array_equal(a, b, equal_nan=True))
    except TypeError:  # strings and objects have no NaN
        return bool(np.array_equal(a, b))


def _files(root: pathlib.Path) -> set[pathlib.Path]:
    return {
        path.relative_to(root)
        for path in root.rglob("*")
        if path.is_file() and not set(SKIPPED_PARTS) & set(path.relative_to(root).parts)
    }


def compare(before: pathlib.Path, after: pathlib.Path) -> tuple[list[str], list[str]]:
    """``(differences, to_read)``: differing numbers and missing files, then the differing
    times, paths and report lines."""
    differences: list[str] = []
    to_read: list[str] = []
    files_before, files_after = _files(before), _files(after)
    for name in sorted(files_before ^ files_after):
        side = "after" if name in files_before else "before"
        (to_read if name.suffix == ".log" or "events" in name.name else differences).append(
            f"{name}: missing {side}"
        )
    for name in sorted(files_before & files_after):
        a, b = before / name, after / name
        if name.suffix == ".json":
            la, lb = (
                dict(_leaves(json.loads(a.read_text()))),
                dict(_leaves(json.loads(b.read_text()))),
            )
            for key in sorted(set(la) | set(lb)):
                if not _same(la.get(key, "<absent>"), lb.get(key, "<absent>")):
                    line = (
                        f"{name}{key}: {la.get(key, '<absent>')!r} -> {lb.get(key, '<absent>')!r}"
                    )
                    (to_read if TIMING_OR_PATH.search(key) else differences).append(line)
        elif name.suffix == ".csv":
            with a.open() as fa, b.open() as fb:
                ra, rb = list(csv.reader(fa)), list(csv.reader(fb))
            if len(ra) != len(rb):
                differences.append(f"{name}: {len(ra)} rows -> {len(rb)}")
            header = ra[0] if ra else []
            for i, (row_a, row_b) in enumerate(zip(ra, rb, strict=False)):
                if len(row_a) != len(row_b):
                    differences.append(f"{name} row {i}: {len(row_a)} cells -> {len(row_b)}")
                for j, (u, v) in enumerate(zip(row_a, row_b, strict=False)):
                    if u != v:
                        column = header[j] if j < len(header) else str(j)
                        line = f"{name}[{i}, {column}]: {u} -> {v}"
                        (to_read if TIMING_OR_PATH.search(column) else differences).append(line)
        elif name.suffix == ".npz":
            with np.load(a) as za, np.load(b) as zb:
                for key in sorted(set(za.files) | set(zb.files)):
                    if key not in za.files or key not in zb.files:
                        differences.append(f"{name}:{key}: only on one side")
                    elif not _arrays_equal(za[key], zb[key]):
                        line = f"{name}:{key} differs"
                        (to_read if TIMING_OR_PATH.search(key) else differences).append(line)
        elif name.suffix == ".md":
            la, lb = a.read_text().splitlines(), b.read_text().splitlines()
            to_read += [
                f"{name}: - {x}\n{name}: + {y}" for x, y in zip(la, lb, strict=False) if x != y
            ]
            if len(la) != len(lb):
                differences.append(f"{name}: {len(la)} lines -> {len(lb)}")
    return differences, to_read


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=pathlib.Path)
    parser.add_argument("after", type=pathlib.Path)
    args = parser.parse_args(argv)
    differences, to_read = compare(args.before, args.after)
    print(f"# {len(differences)} differing numbers or files")
    print("\n".join(differences))
    print(f"# {len(to_read)} differing times, paths and report lines (read them)")
    print("\n".join(to_read))
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
