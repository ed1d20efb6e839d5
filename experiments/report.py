"""Reports of the experiments: Markdown sections, tables, CSV files and figures.

Every experiment writes its run directory through a :class:`Report`: ``report.md``
(headings, paragraphs, tables, linked PNG figures), with its CSV tables
(:func:`write_csv`) beside it. Progress goes to stderr (:func:`log`); stdout carries the
report's path. Figures use matplotlib (the ``plot`` extra) through :func:`pyplot`, with
the colours and line styles below shared by every experiment.
"""

from __future__ import annotations

import csv
import os
import pathlib
import platform
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from spectral_jax.evaluation import RankCorrelation, Spread, claim_verdict, format_spread

#: Colour of each of the paper's data sets, and line style of each model, in figures.
DATASET_COLORS = {"pascal": "C0", "deepglobe": "C2", "cityscapes": "C3"}
MODEL_STYLES = {"deeplab": "-", "dan": "--"}


def log(message: str) -> None:
    """Progress to stderr (stdout carries the report)."""
    print(message, file=sys.stderr, flush=True)


def pyplot():
    """``matplotlib.pyplot`` drawing to files only (the Agg backend, no window)."""
    # matplotlib is an optional extra (`plot`): imported when the first figure is drawn.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colour_labels(labels: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """RGB colours ``[..., 3]`` of integer labels ``[...]``: tab20 per class, ignored white.

    Labels outside ``[0, num_classes)`` (the ignore label) are white.
    """
    labels = np.asarray(labels)
    colours = pyplot().get_cmap("tab20", max(num_classes, 2))(np.arange(num_classes))[:, :3]
    rgb = colours[np.clip(labels, 0, num_classes - 1)]
    rgb[(labels < 0) | (labels >= num_classes) | (labels == ignore_index)] = 1.0
    return rgb


def format_value(value: Any, digits: int = 3) -> str:
    """Numbers to fixed digits, ``None`` to "-", anything else to ``str``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 3) -> str:
    """A Markdown table; floats to ``digits`` decimals."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(v, digits) for v in row) + " |")
    return "\n".join(lines)


def write_csv(path: os.PathLike | str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Rows of dicts (same keys) to a CSV file."""
    if not rows:
        raise ValueError(f"no rows to write to {path}.")
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def claim_line(
    claim: str,
    estimate: Spread | RankCorrelation,
    *,
    reference: float,
    expected: str,
    digits: int = 3,
) -> str:
    """A Markdown list item: the paper's ``claim``, our estimate and what its interval says.

    ``expected`` is where the claim puts the value relative to ``reference`` (``"above"``
    or ``"below"``; :func:`spectral_jax.evaluation.claim_verdict`).

    Example: ``- Block-wise labels cost mIoU (relative mIoU below 1): 0.97 ± 0.01 (95 % CI
    0.95 to 0.99, n=4): **supports**.``
    """
    verdict = claim_verdict(estimate, reference, expected=expected)
    return f"- {claim}: {format_spread(estimate, digits)}: **{verdict}**."


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else :func:`platform.processor`), with the
    machine type and the number of cores, e.g. ``"AMD EPYC (x86_64, 2 cores)"``."""
    name = ""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = name or platform.processor() or "unknown CPU"
    return f"{name} ({platform.machine()}, {os.cpu_count()} cores)"


class Report:
    """A Markdown report assembled section by section and written to ``workdir``."""

    def __init__(self, workdir: os.PathLike | str, title: str):
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.parts = [f"# {title}", ""]

    def heading(self, text: str, level: int = 2) -> None:
        self.parts += ["#" * level + " " + text, ""]

    def paragraph(self, text: str) -> None:
        self.parts += [text, ""]

    def table(self, header: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 3):
        self.parts += [markdown_table(header, rows, digits), ""]

    def figure(self, figure, name: str, caption: str) -> pathlib.Path:
        """Saves a matplotlib figure as ``name`` (PNG) and links it."""
        path = self.workdir / name
        figure.savefig(path, dpi=120, bbox_inches="tight")
        pyplot().close(figure)
        self.parts += [f"![{caption}]({name})", "", f"*{caption}*", ""]
        return path

    def write(self) -> pathlib.Path:
        path = self.workdir / "report.md"
        path.write_text("\n".join(self.parts))
        log(f"wrote {path}")
        return path
