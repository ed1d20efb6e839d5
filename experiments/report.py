"""Reports of the experiments: Markdown sections, tables, CSV files and figures.

Every experiment writes its run directory through a :class:`Report`: ``report.md``
(headings, paragraphs, tables, linked PNG figures), with its CSV tables
(:func:`write_csv`) beside it. Progress goes to stderr (:func:`log`); stdout carries the
report's path. Figures use matplotlib (the ``plot`` extra) through :func:`pyplot`, with
the colours and line styles below shared by every experiment.
"""

from __future__ import annotations

import csv
import math
import os
import pathlib
import platform
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from spectral_jax.data import IGNORE_INDEX
from spectral_jax.evaluation import RankCorrelation, Spread

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


def colour_labels(
    labels: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
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


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}".replace("-", "−") if math.isfinite(value) else "nan"


def format_spread(estimate: Spread | RankCorrelation, digits: int = 3) -> str:
    """The reports' one text form of a :class:`Spread` or a :class:`RankCorrelation`.

    ``0.815 ± 0.013 (95 % CI 0.794 to 0.836, n=4)`` for a spread over seeds,
    ``0.815 (n=1, no spread)`` for a single seed, and ``−0.600 (95 % bootstrap CI
    −0.886 to −0.143, 18 points)`` for a rank correlation.

    Args:
      estimate: the spread or the correlation.
      digits: decimals of every number.
    """
    if digits < 0:
        raise ValueError(f"digits must be non-negative, got {digits}.")
    percent = f"{100 * estimate.confidence:g} %"
    if isinstance(estimate, RankCorrelation):
        interval = f"{_number(estimate.low, digits)} to {_number(estimate.high, digits)}"
        return (
            f"{_number(estimate.rho, digits)} ({percent} bootstrap CI {interval}, "
            f"{estimate.n} points)"
        )
    if estimate.n == 1:
        return f"{_number(estimate.mean, digits)} (n=1, no spread)"
    interval = f"{_number(estimate.low, digits)} to {_number(estimate.high, digits)}"
    return (
        f"{_number(estimate.mean, digits)} ± {_number(estimate.std, digits)} "
        f"({percent} CI {interval}, n={estimate.n})"
    )


def interval_side(
    estimate: Spread | RankCorrelation, reference: float
) -> Literal["above", "below", "across"]:
    """Where the interval of ``estimate`` lies relative to ``reference``.

    Returns:
      ``"above"`` if the whole interval is above ``reference``, ``"below"`` if below,
      ``"across"`` if it contains ``reference`` or is undefined (one seed, too few
      defined resamples): the data cannot decide.
    """
    low, high = estimate.low, estimate.high
    if not (math.isfinite(low) and math.isfinite(high)):
        return "across"
    if low > reference:
        return "above"
    if high < reference:
        return "below"
    return "across"


def claim_verdict(
    estimate: Spread | RankCorrelation,
    reference: float,
    *,
    expected: Literal["above", "below"],
) -> Literal["supports", "contradicts", "cannot decide"]:
    """What the interval of ``estimate`` says of a claim "the value is ``expected`` ``reference``".

    Example: the paper's claim that block-wise labels cost mIoU is "relative mIoU below
    1": an interval wholly below 1 ``"supports"`` it, wholly above ``"contradicts"`` it,
    one containing 1 (or undefined) ``"cannot decide"``.

    Raises:
      ValueError: for ``expected`` other than ``"above"`` or ``"below"``.
    """
    if expected not in ("above", "below"):
        raise ValueError(f"expected must be 'above' or 'below', got {expected!r}.")
    side = interval_side(estimate, reference)
    if side == "across":
        return "cannot decide"
    return "supports" if side == expected else "contradicts"


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
    or ``"below"``; :func:`claim_verdict`).

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
