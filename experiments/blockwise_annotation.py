r"""Experiment 4: training on block-wise annotation (paper Table 3, Fig. 6, Fig. 7).

Launch from the repository root::

  python -m experiments.blockwise_annotation --workdir runs/blockwise_annotation \
      --config experiments/configs/tiny.py --config.num_train_steps=120
  python -m experiments.blockwise_annotation --workdir runs/bw_full \
      --models=deeplab,dan --band_limits=2,4,8     # the full tiny grid (tiny.py's 300 steps)
  python -m experiments.blockwise_annotation --workdir runs/bw_pascal \
      --config experiments/configs/pascal.py       # the paper's setting (GPU/TPU)

Every model is trained on block-wise labels (:func:`spectral_jax.blockwise_annotation_numpy`:
each block of a ``(2 nu_max + 1)``-sized grid takes its majority label, applied to every
training crop, ``config.block_band_limit``) and on the pixel-wise labels, and evaluated on
the pixel-wise validation labels. Relative IoU = mIoU(nu_max) / mIoU(pixel-wise), the
paper's Table 3 (b). Its correlation with ``R(nu_max)`` (Eq. 14) of the pixel-wise trained
model's predictions, the paper's Fig. 6, is reported as Spearman's rank correlation.

Band limits are given on the evaluation grid (the paper's 513 x 513; the tiny config's
129 x 129 scenes, whose highest band is 64, standing for the paper's 256). Training crops
smaller than the evaluation images get the band limit that makes blocks of the same size
in pixels: ``round(nu * crop / eval)`` (tiny: 2 / 4 / 8 on 129 -> 1 / 2 / 4 on the
65-pixel crops, blocks of about 26 / 14 / 8 pixels). Against the paper the tiny band
limits are set beside ``round(nu * 513 / 129)``, i.e. 2 / 4 / 8 beside the paper's
8 / 16 / 32: the same block size relative to the image.

``R(nu_max)`` comes from the pixel-wise run's own predictions on the validation split
(:class:`spectral_jax.SpectralStatistics`), or with ``--from_ce_spectrum DIR`` from
experiment 1's CSV (see :func:`read_ce_spectrum`).

With a config on the embedded data the defaults are DeepLab v3+ only, the three presets
and band limits 2 and 4 plus pixel-wise, 3 seeds each (``--num_seeds``); with 120 steps
(the first command: nine trainings per seed; one preset's three took 10 min wall clock,
55 s of CPU time, on a 2-core CPU) one seed fits in about 10
minutes on 2 CPU cores, three in about three times that. With a paper config: both
models, band limits 8, 16 and 32, the config's data set, one seed.

Every setting is trained with seeds ``config.seed + k`` (:func:`experiments.runs.
train_seeds`); a block-wise run is paired with the pixel-wise run of the same seed. The
report gives mIoU, relative IoU and R as mean ± std with the 95 % t interval of the mean,
and Spearman's rho over the (seed, setting) points with a percentile bootstrap interval
(the defaults give 3 presets x 2 band limits x 3 seeds = 18 points;
``--band_limits=2,4,6,8,10,12`` gives 18 settings), and says which of the paper's
claims the intervals support, contradict or cannot decide.

Writes ``report.md``, ``blockwise_annotation.csv`` (per seed), ``blockwise_spread.csv``
(over seeds), ``correlation.csv``,
``relative_iou_vs_r.png``, ``examples.png`` with its arrays ``examples_<dataset>.npz``,
``blockwise_<model>_<dataset>.png`` (the figure of each model's and data set's section,
:func:`model_section`, as the demo's), and one training directory per setting and seed; rerunning resumes (finished runs are
read back from ``run.json``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np
from absl import flags

from experiments import cli, paper_values, runs
from experiments.report import (
    Report,
    claim_line,
    colour_labels,
    format_spread,
    log,
    pyplot,
    write_csv,
)
from experiments.runs import MODEL_TITLES
from spectral_jax.blockwise import blockwise_annotation_numpy
from spectral_jax.data import dataset_info
from spectral_jax.evaluation import (
    CONFIDENCE,
    RankCorrelation,
    Spread,
    bootstrap_spearman,
    compute_spread,
    spearman_correlation,
)

PAPER_INPUT_SIZE = 513
#: Examples per data set in Fig. 7.
NUM_EXAMPLES = 2
PIXELWISE = "pixel"


# --------------------------------------------------------------------------------------
# Settings.


def training_band_limit(band_limit: int, *, crop_size: int, eval_size: int) -> int:
    """The band limit on the training crop whose blocks have the size of ``band_limit``'s.

    ``band_limit`` is given on the ``eval_size`` grid; blocks there are ``eval_size /
    (2 nu + 1)`` pixels, so the crop's band limit is ``round(nu * crop / eval)`` (at
    least 1; unchanged when the sizes agree).

    Example:
      >>> [training_band_limit(nu, crop_size=65, eval_size=129) for nu in (2, 4, 8)]
      [1, 2, 4]
    """
    if band_limit < 1:
        raise ValueError(f"band_limit must be positive, got {band_limit}.")
    if crop_size == eval_size:
        return int(band_limit)
    return max(1, round(band_limit * crop_size / eval_size))


def paper_band_limit(band_limit: int | str, eval_size: int) -> int | None:
    """The paper's band limit (513 grid) with the same relative block size, if in Table 3."""
    if band_limit == PIXELWISE:
        return 256
    nu = round(int(band_limit) * PAPER_INPUT_SIZE / eval_size)
    return nu if nu in paper_values.TABLE3_BAND_LIMITS else None


def read_ce_spectrum(directory: pathlib.Path) -> dict[tuple[str, str, int], float]:
    """``R(nu_max)`` of trained models from experiment 1's CSV files in ``directory``.

    Reads every ``*.csv`` with a model column (``model``), a data set column
    (``dataset`` or ``preset``; the paper's names or ``synthetic_scenes/<preset>``), a
    band-limit column (``band_limit``, ``nu_max`` or ``band``) and a value column
    (``relative_discrepancy`` or ``R``); with a ``stage`` column only the trained rows
    (``trained``/``final``/``after``) are kept. ``experiments.ce_spectrum`` writes
    ``profiles.csv`` (every band) and ``table1.csv`` in this form.

    Returns:
      ``{(model, dataset, band_limit): R}`` with ``model`` in ``deeplab``/``dan`` and
      ``dataset`` the paper's name; rows of several seeds (a ``seed`` column) are
      averaged.

    Raises:
      ValueError: naming ``directory`` if no file has these columns.
    """
    presets = {v: k for k, v in paper_values.PRESET_OF_DATASET.items()}
    presets.update({v.split("/")[1]: k for k, v in paper_values.PRESET_OF_DATASET.items()})
    models = {"deeplab": "deeplab", "deeplabv3plus": "deeplab", "dan": "dan"}
    values = {}
    for path in sorted(pathlib.Path(directory).glob("*.csv")):
        with open(path, newline="") as file:
            for row in csv.DictReader(file):
                model = models.get(row.get("model", "").lower())
                dataset = row.get("dataset") or row.get("preset") or ""
                dataset = presets.get(dataset, dataset)
                band = row.get("band_limit") or row.get("nu_max") or row.get("band")
                value = row.get("relative_discrepancy") or row.get("R")
                stage = row.get("stage", "trained").lower()
                if model is None or dataset not in paper_values.DATASETS or not band or not value:
                    continue
                if not any(word in stage for word in ("trained", "final", "after")):
                    continue
                seed = row.get("seed", "")
                values.setdefault((model, dataset, int(float(band))), {})[seed] = float(value)
    if not values:
        raise ValueError(
            f"--from_ce_spectrum: no CSV in {directory} has model, dataset, band_limit and "
            "relative_discrepancy columns."
        )
    return {key: float(np.mean(list(by_seed.values()))) for key, by_seed in values.items()}


# --------------------------------------------------------------------------------------
# One training run.


def _run_name(model: str, dataset: str, band_limit: int | str) -> str:
    suffix = "pixelwise" if band_limit == PIXELWISE else f"nu{band_limit}"
    return f"{model}_{dataset}_{suffix}"


def run_setting(
    config: ml_collections.ConfigDict,
    *,
    model: str,
    dataset: str,
    band_limit: int | str,
    workdir: pathlib.Path,
    num_seeds: int,
) -> list[dict[str, Any]]:
    """Trains on the labels at ``band_limit`` (or pixel-wise) with ``num_seeds`` seeds and
    evaluates each; cached per seed.

    Trains through :func:`experiments.runs.train_seeds`. The pixel-wise runs also record
    ``R(nu_max)`` of their predictions at every band limit. Returns one ``run.json`` dict
    per seed (``seed``, ``run_dir`` relative to the experiment's directory); each seed's
    example images, labels and predictions go to its ``examples.npz``.

    Args:
      config: the training config (``--config``); the run sets the model, the data set
        and the block-wise band limit of a copy.
      workdir: the setting's directory (one sub-directory per seed).
      num_seeds: the seeds ``config.seed + k``.
    """
    config = runs.experiment_config(config, model=model, dataset=dataset, self_evaluated=True)
    eval_size = int(config.eval_crop_size)
    train_band_limit = None
    if band_limit != PIXELWISE:
        train_band_limit = training_band_limit(
            int(band_limit), crop_size=int(config.crop_size), eval_size=eval_size
        )
    config.block_band_limit = train_band_limit
    seed_runs = runs.train_seeds(config, workdir, num_seeds=num_seeds)
    trained_model = runs.create_model(config)
    pixelwise = band_limit == PIXELWISE
    results = []
    for k, summary in enumerate(seed_runs.summaries):
        seed_dir = seed_runs.seed_workdir(k)
        run_path = seed_dir / "run.json"
        if run_path.exists():
            results.append(json.loads(run_path.read_text()))
            continue
        result = runs.evaluate_model(
            trained_model,
            seed_runs.variables(k),
            config,
            spectral_statistics=pixelwise,
            num_examples=NUM_EXAMPLES,
        )
        np.savez_compressed(
            seed_dir / "examples.npz",
            images=result.examples["image"],
            labels=result.examples["label"],
            predictions=result.examples["prediction"],
        )
        run = {
            "model": model,
            "dataset": dataset,
            "data": str(config.dataset),
            "band_limit": band_limit,
            "seed": seed_runs.seeds[k],
            "run_dir": f"{workdir.name}/{seed_dir.name}",
            "train_band_limit": train_band_limit,
            "crop_size": int(config.crop_size),
            "eval_size": eval_size,
            "steps": summary["steps"],
            "mean_iou": float(result.mean_iou),
            "iou": [None if np.isnan(v) else float(v) for v in result.iou],
            "mean": list(map(float, dataset_info(config.dataset).mean)),
            "std": list(map(float, dataset_info(config.dataset).std)),
        }
        if pixelwise:
            statistics = result.statistics
            run["relative_discrepancy"] = np.asarray(
                statistics.relative_discrepancy_curve()
            ).tolist()
        run_path.write_text(json.dumps(run, indent=2))
        results.append(run)
    return results


# --------------------------------------------------------------------------------------
# Tables.


def table_rows(
    runs: Sequence[dict[str, Any]],
    r_values: dict[tuple[str, str, int], float] | None = None,
) -> list[dict[str, Any]]:
    """One CSV row per run (seed): mIoU, relative IoU, ``R(nu_max)`` and the paper's values.

    A block-wise run is paired with the pixel-wise run of the same model, data set and
    seed: relative IoU = its mIoU / theirs, and ``R`` is read from ``r_values``
    (experiment 1) when given, else from that pixel-wise run's ``relative_discrepancy``
    (indexed by the band limit).
    """
    pixelwise = {
        (r["model"], r["dataset"], r.get("seed", 0)): r
        for r in runs
        if r["band_limit"] == PIXELWISE
    }
    rows = []
    for run in runs:
        key = (run["model"], run["dataset"])
        base = pixelwise.get((*key, run.get("seed", 0)))
        band = run["band_limit"]
        paper_band = paper_band_limit(band, run["eval_size"])
        r_value = 0.0 if band == PIXELWISE else None
        if band != PIXELWISE:
            if r_values is not None:
                r_value = r_values.get((*key, int(band)))
            elif base is not None and int(band) < len(base["relative_discrepancy"]):
                r_value = base["relative_discrepancy"][int(band)]
        row = {
            "model": run["model"],
            "dataset": run["dataset"],
            "data": run["data"],
            "band_limit": band,
            "seed": run.get("seed", 0),
            "train_band_limit": run["train_band_limit"],
            "crop_size": run["crop_size"],
            "eval_size": run["eval_size"],
            "steps": run["steps"],
            "mean_iou": run["mean_iou"],
            "mean_iou_pixelwise": None if base is None else base["mean_iou"],
            "relative_iou": None if base is None else run["mean_iou"] / base["mean_iou"],
            "relative_discrepancy": r_value,
            "paper_band_limit": paper_band,
            "paper_mean_iou": None,
            "paper_relative_iou": None,
            "paper_relative_discrepancy": None,
        }
        if paper_band is not None:
            index = paper_values.TABLE3_BAND_LIMITS.index(paper_band)
            row["paper_mean_iou"] = paper_values.TABLE3_MIOU[run["model"]][run["dataset"]][index]
            row["paper_relative_iou"] = paper_values.table3_relative_miou(*key, paper_band)
            row["paper_relative_discrepancy"] = paper_values.table1_relative_discrepancy(
                *key, paper_band
            )
        rows.append(row)
    return rows


def _band_order(band) -> float:
    return np.inf if band == PIXELWISE else int(band)


def spread_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, data set and band limit: the spreads over seeds of :func:`table_rows`.

    Returns:
      Rows with the setting's columns, ``seeds``, the paper's values and the
      :class:`~spectral_jax.evaluation.Spread` columns of ``mean_iou``, ``relative_iou``
      and ``relative_discrepancy`` (absent where a seed lacks the value).
    """
    settings: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        settings.setdefault((row["model"], row["dataset"], row["band_limit"]), []).append(row)
    result = []
    for (model, dataset, band), group in sorted(
        settings.items(), key=lambda item: (item[0][0], item[0][1], _band_order(item[0][2]))
    ):
        first = group[0]
        row = {
            "model": model,
            "dataset": dataset,
            "data": first["data"],
            "band_limit": band,
            "eval_size": first["eval_size"],
            "seeds": " ".join(str(r["seed"]) for r in group),
        }
        for name in ("mean_iou", "relative_iou", "relative_discrepancy"):
            values = [r[name] for r in group]
            if all(v is not None for v in values):
                row.update(compute_spread(values).columns(name))
        for name in ("paper_band_limit", "paper_mean_iou", "paper_relative_iou"):
            row[name] = first[name]
        row["paper_relative_discrepancy"] = first["paper_relative_discrepancy"]
        result.append(row)
    return result


def correlation_rows(
    rows: Sequence[dict[str, Any]], *, bootstrap_seed: int = 0, resamples: int = 10_000
) -> list[dict[str, Any]]:
    """Spearman's rho of relative IoU vs ``R(nu_max)`` with percentile bootstrap intervals:
    ours over the block-wise runs (one point per seed and setting), and the paper's (Table
    3 (b) vs Table 1 at 8 / 16 / 32, both models, three data sets: 18 points).

    Returns:
      Rows ``source``, ``group`` (``all`` or a model), ``points`` and the columns of
      :meth:`~spectral_jax.evaluation.RankCorrelation.columns` named ``spearman``
      (``spearman``, ``spearman_ci_low``, ``spearman_ci_high``, ...).
    """
    weak = [
        r
        for r in rows
        if r["band_limit"] != PIXELWISE
        and r["relative_iou"] is not None
        and r["relative_discrepancy"] is not None
    ]
    groups = {"all": weak}
    for model in sorted({r["model"] for r in weak}):
        groups[model] = [r for r in weak if r["model"] == model]
    paper = _paper_points()
    points = {
        ("ours", name): (
            [r["relative_discrepancy"] for r in group],
            [r["relative_iou"] for r in group],
        )
        for name, group in groups.items()
        if len(group) >= 2
    }
    points["paper", "all"] = ([p[3] for p in paper], [p[4] for p in paper])
    result = []
    for (source, group), (x, y) in points.items():
        correlation = bootstrap_spearman(
            x, y, rng=np.random.default_rng(bootstrap_seed), resamples=resamples
        )
        result.append(
            {"source": source, "group": group, "points": len(x)} | correlation.columns("spearman")
        )
    return result


def _paper_points() -> list[tuple[str, str, int, float, float]]:
    """``(model, dataset, nu, R(nu), relative mIoU(nu))`` of Tables 1 and 3 at 8 / 16 / 32."""
    return [
        (
            model,
            dataset,
            nu,
            paper_values.table1_relative_discrepancy(model, dataset, nu),
            paper_values.table3_relative_miou(model, dataset, nu),
        )
        for model in paper_values.MODELS
        for dataset in paper_values.DATASETS
        for nu in (8, 16, 32)
    ]


def paper_spearman() -> float:
    """Spearman's rho of the paper's 18 points (:func:`_paper_points`), R against relative mIoU."""
    points = _paper_points()
    return spearman_correlation([p[3] for p in points], [p[4] for p in points])


# --------------------------------------------------------------------------------------
# Figures.


def plot_scatter(rows: Sequence[dict[str, Any]]):
    """Fig. 6: relative IoU against ``R(nu_max)``, ours and the paper's."""
    plt = pyplot()
    # matplotlib is an optional extra (`plot`), imported with the first figure.
    import matplotlib.ticker

    figure, (ours, paper) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    markers = {"pascal": "o", "deepglobe": "s", "cityscapes": "^"}
    weak = [
        r
        for r in rows
        if r["band_limit"] != PIXELWISE and r["relative_discrepancy"] and r["relative_iou"]
    ]
    bands = sorted({int(r["band_limit"]) for r in weak})
    cmap = plt.get_cmap("viridis")
    colors = {nu: cmap(i / max(1, len(bands) - 1)) for i, nu in enumerate(bands)}
    for r in weak:
        ours.scatter(
            r["relative_discrepancy"],
            r["relative_iou"],
            marker=markers[r["dataset"]],
            color=colors[int(r["band_limit"])],
            edgecolors="black" if r["model"] == "dan" else "none",
            s=60,
        )
    paper_colors = {8: cmap(0.0), 16: cmap(0.5), 32: cmap(1.0)}
    for model, dataset, nu, r_value, relative_iou in _paper_points():
        paper.scatter(
            r_value,
            relative_iou,
            marker=markers[dataset],
            color=paper_colors[nu],
            edgecolors="black" if model == "dan" else "none",
            s=60,
        )
    handles = [
        plt.Line2D([], [], marker=m, linestyle="", color="gray", label=d)
        for d, m in markers.items()
    ]
    for axis, colour_map, title in (
        (ours, colors, f"ours ({weak[0]['eval_size'] if weak else '?'} px grid)"),
        (paper, paper_colors, "paper (Table 3 b vs Table 1, 513 px)"),
    ):
        axis.set_xscale("log")
        # Less than a decade of data gets no labelled major tick: label the minor ones,
        # plainly (matplotlib's default writes them as crowded powers of ten).
        low, high = axis.get_xlim()
        plain = matplotlib.ticker.FormatStrFormatter("%.3g")
        axis.xaxis.set_minor_formatter(
            plain if high / low < 10 else matplotlib.ticker.NullFormatter()
        )
        axis.xaxis.set_major_formatter(plain)
        axis.tick_params(axis="x", which="minor", labelsize=7)
        axis.set_xlabel(r"$R(\nu_{max})$ of the pixel-wise trained model")
        axis.set_ylabel("relative IoU")
        axis.set_title(title + "; black edge: DAN")
        band_handles = [
            plt.Line2D([], [], marker="o", linestyle="", color=c, label=rf"$\nu_{{max}}$={nu}")
            for nu, c in colour_map.items()
        ]
        axis.legend(handles=handles + band_handles, fontsize=8)
        axis.grid(alpha=0.3)
    return figure


def example_arrays(
    runs: Sequence[dict[str, Any]], workdir: pathlib.Path, dataset: str, band_limits
) -> dict[str, np.ndarray]:
    """Fig. 7's arrays for ``dataset``: images ``[N, H, W, 3]`` in ``[0, 1]``, pixel-wise
    labels ``[N, H, W]``, block-wise labels ``blockwise_<nu>`` on the evaluation grid and
    predictions ``prediction_<model>_<nu|pixel>`` of the first seed's models."""
    selected = [r for r in runs if r["dataset"] == dataset]
    first_seed = min(r["seed"] for r in selected)
    selected = [r for r in selected if r["seed"] == first_seed]  # Fig. 7 shows one seed
    first = selected[0]
    with np.load(workdir / first["run_dir"] / "examples.npz") as f:
        images, labels = f["images"], f["labels"]
    num_classes = len(first["iou"])
    arrays = {
        "images": np.clip(images * np.asarray(first["std"]) + np.asarray(first["mean"]), 0, 1),
        "labels": labels,
    }
    for nu in band_limits:
        arrays[f"blockwise_{nu}"] = blockwise_annotation_numpy(
            labels, int(nu), num_classes=num_classes
        )
    for run in selected:
        with np.load(workdir / run["run_dir"] / "examples.npz") as f:
            arrays[f"prediction_{run['model']}_{run['band_limit']}"] = f["predictions"]
    return arrays


def plot_examples(examples: dict[str, dict[str, np.ndarray]], band_limits, models):
    """Fig. 7: per data set, the image, labels at every band limit and the predictions."""
    columns = [("image", None)]
    columns += [(f"labels, $\\nu$={nu}", f"blockwise_{nu}") for nu in band_limits]
    columns.append(("labels, pixel-wise", "labels"))
    rows = []
    for dataset, arrays in examples.items():
        rows.append((dataset, "labels", arrays))
        for model in models:
            rows.append((dataset, model, arrays))
    figure, axes = pyplot().subplots(
        len(rows),
        len(columns),
        figsize=(1.9 * len(columns), 1.9 * len(rows)),
        squeeze=False,
        constrained_layout=True,
    )
    for (dataset, kind, arrays), axis_row in zip(rows, axes, strict=True):
        num_classes = int(max(arrays["labels"][arrays["labels"] != 255].max(initial=0) + 1, 2))
        for key in arrays:
            if key.startswith("prediction_"):
                num_classes = max(num_classes, int(arrays[key].max()) + 1)
        for (title, key), axis in zip(columns, axis_row, strict=True):
            axis.set_xticks([])
            axis.set_yticks([])
            if kind == "labels":
                image = (
                    arrays["images"][0]
                    if key is None
                    else colour_labels(arrays[key][0], num_classes)
                )
                axis.set_title(title, fontsize=8)
            else:
                band = "pixel" if key == "labels" else (key.split("_")[1] if key else None)
                pred_key = f"prediction_{kind}_{band}"
                if key is None or pred_key not in arrays:
                    axis.axis("off")
                    if key is None:
                        text = f"{MODEL_TITLES[kind]}\npredictions"
                        axis.text(0.5, 0.5, text, ha="center", va="center", fontsize=8)
                    continue
                image = colour_labels(arrays[pred_key][0], num_classes)
            axis.imshow(image, interpolation="nearest")
            if key is None and kind == "labels":
                axis.set_ylabel(dataset, fontsize=8)
    return figure


# --------------------------------------------------------------------------------------
# Report.


def _fmt_band(band, eval_size) -> str:
    return f"pixel-wise ({(eval_size - 1) // 2})" if band == PIXELWISE else str(band)


def _claims(correlations: Sequence[dict[str, Any]]) -> str:
    """What the intervals say of Fig. 6's claim over the pooled runs, one line per group.

    (Table 3's claims, per setting, are in each cell's :func:`model_section`.)
    """
    lines = ["What the intervals say of the paper's Fig. 6 over the pooled runs:"]
    for row in correlations:
        if row["source"] != "ours":
            continue
        lines.append(
            claim_line(
                f"Fig. 6 ({row['group']}): the larger R(ν_max), the lower the relative IoU "
                "(Spearman's rho below 0)",
                _correlation_from_columns(row, "spearman"),
                reference=0.0,
                expected="below",
            )
        )
    return "\n".join(lines)


def _spread_from_columns(row: dict[str, Any], name: str) -> Spread:
    """The :class:`~spectral_jax.evaluation.Spread` whose :meth:`columns` ``row`` holds."""
    return Spread(
        mean=row[f"{name}_mean"],
        std=row[f"{name}_std"],
        low=row[f"{name}_ci_low"],
        high=row[f"{name}_ci_high"],
        n=row[f"{name}_n"],
        confidence=CONFIDENCE,
        values=(),
    )


def _correlation_from_columns(row: dict[str, Any], name: str) -> RankCorrelation:
    """The :class:`~spectral_jax.evaluation.RankCorrelation` whose columns ``row`` holds."""
    return RankCorrelation(
        rho=row[name],
        low=row[f"{name}_ci_low"],
        high=row[f"{name}_ci_high"],
        n=row[f"{name}_points"],
        confidence=CONFIDENCE,
        resamples=row[f"{name}_resamples"],
        defined=row[f"{name}_resamples"],
    )


def _cell(row: dict[str, Any], name: str, digits: int = 3) -> str:
    if f"{name}_mean" not in row:
        return "-"
    return format_spread(_spread_from_columns(row, name), digits)


def write_report(
    workdir: pathlib.Path,
    rows: Sequence[dict[str, Any]],
    spreads: Sequence[dict[str, Any]],
    correlations: Sequence[dict[str, Any]],
    *,
    config_file: str,
    from_ce_spectrum: str | None,
    figures: dict[str, Any],
    examples: dict[str, dict[str, np.ndarray]],
) -> pathlib.Path:
    """``report.md``: Table 3 per model, then per model and data set the demo's
    :func:`model_section` (:func:`cell_blockwise`), Fig. 6 and Fig. 7.

    Args:
      examples: per data set, :func:`example_arrays` (the sections show scene 0's labels).
    """
    report = Report(workdir, "Block-wise annotation (Table 3, Fig. 6, Fig. 7)")
    first = rows[0]
    num_seeds = max(r["relative_iou_n"] for r in spreads if "relative_iou_n" in r)
    train_bands = sorted(
        {(r["band_limit"], r["train_band_limit"]) for r in rows if r["band_limit"] != PIXELWISE}
    )
    report.paragraph(
        f"Config `{config_file}`, {first['steps']} training steps per run, "
        f"{num_seeds} seed(s) per setting, "
        f"{first['crop_size']}-pixel training crops, evaluation on the pixel-wise labels of "
        f"the {first['eval_size']} x {first['eval_size']} validation images. Band limits "
        f"nu_max on the {first['eval_size']}-pixel evaluation grid (training crops: "
        + ", ".join(f"{nu} -> {t}" for nu, t in train_bands)
        + "); the paper's columns are at the band limit with the same block size relative "
        "to the image (`round(nu * 513 / eval size)`). R(nu_max) is "
        + (
            f"read from `{from_ce_spectrum}` (experiment 1)."
            if from_ce_spectrum
            else "that of the pixel-wise trained model's predictions on the validation split."
        )
        + " Every number of ours is the mean ± std over the seeds with the 95 % t interval "
        "of the mean; a block-wise run is paired with the pixel-wise run of the same seed."
    )
    header = [
        "data set",
        "nu_max",
        "paper nu_max",
        "mIoU",
        "paper mIoU",
        "relative IoU",
        "paper relative IoU",
        "R(nu_max)",
        "paper R(nu_max)",
    ]
    first_cell = True
    for model in sorted({r["model"] for r in spreads}):
        report.heading(f"{MODEL_TITLES[model]}: Table 3 (a) mIoU and (b) relative IoU")
        report.table(
            header,
            [
                (
                    f"{r['dataset']} ({r['data'].split('/')[-1]})",
                    _fmt_band(r["band_limit"], r["eval_size"]),
                    r["paper_band_limit"],
                    _cell(r, "mean_iou"),
                    r["paper_mean_iou"],
                    _cell(r, "relative_iou"),
                    r["paper_relative_iou"],
                    _cell(r, "relative_discrepancy", 4),
                    r["paper_relative_discrepancy"],
                )
                for r in spreads
                if r["model"] == model
            ],
        )
        for dataset in sorted({r["dataset"] for r in rows if r["model"] == model}):
            cell = [r for r in rows if (r["model"], r["dataset"]) == (model, dataset)]
            model_section(
                report,
                cell_blockwise(rows, model=model, dataset=dataset),
                examples[dataset]["labels"][0],
                heading=f"{MODEL_TITLES[model]} on {dataset} ({cell[0]['data']})",
                num_classes=dataset_info(cell[0]["data"]).num_classes,
                model=model,
                dataset=dataset,
                paper_band_limits={
                    r["band_limit"]: r["paper_band_limit"]
                    for r in cell
                    if r["band_limit"] != PIXELWISE
                },
                figure=f"blockwise_{model}_{dataset}.png",
                level=3,
                explain=first_cell,
            )
            first_cell = False
    report.heading("Correlation of relative IoU with R(nu_max) (Fig. 6)")
    report.paragraph(
        "Spearman's rank correlation over the block-wise runs, one point per seed and "
        "setting (pixel-wise runs left out: their relative IoU is 1 by definition), with a "
        "95 % percentile bootstrap interval over the points (10 000 resamples). The paper's "
        "is computed from its Table 3 (b) and Table 1 at 8 / 16 / 32 (both models, three "
        "data sets: 18 points). A negative value: the larger R(nu_max), the lower the "
        "relative IoU. Few points give a wide interval: `--band_limits=2,4,6,8,10,12` on "
        "the three presets makes 18 settings."
    )
    report.table(
        ["source", "runs", "points", "Spearman rho"],
        [
            (
                c["source"],
                c["group"],
                c["points"],
                format_spread(_correlation_from_columns(c, "spearman")),
            )
            for c in correlations
        ],
    )
    report.paragraph(_claims(correlations))
    report.figure(
        figures["scatter"],
        "relative_iou_vs_r.png",
        "Fig. 6: relative IoU against R(nu_max), ours (left, one point per seed) and the "
        "paper's (right).",
    )
    report.figure(
        figures["examples"],
        "examples.png",
        "Fig. 7: a validation image per data set, its block-wise labels at each band limit "
        "and the pixel-wise labels (first row), and the predictions of the model trained "
        "on each (rows below; the first seed's models).",
    )
    report.heading("Differences from the paper")
    report.paragraph(_differences(rows, spreads))
    return report.write()


def _differences(rows: Sequence[dict[str, Any]], spreads: Sequence[dict[str, Any]]) -> str:
    """The differences paragraph, with this run's numbers."""
    lines = [
        "The paper trains ResNet-101 models for 100-600 epochs on the real data sets at "
        f"513 x 513; ours are the tiny models trained from scratch for {rows[0]['steps']} "
        "steps on the generated 129 x 129 scenes, so the absolute mIoU is far lower (an "
        "undertrained pixel-wise model can even be beaten by a block-wise one: relative "
        "IoU above 1); the intervals above say which differences the seeds resolve. The "
        "generated scenes are not the paper's images: their label spectra only mimic the "
        "order of the three data sets (street scenes most high-frequency, land cover least).",
    ]
    weak = [r for r in spreads if r["band_limit"] != PIXELWISE and "relative_discrepancy_mean" in r]
    for band in sorted({int(r["band_limit"]) for r in weak}):
        at_band = sorted(
            (r for r in weak if int(r["band_limit"]) == band),
            key=lambda r: -r["relative_discrepancy_mean"],
        )
        lines.append(
            f"At nu_max = {band} the mean R(nu_max) over seeds orders the settings "
            + " > ".join(
                f"{r['model']}/{r['dataset']} {r['relative_discrepancy_mean']:.3g}" for r in at_band
            )
            + "."
        )
    lines.append(
        "R(nu_max) here is that of the tiny, undertrained models' own predictions and a "
        "ratio to their total CE: a model with a small total CE whose remaining errors lie "
        "along boundaries (above a low band limit) gets a large R, whatever the labels' "
        "spectra, so the order across presets need not follow Table 1's (nor the label "
        "spectra documented in `spectral_jax.data.synthetic`); we have not separated these "
        "effects. The rank correlation, not the values, is what can carry over. Paper: "
        "`experiments/paper_values.py`; ours: `blockwise_annotation.csv` (per seed), "
        "`blockwise_spread.csv` (over seeds), `correlation.csv`."
    )
    return " ".join(lines)


# --------------------------------------------------------------------------------------
# One model trained on block-wise labels at a few band limits (the demo).


def evaluation_band_limit(band_limit: int, *, crop_size: int, eval_size: int) -> int:
    """The band limit on the ``eval_size`` grid of blocks as large as ``band_limit``'s on the crop.

    The inverse of :func:`training_band_limit`: ``round(nu * eval / crop)``.

    Example:
      >>> [evaluation_band_limit(nu, crop_size=65, eval_size=129) for nu in (4, 8)]
      [8, 16]
    """
    return int(round(band_limit * eval_size / crop_size))


@dataclasses.dataclass(frozen=True)
class BlockwiseSetting:
    """The block-wise runs of one band limit, paired by seed with the pixel-wise runs.

    Attributes:
      band_limit: on the training crop.
      eval_band_limit: the same blocks' band limit on the evaluation scene.
      mean_iou_per_seed: ``[S]`` validation mIoU of the block-wise runs.
      relative_mean_iou_per_seed: ``[S]`` mIoU over the pixel-wise run's of the same seed.
      relative_discrepancy_per_seed: ``[S]`` R(eval_band_limit) of the pixel-wise model of
        the same seed.
    """

    band_limit: int
    eval_band_limit: int
    mean_iou_per_seed: list[float]
    relative_mean_iou_per_seed: list[float]
    relative_discrepancy_per_seed: list[float]

    def to_json(self) -> dict[str, Any]:
        """The fields, their means over seeds and their :class:`Spread` columns."""
        record = {
            **dataclasses.asdict(self),
            "mean_iou": float(np.mean(self.mean_iou_per_seed)),
            "relative_mean_iou": float(np.mean(self.relative_mean_iou_per_seed)),
            "relative_discrepancy": float(np.mean(self.relative_discrepancy_per_seed)),
        }
        record.update(compute_spread(self.mean_iou_per_seed).columns("mean_iou"))
        record.update(compute_spread(self.relative_mean_iou_per_seed).columns("relative_mean_iou"))
        record.update(
            compute_spread(self.relative_discrepancy_per_seed).columns("relative_discrepancy")
        )
        return record


@dataclasses.dataclass(frozen=True)
class ModelBlockwise:
    """One model trained on block-wise labels at a few band limits, over seeds
    (:func:`model_blockwise`).

    Attributes:
      settings: one per block-wise band limit.
      pixelwise_mean_iou: ``[S]`` mIoU of the same training on the pixel-wise labels.
      correlation: Spearman's rho of the (R, relative mIoU) points of every seed and band
        limit with its bootstrap interval; None for fewer than two points.
      crop_size: the training crop.
    """

    settings: list[BlockwiseSetting]
    pixelwise_mean_iou: list[float]
    correlation: RankCorrelation | None
    crop_size: int

    def to_json(self) -> dict[str, Any]:
        """``records`` (per setting), ``pixelwise`` (the mIoU's spread columns), ``correlation``."""
        pixel_spread = compute_spread(self.pixelwise_mean_iou)
        return {
            "records": [setting.to_json() for setting in self.settings],
            "pixelwise": {
                "mean_iou_per_seed": self.pixelwise_mean_iou,
                **pixel_spread.columns("mean_iou"),
            },
            "correlation": None
            if self.correlation is None
            else self.correlation.columns("spearman"),
        }


def model_blockwise(
    weak_mean_iou: dict[int, Sequence[float]],
    pixelwise_mean_iou: Sequence[float],
    relative_discrepancy: Sequence[np.ndarray],
    *,
    crop_size: int,
    eval_size: int,
    bootstrap_seed: int = 0,
) -> ModelBlockwise:
    """DeepLab v3+ trained on block-wise labels beside the pixel-wise model, over seeds.

    Seed ``k`` of every block-wise setting is paired with seed ``k`` of the pixel-wise
    training: relative mIoU ``mIoU_k(nu) / mIoU_k(pixel-wise)`` and ``R_k(nu)`` of the
    pixel-wise model of seed ``k``.

    Args:
      weak_mean_iou: ``{band limit on the crop: [S] mIoU}`` of the block-wise runs.
      pixelwise_mean_iou: ``[S]`` mIoU of the same training on the pixel-wise labels.
      relative_discrepancy: ``S`` arrays ``[R]``: R(nu_max) of each pixel-wise model on
        the validation scenes.
      crop_size: the training crop.
      eval_size: the side of the evaluation scenes.
      bootstrap_seed: of the bootstrap of the rank correlation.
    """
    pixelwise = list(map(float, pixelwise_mean_iou))
    settings = []
    for band_limit, weak in weak_mean_iou.items():
        nu = evaluation_band_limit(band_limit, crop_size=crop_size, eval_size=eval_size)
        relative = [w / p for w, p in zip(weak, pixelwise, strict=True)]
        r_values = [float(r[nu]) for r in relative_discrepancy]
        settings.append(
            BlockwiseSetting(band_limit, nu, list(map(float, weak)), relative, r_values)
        )
    return ModelBlockwise(
        settings, pixelwise, _settings_correlation(settings, bootstrap_seed), crop_size
    )


def _settings_correlation(
    settings: Sequence[BlockwiseSetting], bootstrap_seed: int
) -> RankCorrelation | None:
    """Spearman's rho of the settings' (R, relative mIoU) points of every seed (finite R)."""
    points = [
        (r, y)
        for s in settings
        for r, y in zip(s.relative_discrepancy_per_seed, s.relative_mean_iou_per_seed, strict=True)
        if np.isfinite(r) and np.isfinite(y)
    ]
    if len(points) < 2:
        return None
    x, y = zip(*points, strict=True)
    return bootstrap_spearman(list(x), list(y), rng=np.random.default_rng(bootstrap_seed))


def cell_blockwise(
    rows: Sequence[dict[str, Any]], *, model: str, dataset: str, bootstrap_seed: int = 0
) -> ModelBlockwise:
    """The experiment's runs of one model and data set (:func:`table_rows`) as the demo's
    :class:`ModelBlockwise`.

    Each block-wise band limit (on the evaluation grid) becomes a
    :class:`BlockwiseSetting` with its training band limit, and its per-seed mIoU, relative
    IoU and ``R(nu_max)`` of the rows (a missing value as NaN), seeds in the rows' order;
    the correlation is over the cell's points only (the experiment's
    ``correlation.csv`` pools the cells).

    Raises:
      ValueError: if the rows hold no pixel-wise run of ``model`` on ``dataset``.
    """
    selected = [r for r in rows if (r["model"], r["dataset"]) == (model, dataset)]
    pixelwise = [r for r in selected if r["band_limit"] == PIXELWISE]
    if not pixelwise:
        raise ValueError(f"no pixel-wise run of model {model!r} on dataset {dataset!r}.")

    def value(v) -> float:
        return math.nan if v is None else float(v)

    settings = []
    for band in sorted({r["band_limit"] for r in selected} - {PIXELWISE}, key=int):
        at_band = [r for r in selected if r["band_limit"] == band]
        settings.append(
            BlockwiseSetting(
                band_limit=int(at_band[0]["train_band_limit"]),
                eval_band_limit=int(band),
                mean_iou_per_seed=[value(r["mean_iou"]) for r in at_band],
                relative_mean_iou_per_seed=[value(r["relative_iou"]) for r in at_band],
                relative_discrepancy_per_seed=[value(r["relative_discrepancy"]) for r in at_band],
            )
        )
    return ModelBlockwise(
        settings,
        [float(r["mean_iou"]) for r in pixelwise],
        _settings_correlation(settings, bootstrap_seed),
        int(pixelwise[0]["crop_size"]),
    )


def _plot_model(
    settings: Sequence[BlockwiseSetting],
    labels: np.ndarray,
    num_classes: int,
    *,
    model: str,
    dataset: str,
):
    """Block-wise labels of one scene at each band limit, and relative mIoU against R."""
    plt = pyplot()
    figure, axes = plt.subplots(
        1, 2 + len(settings), figsize=(3 * (3 + len(settings)), 3), layout="constrained"
    )
    axes[0].imshow(colour_labels(labels, num_classes))
    axes[0].set_title("pixel-wise")
    for axis, setting in zip(axes[1:], settings, strict=False):
        nu = setting.eval_band_limit
        weak = blockwise_annotation_numpy(labels, nu, num_classes=num_classes)
        axis.imshow(colour_labels(weak, num_classes))
        axis.set_title(f"block-wise, ν_max {nu}")
    for axis in axes[:-1]:
        axis.set_axis_off()
    scatter = axes[-1]
    x = [v for s in settings for v in s.relative_discrepancy_per_seed]
    y = [v for s in settings for v in s.relative_mean_iou_per_seed]
    scatter.plot(x, y, "o", alpha=0.6, label="ours (one point per seed)")
    paper = [(x, y) for m, d, _, x, y in _paper_points() if (m, d) == (model, dataset)]
    label = f"paper, {dataset.upper()}" if model == "deeplab" else f"paper, DAN, {dataset}"
    scatter.plot(*zip(*paper, strict=True), "s", mfc="none", label=label)
    scatter.set(xscale="log", xlabel="R(ν_max)", ylabel="relative mIoU")
    scatter.xaxis.set_minor_formatter(plt.NullFormatter())
    scatter.legend(fontsize="small")
    scatter.grid(True, which="both", alpha=0.3)
    return figure


def model_section(
    report: Report,
    result: ModelBlockwise,
    labels: np.ndarray,
    *,
    heading: str,
    num_classes: int,
    model: str = "deeplab",
    dataset: str = "pascal",
    paper_band_limits: Mapping[int, int | None] | None = None,
    figure: str = "blockwise.png",
    level: int = 2,
    explain: bool = True,
) -> None:
    """Adds :func:`model_blockwise` (or :func:`cell_blockwise`) beside the paper's Table 3
    and Fig. 6 for ``model`` on ``dataset``.

    The demo's section of one DeepLab v3+ (PASCAL-like); the experiment's
    :func:`write_report` adds one per model and data set.

    Args:
      report: the report to add the section to.
      result: the block-wise runs paired with the pixel-wise ones.
      labels: ``[N, N]`` the labels of one validation scene (``N`` the evaluation size).
      heading: the section's heading, at ``level``.
      num_classes: the data set's classes.
      model: the paper's model whose values stand beside ours.
      dataset: the paper's data set whose values stand beside ours.
      paper_band_limits: the paper's band limit beside each of ours on the scene (a
        column of its own); None: the same number (the demo's).
      figure: file name of the figure (block-wise labels, relative mIoU against R).
      level: of the heading.
      explain: whether to add the paragraph that says how the runs are made and paired
        (the experiment explains once, at its first cell).
    """
    settings, crop_size, correlation = result.settings, result.crop_size, result.correlation
    num_seeds, size = len(result.pixelwise_mean_iou), labels.shape[0]

    def paper_band(nu: int) -> int | None:
        return nu if paper_band_limits is None else paper_band_limits.get(nu)

    rows, claims = [], ["What the intervals say of the paper's claims:"]
    for setting in settings:
        nu = setting.eval_band_limit
        paper_nu = paper_band(nu)
        paper_relative = paper_r = None
        if paper_nu in paper_values.TABLE3_BAND_LIMITS:
            paper_relative = paper_values.table3_relative_miou(model, dataset, paper_nu)
        if paper_nu in paper_values.TABLE1_BAND_LIMITS:
            paper_r = paper_values.table1_relative_discrepancy(model, dataset, paper_nu)
        relative = compute_spread(setting.relative_mean_iou_per_seed)
        row = [setting.band_limit, nu, format_spread(compute_spread(setting.mean_iou_per_seed))]
        row += [format_spread(relative), paper_relative]
        row += [format_spread(compute_spread(setting.relative_discrepancy_per_seed)), paper_r]
        rows.append(row if paper_band_limits is None else [*row[:2], paper_nu, *row[2:]])
        paper_text = "" if paper_relative is None else f"; paper {paper_relative:.3f}"
        claims.append(
            claim_line(
                f"Table 3: block-wise labels at ν_max = {nu} cost mIoU "
                f"(relative mIoU below 1{paper_text})",
                relative,
                reference=1.0,
                expected="below",
            )
        )
    pixel_spread = compute_spread(result.pixelwise_mean_iou)
    pixel_row = ["pixel-wise", "-", format_spread(pixel_spread), 1.0, 1.0, None, None]
    rows.append(pixel_row if paper_band_limits is None else [*pixel_row[:2], "-", *pixel_row[2:]])
    report.heading(heading, level)
    if explain:
        report.paragraph(
            f"The same model and steps trained on block-wise labels: every training crop "
            f"({crop_size} x {crop_size}) is replaced by the majority label of each block of a "
            "(2ν_max + 1)-sized grid (`config.block_band_limit`), evaluation on the pixel-wise "
            f"validation labels. A band limit ν on the {crop_size}-pixel crop makes blocks of "
            f"the size that ν x {size}/{crop_size} makes on the {size} scene; the latter, in "
            "cycles per image, is set beside the paper's ν_max. Relative mIoU = mIoU(ν_max) / "
            "mIoU(pixel-wise) of the same seed; R(ν_max) is the trained pixel-wise model's of "
            "that seed. The paper's relation (Fig. 6): the smaller R(ν_max), the less "
            f"block-wise labels cost. Every setting is trained with {num_seeds} seeds: mean ± "
            "std over the seeds and the 95 % t interval of the mean."
        )
    header = ["ν_max (crop)", "ν_max (scene)", "mIoU", "relative mIoU", "paper relative mIoU"]
    if paper_band_limits is not None:
        header.insert(2, "paper ν_max")
    report.table([*header, "R(ν_max), ours", "R(ν_max), paper"], rows)
    if correlation is not None:
        claims.append(
            claim_line(
                f"Fig. 6: the larger R(ν_max), the lower the relative mIoU (Spearman's rho "
                f"below 0 over the {correlation.n} (seed, band limit) points; paper "
                f"{paper_spearman():.3f} over 18)".replace("-", "−"),
                correlation,
                reference=0.0,
                expected="below",
            )
        )
    report.paragraph("\n".join(claims))
    if (model, dataset) == ("deeplab", "pascal"):
        report.paragraph(
            "The scenes' objects are large and smooth, so blocks of a few pixels change few "
            "labels (mostly the one-pixel ignore contours and narrow limbs); the paper's "
            "PASCAL loss at ν_max = 8 (relative 0.868) comes from real object shapes at "
            "513 x 513."
        )
    report.figure(
        _plot_model(settings, labels, num_classes, model=model, dataset=dataset),
        figure,
        "Block-wise labels of scene 0 and relative mIoU vs R (one point per seed).",
    )


# --------------------------------------------------------------------------------------
# Main.


def define_flags(flag_values: flags.FlagValues) -> None:
    """The flags of ``python -m experiments.blockwise_annotation`` besides ``--config``, ``--workdir``."""
    cli.define_models(flag_values, None, "Default: deeplab on the embedded data, else both.")
    cli.define_datasets(
        flag_values, None, "Default: all three on the embedded data, else the config's own."
    )
    cli.define_list(
        flag_values,
        "band_limits",
        None,
        "Block-wise band limits on the evaluation grid (pixel-wise is always run); default: "
        "2,4 on the embedded data, 8,16,32 otherwise.",
        element=int,
    )
    flags.register_validator(
        "band_limits",
        lambda values: values is None or all(nu >= 1 for nu in values),
        "--band_limits must be positive.",
        flag_values=flag_values,
    )
    cli.define_num_seeds(flag_values)
    flags.DEFINE_string(
        "from_ce_spectrum",
        None,
        "Read R(nu_max) from experiment 1's work directory instead of measuring it.",
        flag_values=flag_values,
    )


def main(argv: Sequence[str]) -> pathlib.Path:
    """Runs the experiment on the command line ``argv``; returns the path of ``report.md``."""
    flag_values = cli.parse(
        argv, name="blockwise_annotation", doc=__doc__, define_flags=define_flags
    )
    config = flag_values.config
    embedded = runs.is_embedded(config)
    models = flag_values.models or (["deeplab"] if embedded else list(runs.MODEL_NAMES))
    datasets = flag_values.datasets or list(runs.datasets_of(config))
    band_limits = sorted(set(flag_values.band_limits or ([2, 4] if embedded else [8, 16, 32])))
    workdir = pathlib.Path(flag_values.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    bands: list[int | str] = [*band_limits, PIXELWISE]
    grid = [(m, d, nu) for m in models for d in datasets for nu in bands]
    num_seeds = runs.num_seeds_of(flag_values.num_seeds, config)
    results = []
    for index, (model, dataset, band) in enumerate(grid):
        name = _run_name(model, dataset, band)
        log(f"[{index + 1}/{len(grid)}] {name}, {num_seeds} seed(s)")
        results += run_setting(
            config,
            model=model,
            dataset=dataset,
            band_limit=band,
            workdir=workdir / name,
            num_seeds=num_seeds,
        )
    from_ce_spectrum = flag_values.from_ce_spectrum
    r_values = read_ce_spectrum(pathlib.Path(from_ce_spectrum)) if from_ce_spectrum else None
    rows = table_rows(results, r_values)
    spreads = spread_rows(rows)
    correlations = correlation_rows(rows)
    write_csv(workdir / "blockwise_annotation.csv", rows)
    write_csv(workdir / "blockwise_spread.csv", spreads)
    write_csv(workdir / "correlation.csv", correlations)
    examples = {}
    for dataset in datasets:
        examples[dataset] = example_arrays(results, workdir, dataset, band_limits)
        np.savez_compressed(workdir / f"examples_{dataset}.npz", **examples[dataset])
    figures = {
        "scatter": plot_scatter(rows),
        "examples": plot_examples(examples, band_limits, models),
    }
    path = write_report(
        workdir,
        rows,
        spreads,
        correlations,
        config_file=cli.config_file(flag_values),
        from_ce_spectrum=from_ce_spectrum,
        figures=figures,
        examples=examples,
    )
    print(path)
    return path


if __name__ == "__main__":
    cli.run(main)
