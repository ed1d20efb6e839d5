"""Plumbing shared by the experiment scripts: configs, trained runs, reports, tables.

Every experiment writes one run directory: ``report.md`` (Markdown with tables and
figures), CSV tables and PNG figures, plus one sub-directory per trained model (the
trainer's own work directory, so a killed experiment resumes: finished trainings are
read back from their ``summary.json``, unfinished ones resume from their checkpoints).
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import pathlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import ml_collections

CONFIG_NAMES = ("tiny", "pascal", "deepglobe", "cityscapes", "default")


def get_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """``experiments/configs/<name>.py``'s ``get_config()`` with dotted-key overrides.

    Args:
      name: one of :data:`CONFIG_NAMES`.
      **overrides: ``{"model.feature_size": 65, "num_train_steps": 100}``-style values
        (use ``**{"model.name": "dan"}`` for dotted keys).

    Raises:
      ValueError: for an unknown config name or key.
    """
    if name not in CONFIG_NAMES:
        raise ValueError(f"config must be one of {CONFIG_NAMES}, got {name!r}.")
    config = importlib.import_module(f"experiments.configs.{name}").get_config()
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        if leaf not in node:
            raise ValueError(f"config {name!r} has no field {key!r}.")
        node[leaf] = value
    return config


def log(message: str) -> None:
    """Progress to stderr (stdout carries the report)."""
    print(message, file=sys.stderr, flush=True)


def train_once(config: ml_collections.ConfigDict, workdir: os.PathLike | str) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` unless a finished run is there; returns its summary.

    A run without ``summary.json`` resumes from its latest checkpoint
    (:func:`spectral_jax.training.train_and_evaluate`).
    """
    from spectral_jax.training import train_and_evaluate

    workdir = pathlib.Path(workdir)
    summary_path = workdir / "summary.json"
    if summary_path.exists():
        log(f"  {workdir}: finished earlier, reading {summary_path.name}")
        return json.loads(summary_path.read_text())
    log(f"  {workdir}: training ({config.model.name}, {config.dataset})")
    return train_and_evaluate(config, workdir)


def restore_trained(config: ml_collections.ConfigDict, workdir: os.PathLike | str):
    """``(model, variables)`` of the latest checkpoint of a run trained with ``config``."""
    from spectral_jax.data import dataset_info
    from spectral_jax.training import create_model, load_checkpoint

    model = create_model(config.model, num_classes=dataset_info(config.dataset).num_classes)
    tree, _ = load_checkpoint(workdir)
    variables = {"params": tree["params"]}
    if tree.get("batch_stats"):
        variables["batch_stats"] = tree["batch_stats"]
    return model, jax.tree.map(jax.numpy.asarray, variables)


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
        import matplotlib.pyplot as plt

        plt.close(figure)
        self.parts += [f"![{caption}]({name})", "", f"*{caption}*", ""]
        return path

    def write(self) -> pathlib.Path:
        path = self.workdir / "report.md"
        path.write_text("\n".join(self.parts))
        log(f"wrote {path}")
        return path
