"""Plumbing shared by the experiment scripts: configs, trained runs, reports, tables.

Every experiment writes one run directory: ``report.md`` (Markdown with tables and
figures), CSV tables and PNG figures, plus one sub-directory per trained model (the
trainer's own work directory, so a killed experiment resumes: finished trainings are
read back from their ``summary.json``, unfinished ones resume from their checkpoints).
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib
import json
import os
import pathlib
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

CONFIG_NAMES = ("tiny", "pascal", "deepglobe", "cityscapes", "default")
#: The paper's two models: ``config.model.name`` and the title used in reports.
MODEL_NAMES = {"deeplab": "deeplabv3plus", "dan": "dan"}
MODEL_TITLES = {"deeplab": "DeepLab v3+", "dan": "DAN"}


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


def experiment_parser(
    name: str, doc: str | None, *, configs: Sequence[str] = CONFIG_NAMES
) -> argparse.ArgumentParser:
    """The argument parser of ``python -m experiments.<name>`` with the shared options.

    ``--workdir`` (default ``runs/<name>``), ``--config`` (one of ``configs``, default
    ``tiny``) and ``--data-dir`` (the TFDS data directory); the script adds its own.
    """
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{name}", description=(doc or "").split("\n", 1)[0]
    )
    parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("runs", name))
    parser.add_argument("--config", default="tiny", choices=tuple(configs))
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    return parser


def add_training_overrides(parser: argparse.ArgumentParser) -> None:
    """``--steps``, ``--crop-size`` and ``--batch-size``, read by :func:`run_overrides`."""
    parser.add_argument("--steps", type=int, default=None, help="training steps per run")
    parser.add_argument("--crop-size", type=int, default=None, help="training crop (tests)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (tests)")


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`get_config` overrides from ``--data-dir`` and :func:`add_training_overrides`.

    ``--batch-size`` sets the evaluation batch size too; options left unset are left out.
    """
    overrides: dict[str, Any] = {"data_dir": args.data_dir}
    if args.steps is not None:
        overrides["num_train_steps"] = args.steps
    if args.crop_size is not None:
        overrides["crop_size"] = args.crop_size
    if args.batch_size is not None:
        overrides["batch_size"] = overrides["eval_batch_size"] = args.batch_size
    return overrides


def experiment_config(
    config_name: str,
    *,
    model: str,
    dataset: str | None = None,
    steps: int | None = None,
    data_dir: str | None = None,
    crop_size: int | None = None,
    batch_size: int | None = None,
    eval_split: str | None = None,
    self_evaluated: bool = False,
) -> ml_collections.ConfigDict:
    """The training config of ``model`` on ``dataset`` for the paper's experiments.

    Args:
      config_name: ``"tiny"`` or ``"default"`` (the data set's embedded preset,
        :data:`experiments.paper_values.PRESET_OF_DATASET`) or a paper config name; with
        a paper config every data set takes its own paper config
        (``experiments/configs/<dataset>.py``).
      model: ``"deeplab"`` or ``"dan"``; DAN takes the config's low-level width as the
        width of its stage projections.
      dataset: ``"pascal"``, ``"deepglobe"`` or ``"cityscapes"``; None keeps the
        config's data set.
      steps: training steps (``num_train_steps``); None keeps the config's.
      data_dir: TFDS data directory.
      crop_size: training crop; None keeps the config's.
      batch_size: training and evaluation batch size; None keeps the config's.
      eval_split: evaluation split (TFDS slicing such as ``"validation[:8]"``).
      self_evaluated: the experiment evaluates the trained models itself (hard-pruned,
        truncated, with its own statistics): the trainer then evaluates once, at the
        end, without spectral statistics.

    Raises:
      ValueError: for an unknown config, model or data set.
    """
    from experiments import paper_values

    if model not in MODEL_NAMES:
        raise ValueError(f"model must be one of {tuple(MODEL_NAMES)}, got {model!r}.")
    if dataset is not None and dataset not in paper_values.PRESET_OF_DATASET:
        raise ValueError(f"dataset must be one of {paper_values.DATASETS}, got {dataset!r}.")
    if config_name not in CONFIG_NAMES:
        raise ValueError(f"config must be one of {CONFIG_NAMES}, got {config_name!r}.")
    if dataset is None:
        config = get_config(config_name)
    elif config_name in ("tiny", "default"):
        config = get_config(config_name)
        config.dataset = paper_values.PRESET_OF_DATASET[dataset]
    else:
        config = get_config(dataset)
    config.model.name = MODEL_NAMES[model]
    if steps is not None:
        config.num_train_steps = int(steps)
    if data_dir is not None:
        config.data_dir = data_dir
    if crop_size is not None:
        config.crop_size = int(crop_size)
    if batch_size is not None:
        config.batch_size = config.eval_batch_size = int(batch_size)
    if eval_split is not None:
        config.eval_split = eval_split
    if self_evaluated:
        config.eval_every_steps = -1
        config.spectral_statistics = False
    config.progress_bar = False
    config.tensorboard = False
    return config


def evaluate_model(
    model,
    variables,
    config: ml_collections.ConfigDict,
    *,
    spectral_statistics: bool = False,
    num_examples: int = 0,
) -> dict[str, Any]:
    """Confusion matrix (and optionally spectral statistics) over the evaluation split.

    Args:
      model: a Flax segmentation model ``[B, H, W, 3] -> [B, H, W, C]``.
      variables: its variables.
      config: gives the data set, split, evaluation crop and batch size.
      spectral_statistics: also accumulate :class:`spectral_jax.SpectralStatistics` of
        the logits (for ``R(nu_max)``).
      num_examples: keep the first ``num_examples`` normalised images ``[N, H, W, 3]``,
        labels ``[N, H, W]`` and predictions ``[N, H, W]``.

    Returns:
      ``{"confusion": [C, C] int64, "iou": [C], "mean_iou": float, "statistics":
      SpectralStatistics or None, "images", "labels", "predictions"}``.
    """
    from spectral_jax.evaluation import metrics
    from spectral_jax.statistics import SpectralStatistics
    from spectral_jax.training import create_input_pipeline

    pipeline = create_input_pipeline(config)
    num_classes = pipeline.num_classes
    apply = jax.jit(functools.partial(model.apply, train=False))
    update = jax.jit(SpectralStatistics.update)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    statistics = None
    kept: dict[str, list[np.ndarray]] = {"images": [], "labels": [], "predictions": []}
    for batch in pipeline.eval_batches(int(config.eval_batch_size), 0, 1):
        images = jnp.asarray(batch["image"])
        labels = jnp.asarray(batch["label"], jnp.int32)
        logits = apply(variables, images)  # [B, H, W, C]
        predictions = jnp.argmax(logits, axis=-1)  # [B, H, W]
        confusion += np.asarray(
            metrics.confusion_matrix(
                predictions, labels, num_classes=num_classes, ignore_index=pipeline.ignore_index
            ),
            np.int64,
        )
        if spectral_statistics:
            if statistics is None:
                statistics = SpectralStatistics.create(
                    labels.shape[1:3], num_classes, ignore_index=pipeline.ignore_index
                )
            statistics = update(statistics, logits.astype(jnp.float32), labels)
        have = sum(len(a) for a in kept["images"])
        if have < num_examples:
            take = num_examples - have
            kept["images"].append(np.asarray(images[:take]))
            kept["labels"].append(np.asarray(labels[:take]))
            kept["predictions"].append(np.asarray(predictions[:take]))
    result = {
        "confusion": confusion,
        "iou": metrics.iou_from_confusion(confusion),
        "mean_iou": metrics.mean_iou(confusion),
        "statistics": statistics,
    }
    for key, arrays in kept.items():
        result[key] = np.concatenate(arrays) if arrays else None
    return result


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
