r"""Experiment 3: feature truncation with soft filter pruning (paper Table 2, Table 4, Fig. 5).

Launch from the repository root::

  python -m experiments.feature_truncation --workdir runs/feature_truncation \
      --config experiments/configs/tiny.py --config.num_train_steps=120
  python -m experiments.feature_truncation --workdir runs/ft_full \
      --models=deeplab,dan --datasets=pascal,deepglobe,cityscapes \
      --pruning_rates=0,0.2,0.4,0.6       # the full tiny grid (tiny.py's 300 steps), 72 trainings
  python -m experiments.feature_truncation --workdir runs/ft_pascal \
      --config experiments/configs/pascal.py     # the paper's setting (GPU/TPU)

Grid: decoder feature sizes x encoder pruning rates, per model and data set. Every cell
trains a model with soft filter pruning (SFP, :mod:`spectral_jax.models.pruning`: the encoder at
the given rate and the decoder at 20 % when the encoder is pruned, as in the paper),
removes the pruned filters for good (:func:`spectral_jax.models.pruning.hard_prune`), and
evaluates the hard-pruned, truncated model on the pixel-wise validation labels.

Feature sizes. The paper truncates the decoder grid (129 at 513 input, ``nu_max = 64``)
to 65 and 33 (``nu_max`` = 32 and 16): the untruncated grid and ``F = 2 nu + 1`` at a half
and a quarter of its band limit. Here the same fractions are taken of the low-level grid
``L`` of the input at hand (``L = ceil(n / 4)``): ``F = 2 floor(nu_L k) + 1`` with
``nu_L = (L - 1) // 2`` and ``k`` = 1, 1/2, 1/4. With the paper's settings (513 crops and
513 evaluation) this gives 129 (untruncated), 65 and 33. With the tiny config (65 crops,
129 x 129 validation scenes) it gives 17 / 9 / 5 in training and 33 / 17 / 9 at
evaluation: the parameters do not depend on the feature size, so the trained model is
evaluated with the grid that cuts the same frequency in cycles per pixel (e.g. 4 of 65
and 8 of 129) as in training. Columns are labelled by the paper's sizes.

Costs. FLOPs are multiply-accumulates of the hard-pruned model's convolutions
(:func:`spectral_jax.flops.conv_layers` / :func:`~spectral_jax.flops.conv_macs`,
``G MACs`` = 1e9 MACs, only taps inside the unpadded input, as XLA counts), at the
evaluation input (one image) and, for the full-size architecture of the paper
(ResNet-101, 21 classes, output stride 16) pruned at the same rates, at 513 x 513; the
latter is a pure shape computation (:func:`spectral_jax.models.pruning.hard_pruned_model`). The
paper's own convention is reconstructed beside it
(:func:`experiments.flops_table.paper_convention`: 2 x dense MACs, encoder at output
stride 32). Pruned FLOPs % = ``1 - FLOPs / FLOPs(unpruned, untruncated)``;
FPI = ``FLOPs / mIoU`` (mIoU as a fraction; the paper's 107 G / 0.781 = 137).
mIoU drop = mIoU(unpruned, untruncated) - mIoU, in percentage points.

With a config on the embedded data the grid defaults to DeepLab v3+ only, the config's
preset only (``pascal_like`` for ``tiny.py``) and encoder pruning 0 and 40 %, at three
feature sizes, 3 seeds per cell (``--num_seeds``); with 120 steps (the first command: six
trainings per seed, about 5 min of CPU time per seed, measured as 19 min wall clock for
one seed on a 2-core CPU). With a paper config it defaults
to both models, the four pruning rates of Tables 2 and 4 and one seed.

Every cell is trained with seeds ``config.seed + k`` (:func:`experiments.runs.
train_seeds`) and paired with the baseline of the same seed; the report gives mIoU, its
drop and the FPI as mean ± std with the 95 % t interval of the mean and says which of
the paper's claims (truncation and pruning cost mIoU, lower the FPI) the intervals
support, contradict or cannot decide.

Beside the grid, each model's and data set's unpruned, untruncated cell (0 %, 129) is also
evaluated as the demo does (:func:`untruncated_cell_truncation`, :func:`model_section`):
the same trained weights with the decoder truncated to the three grids, no retraining.

Writes ``report.md``, ``feature_truncation.csv`` (per seed),
``feature_truncation_spread.csv`` (over seeds), ``fpi.png``, ``truncated_weights.json``
(the same weights truncated: per model and data set, ``rows`` over seeds and ``per_seed``,
as the demo's ``results.json``) and one training directory per cell and seed; rerunning
resumes (finished cells are read back from ``cell.json``, the truncated weights' numbers
from ``truncated.json``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags

from experiments import cli, paper_values, runs
from experiments import flops_table as flops_table_lib
from experiments.report import Report, claim_line, format_spread, log, pyplot, write_csv
from experiments.runs import MODEL_TITLES
from spectral_jax import flops
from spectral_jax.evaluation import CONFIDENCE, Spread, compute_spread
from spectral_jax.models import DAN, DeepLabV3Plus, pruning

#: The paper's feature sizes and the fraction of the untruncated band each keeps.
PAPER_FEATURE_SIZES = (129, 65, 33)
BAND_FRACTIONS = {129: 1, 65: 2, 33: 4}  # nu = nu_L // divisor
PAPER_INPUT_SIZE = 513
PAPER_NUM_CLASSES = 21
#: The decoder's pruning rate whenever the encoder is pruned (paper, Sec. 3.2).
DECODER_RATE = 0.2


# --------------------------------------------------------------------------------------
# Grid settings.


def low_level_grid(input_size: int) -> int:
    """Side of the stride-4 low-level features for an ``input_size`` input: ``ceil(n / 4)``."""
    if input_size < 1:
        raise ValueError(f"input_size must be positive, got {input_size}.")
    return -(-int(input_size) // 4)


def feature_size_for(paper_feature_size: int, input_size: int) -> int | None:
    """The decoder grid that stands for the paper's ``129 / 65 / 33`` at ``input_size``.

    ``F = 2 floor(nu_L / d) + 1`` with ``nu_L = (L - 1) // 2`` the band limit of the
    low-level grid ``L`` (:func:`low_level_grid`) and ``d`` = 1, 2, 4 for 129, 65, 33;
    ``None`` (untruncated) for 129.

    Args:
      paper_feature_size: 129, 65 or 33.
      input_size: side of the model's input.

    Returns:
      ``None`` or the static ``feature_size`` of the model.

    Raises:
      ValueError: for another paper size, or an input too small to truncate.

    Example:
      >>> [feature_size_for(f, 513) for f in (129, 65, 33)]
      [None, 65, 33]
      >>> [feature_size_for(f, 129) for f in (129, 65, 33)]
      [None, 17, 9]
    """
    grid = decoder_grid(paper_feature_size, input_size)
    return None if paper_feature_size == 129 else grid


def decoder_grid(paper_feature_size: int, input_size: int) -> int:
    """``F = 2 floor(nu_L / d) + 1`` of :func:`feature_size_for`, also for 129 (``d = 1``).

    For 129 this is the untruncated grid ``L`` when ``L`` is odd (``L - 1`` when even).

    Raises:
      ValueError: for another paper size, or an input too small to truncate.
    """
    if paper_feature_size not in BAND_FRACTIONS:
        raise ValueError(
            f"paper_feature_size must be one of {PAPER_FEATURE_SIZES}, got {paper_feature_size}."
        )
    band_limit = (low_level_grid(input_size) - 1) // 2 // BAND_FRACTIONS[paper_feature_size]
    if band_limit < 1:
        raise ValueError(f"input_size={input_size} is too small to truncate the decoder grid.")
    return 2 * band_limit + 1


def pruning_rates(encoder_rate: float) -> dict[str, float]:
    """``{"encoder": r, "decoder": 0.2 if r > 0 else 0}``, the paper's SFP setting."""
    if not 0 <= encoder_rate < 1:
        raise ValueError(f"encoder_rate must lie in [0, 1), got {encoder_rate}.")
    return {"encoder": float(encoder_rate), "decoder": DECODER_RATE if encoder_rate > 0 else 0.0}


# --------------------------------------------------------------------------------------
# FLOPs.


def _full_size_model(model: str, feature_size: int | None, output_stride: int = 16):
    cls = DeepLabV3Plus if model == "deeplab" else DAN
    return cls(
        num_classes=PAPER_NUM_CLASSES,
        backbone="resnet101",
        output_stride=output_stride,
        feature_size=feature_size,
    )


def pruned_architecture(model_instance, rates: dict[str, float]):
    """The hard-pruned architecture of ``model_instance`` at ``rates`` (no variables)."""
    plan = pruning.pruning_plan(model_instance, pruning.PruningRates(**rates))
    return pruning.hard_pruned_model(model_instance, plan)


def full_size_macs(model: str, paper_feature_size: int, rates: dict[str, float]) -> float:
    """MACs of the paper's full-size model (ResNet-101, 513 x 513), hard-pruned at ``rates``.

    Returns:
      ``conv_macs`` of one 513 x 513 image (valid taps), in units of 1.
    """
    feature_size = feature_size_for(paper_feature_size, PAPER_INPUT_SIZE)
    pruned = pruned_architecture(_full_size_model(model, feature_size), rates)
    input_shape = (1, PAPER_INPUT_SIZE, PAPER_INPUT_SIZE, 3)
    return float(flops.conv_macs(flops.conv_layers(pruned, input_shape)))


def paper_convention_gflops(model: str, paper_feature_size: int, rates: dict[str, float]):
    """The paper's convention (2 x dense MACs, encoder at output stride 32), G FLOPs."""
    feature_size = feature_size_for(paper_feature_size, PAPER_INPUT_SIZE)

    def make_model(size, output_stride):
        return pruned_architecture(_full_size_model(model, size, output_stride), rates)

    encoder, decoder = flops_table_lib.paper_convention(make_model, feature_size)
    return encoder + decoder


# The full-size counts depend on the model, the feature size and the rates only, not on
# the data set: traced once per process (ResNet-101 takes seconds to trace).
@functools.lru_cache(maxsize=64)
def _full_size_counts(model: str, paper_feature_size: int, rates: tuple) -> dict[str, float]:
    return {
        "macs_513": full_size_macs(model, paper_feature_size, dict(rates)),
        "paper_convention_gflops_513": paper_convention_gflops(
            model, paper_feature_size, dict(rates)
        ),
    }


# --------------------------------------------------------------------------------------
# One cell of the grid.


def cell_config(
    config: ml_collections.ConfigDict,
    *,
    model: str,
    dataset: str,
    paper_feature_size: int,
    encoder_rate: float,
) -> ml_collections.ConfigDict:
    """The training config of one cell: ``config`` with the model, the data set, the
    training feature size (:func:`feature_size_for` of the crop) and the SFP rates
    (:func:`pruning_rates`) set."""
    config = runs.experiment_config(config, model=model, dataset=dataset, self_evaluated=True)
    rates = pruning_rates(encoder_rate)
    config.model.feature_size = feature_size_for(paper_feature_size, int(config.crop_size))
    config.pruning.encoder = rates["encoder"]
    config.pruning.decoder = rates["decoder"]
    return config


def untruncated_cell_truncation(
    config: ml_collections.ConfigDict,
    *,
    model: str,
    dataset: str,
    workdir: pathlib.Path,
    num_seeds: int,
) -> ModelTruncation:
    """The demo's truncation of the unpruned, untruncated cell's trained models.

    Every seed's model of the cell at 0 % pruning and the paper's 129 (trained by
    :func:`run_cell` in ``workdir``; a missing training is run) is evaluated with its
    decoder on the three grids (:func:`truncated_model_rows`): the same weights at every
    grid, no retraining, beside the grid's cells that train each size. Each seed's
    records are cached in its ``truncated.json``.
    """
    config = cell_config(
        config, model=model, dataset=dataset, paper_feature_size=129, encoder_rate=0.0
    )
    seed_runs = runs.train_seeds(config, workdir, num_seeds=num_seeds)
    trained_model = runs.create_model(config)
    per_seed = []
    for k in range(num_seeds):
        path = seed_runs.seed_workdir(k) / "truncated.json"
        if path.exists():
            records = [GridResult(**r) for r in json.loads(path.read_text())]
        else:
            log(f"  {path.parent}: the same weights with the decoder truncated")
            records = truncated_model_rows(trained_model, seed_runs.variables(k), config)
            path.write_text(json.dumps([dataclasses.asdict(r) for r in records], indent=2))
        per_seed.append(records)
    return ModelTruncation(per_seed, int(config.eval_crop_size))


def run_cell(
    config: ml_collections.ConfigDict,
    *,
    model: str,
    dataset: str,
    paper_feature_size: int,
    encoder_rate: float,
    workdir: pathlib.Path,
    num_seeds: int = 1,
    full_size: bool = True,
) -> list[dict[str, Any]]:
    """Trains, hard-prunes, truncates and evaluates one cell with ``num_seeds`` seeds.

    Trains through :func:`experiments.runs.train_seeds`; each seed's result is cached in
    its ``cell.json``.

    Args:
      config: the training config (``--config``); the cell sets the model, the data set,
        the feature size and the pruning rates of a copy.
      workdir: the cell's directory (one sub-directory per seed).
      num_seeds: the seeds ``config.seed + k``.

    Returns:
      One dict per seed (``seed``, ``run_dir``, mIoU, MACs, ...).
    """
    config = cell_config(
        config,
        model=model,
        dataset=dataset,
        paper_feature_size=paper_feature_size,
        encoder_rate=encoder_rate,
    )
    rates = pruning_rates(encoder_rate)
    eval_size = feature_size_for(paper_feature_size, int(config.eval_crop_size))
    seed_runs = runs.train_seeds(config, workdir, num_seeds=num_seeds)
    return [
        _evaluate_seed(
            seed_runs,
            k,
            model=model,
            dataset=dataset,
            paper_feature_size=paper_feature_size,
            rates=rates,
            eval_size=eval_size,
            full_size=full_size,
        )
        for k in range(num_seeds)
    ]


def _evaluate_seed(
    seed_runs: runs.SeedRuns,
    k: int,
    *,
    model: str,
    dataset: str,
    paper_feature_size: int,
    rates: dict[str, float],
    eval_size: int | None,
    full_size: bool,
) -> dict[str, Any]:
    """Hard-prunes, truncates and evaluates seed ``k`` of a cell; cached in ``cell.json``."""
    cell_path = seed_runs.seed_workdir(k) / "cell.json"
    if cell_path.exists():
        log(f"  {cell_path.parent}: finished earlier, reading {cell_path.name}")
        return json.loads(cell_path.read_text())
    config = seed_runs.config
    summary = seed_runs.summaries[k]
    eval_input = int(config.eval_crop_size)
    trained_model = runs.create_model(config)
    variables = seed_runs.variables(k)
    plan = pruning.pruning_plan(trained_model, pruning.PruningRates(**rates))
    # hard_prune soft-prunes once more first: the last epoch end may lie before the last
    # step, and SFP ends with a pruning step before the filters are removed.
    small_model, small_variables = pruning.hard_prune(trained_model, variables, plan)
    eval_model = small_model.clone(feature_size=eval_size)
    log(f"  evaluating the hard-pruned model (feature size {eval_size})")
    result = runs.evaluate_model(eval_model, small_variables, config)
    layers = flops.conv_layers(eval_model, (1, eval_input, eval_input, 3))
    cell = {
        "model": model,
        "dataset": dataset,
        "data": str(config.dataset),
        "seed": seed_runs.seeds[k],
        "run_dir": f"{seed_runs.workdir.name}/{cell_path.parent.name}",
        "paper_feature_size": paper_feature_size,
        "feature_size_train": config.model.feature_size,
        "feature_size_eval": eval_size,
        "eval_input_size": eval_input,
        "encoder_rate": rates["encoder"],
        "decoder_rate": rates["decoder"],
        "steps": summary["steps"],
        "mean_iou": float(result.mean_iou),
        "trainer_mean_iou": summary["mean_iou"],
        "macs_eval": float(flops.conv_macs(layers)),
        "params_eval": int(
            sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(small_variables["params"]))
        ),
        "widths": [list(item) for item in (small_model.widths or ())],
    }
    if full_size:
        cell.update(_full_size_counts(model, paper_feature_size, tuple(sorted(rates.items()))))
    cell_path.write_text(json.dumps(cell, indent=2))
    return cell


# --------------------------------------------------------------------------------------
# Derived columns, tables and the figure.


def _paper_cell(model: str, dataset: str, rate: float, paper_feature_size: int) -> dict:
    index = PAPER_FEATURE_SIZES.index(paper_feature_size)
    table = paper_values.MIOU_BY_MODEL[model]
    if rate not in table:
        return {}
    miou = table[rate][dataset][index]
    base = table[0.0][dataset][0]
    flops_g = paper_values.TABLE2_FLOPS[rate][index]
    return {
        "paper_miou": miou / 100,
        "paper_miou_drop": (base - miou) / 100,
        "paper_gflops": flops_g,
        "paper_pruned_flops_percent": paper_values.TABLE2_PRUNED_FLOPS_PERCENT[rate][index],
        "paper_fpi": flops.flops_per_iou(flops_g, miou / 100),
    }


def _fpi(cost: float, mean_iou: float) -> float | None:
    """:func:`spectral_jax.flops.flops_per_iou`, None for an mIoU of 0 (no FPI)."""
    return flops.flops_per_iou(cost, mean_iou) if mean_iou > 0 else None


def table_rows(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """CSV rows, one per cell and seed: mIoU drop, pruned FLOPs % and FPI, and the paper's
    values.

    The baseline of each (model, data set, seed) is its cell with encoder rate 0 and
    paper feature size 129 of the same seed; without it the derived columns are None.
    """
    baselines = {
        (c["model"], c["dataset"], c.get("seed", 0)): c
        for c in cells
        if c["encoder_rate"] == 0 and c["paper_feature_size"] == 129
    }
    rows = []
    for c in cells:
        base = baselines.get((c["model"], c["dataset"], c.get("seed", 0)))
        miou = c["mean_iou"]
        row = {
            "model": c["model"],
            "dataset": c["dataset"],
            "data": c["data"],
            "seed": c.get("seed", 0),
            "encoder_rate": c["encoder_rate"],
            "decoder_rate": c["decoder_rate"],
            "paper_feature_size": c["paper_feature_size"],
            "feature_size_train": c["feature_size_train"],
            "feature_size_eval": c["feature_size_eval"],
            "eval_input_size": c["eval_input_size"],
            "steps": c["steps"],
            "mean_iou": miou,
            "miou_drop": None if base is None else base["mean_iou"] - miou,
            "macs_eval": c["macs_eval"],
            "pruned_flops_percent_eval": (
                None if base is None else 100 * (1 - c["macs_eval"] / base["macs_eval"])
            ),
            "fpi_eval_mmacs": _fpi(c["macs_eval"] / 1e6, miou),
            "gmacs_513": None,
            "pruned_flops_percent_513": None,
            "fpi_513": None,
            "paper_convention_gflops_513": c.get("paper_convention_gflops_513"),
        }
        if "macs_513" in c:
            row["gmacs_513"] = c["macs_513"] / 1e9
            row["fpi_513"] = _fpi(row["gmacs_513"], miou)
            if base is not None and "macs_513" in base:
                row["pruned_flops_percent_513"] = 100 * (1 - c["macs_513"] / base["macs_513"])
        row.update(
            dict.fromkeys(
                (
                    "paper_miou",
                    "paper_miou_drop",
                    "paper_gflops",
                    "paper_pruned_flops_percent",
                    "paper_fpi",
                )
            )
        )
        row.update(
            _paper_cell(c["model"], c["dataset"], c["encoder_rate"], c["paper_feature_size"])
        )
        rows.append(row)
    return rows


#: The per-seed columns whose spread over seeds the reports give.
SPREAD_COLUMNS = ("mean_iou", "miou_drop", "fpi_eval_mmacs", "fpi_513")


def spread_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, data set, pruning rate and feature size: the spreads over seeds.

    Returns:
      Rows with the cell's columns (the first seed's costs, the same for every seed), the
      :class:`~spectral_jax.evaluation.Spread` columns of :data:`SPREAD_COLUMNS` (where
      every seed has the value), ``seeds``, and the means under the per-seed names
      (``mean_iou``, ``fpi_eval_mmacs``, ...) for the figure.
    """
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["model"], row["dataset"], row["encoder_rate"], row["paper_feature_size"])
        cells.setdefault(key, []).append(row)
    result = []
    for group in cells.values():
        row = {k: v for k, v in group[0].items() if k not in (*SPREAD_COLUMNS, "seed")}
        row["seeds"] = " ".join(str(r["seed"]) for r in group)
        for name in SPREAD_COLUMNS:
            values = [r[name] for r in group]
            row[name] = None
            if all(v is not None for v in values):
                spread = compute_spread(values)
                row.update(spread.columns(name))
                row[name] = spread.mean
        result.append(row)
    return result


def _spread_text(row: dict[str, Any], name: str, scale: float = 1.0, digits: int = 2) -> str:
    """``format_spread`` of a spread row's ``name`` (``scale`` x the values), or "-"."""
    if f"{name}_mean" not in row:
        return "-"
    spread = Spread(
        mean=scale * row[f"{name}_mean"],
        std=scale * row[f"{name}_std"],
        low=scale * row[f"{name}_ci_low"],
        high=scale * row[f"{name}_ci_high"],
        n=row[f"{name}_n"],
        confidence=CONFIDENCE,
        values=(),
    )
    return format_spread(spread, digits)


def _pct(value):
    return None if value is None else 100 * value


def _fs_label(row) -> str:
    """``"65 (17)"``: the paper's size and ours at evaluation (the grid if untruncated)."""
    ours = row["feature_size_eval"] or f"{low_level_grid(row['eval_input_size'])}, untruncated"
    return f"{row['paper_feature_size']} ({ours})"


def plot_fpi(rows: Sequence[dict[str, Any]]):
    """Fig. 5: FPI bars grouped by pruning rate, one bar per feature size; ours and paper's."""
    groups = sorted({(r["model"], r["dataset"]) for r in rows})
    figure, axes = pyplot().subplots(
        len(groups), 2, figsize=(10, 3.2 * len(groups)), squeeze=False, constrained_layout=True
    )
    colors = {129: "#4c72b0", 65: "#dd8452", 33: "#55a868"}
    width = 0.25
    for (model, dataset), (ours, paper) in zip(groups, axes, strict=True):
        selected = [r for r in rows if (r["model"], r["dataset"]) == (model, dataset)]
        rates = sorted({r["encoder_rate"] for r in selected})
        for k, size in enumerate(PAPER_FEATURE_SIZES):
            by_rate = {r["encoder_rate"]: r for r in selected if r["paper_feature_size"] == size}
            xs = np.arange(len(rates)) + (k - 1) * width
            ours_values = [
                (by_rate[rate]["fpi_eval_mmacs"] or np.nan) if rate in by_rate else np.nan
                for rate in rates
            ]
            example = next(iter(by_rate.values()), None)
            label = f"F = {_fs_label(example)}" if example else f"F = {size}"
            ours.bar(xs, ours_values, width, color=colors[size], label=label)
            paper_rates = paper_values.PRUNING_RATES
            paper.bar(
                np.arange(len(paper_rates)) + (k - 1) * width,
                [_paper_cell(model, dataset, rate, size)["paper_fpi"] for rate in paper_rates],
                width,
                color=colors[size],
                label=f"F = {size}",
            )
        title = f"{MODEL_TITLES[model]}, {dataset}"
        ours.set_xticks(np.arange(len(rates)), [f"{100 * r:.0f} %" for r in rates])
        ours.set_title(
            f"ours ({selected[0]['data']}, {selected[0]['eval_input_size']} px): {title}"
        )
        ours.set_xlabel("encoder pruning rate")
        ours.set_ylabel("FPI (M MACs / mIoU)")
        ours.legend(fontsize=8)
        paper_rates = paper_values.PRUNING_RATES
        paper.set_xticks(np.arange(len(paper_rates)), [f"{100 * r:.0f} %" for r in paper_rates])
        paper.set_title(f"paper (513 px): {title}")
        paper.set_xlabel("encoder pruning rate")
        paper.set_ylabel("FPI (G FLOPs / mIoU)")
        paper.legend(fontsize=8)
    return figure


def _claims(rows: Sequence[dict[str, Any]], per_seed: Sequence[dict[str, Any]]) -> str:
    """What the intervals over seeds say of Tables 2 and 4's claims, per cell."""
    lines = [
        "What the intervals over seeds say of the paper's claims (each cell paired with the "
        "baseline of the same seed):"
    ]
    for row in rows:
        if (row["encoder_rate"], row["paper_feature_size"]) == (0.0, 129):
            continue
        if "miou_drop_mean" not in row:
            continue
        key = (row["model"], row["dataset"], row["encoder_rate"], row["paper_feature_size"])
        seeds = [
            r
            for r in per_seed
            if (r["model"], r["dataset"], r["encoder_rate"], r["paper_feature_size"]) == key
        ]
        name = (
            f"{MODEL_TITLES[row['model']]}, {row['dataset']}, encoder {100 * row['encoder_rate']:.0f} "
            f"%, F {row['paper_feature_size']}"
        )
        paper = (
            "" if row["paper_miou_drop"] is None else f"; paper {100 * row['paper_miou_drop']:.1f}"
        )
        drops = compute_spread([100 * r["miou_drop"] for r in seeds])
        lines.append(
            claim_line(
                f"{name}: costs mIoU (drop in points above 0{paper})",
                drops,
                reference=0.0,
                expected="above",
                digits=2,
            )
        )
        baselines = {
            (r["model"], r["dataset"], r["seed"]): r
            for r in per_seed
            if (r["encoder_rate"], r["paper_feature_size"]) == (0.0, 129)
        }
        changes = [
            r["fpi_eval_mmacs"] - baselines[r["model"], r["dataset"], r["seed"]]["fpi_eval_mmacs"]
            for r in seeds
            if r["fpi_eval_mmacs"] is not None
            and baselines[r["model"], r["dataset"], r["seed"]]["fpi_eval_mmacs"] is not None
        ]
        if changes:
            lines.append(
                claim_line(
                    f"{name}: lowers the FPI (change in M MACs per mIoU below 0)",
                    compute_spread(changes),
                    reference=0.0,
                    expected="below",
                    digits=2,
                )
            )
    return "\n".join(lines)


def write_report(
    workdir: pathlib.Path,
    rows: Sequence[dict[str, Any]],
    per_seed: Sequence[dict[str, Any]],
    *,
    config_file: str,
    crop: int,
    truncations: dict[tuple[str, str], ModelTruncation] | None = None,
) -> pathlib.Path:
    """``report.md`` from the spread rows (:func:`spread_rows`) and the per-seed rows.

    ``truncations``: per model and data set, the unpruned, untruncated cell's weights with
    the decoder truncated (:func:`untruncated_cell_truncation`), each added after the
    cell's table by the demo's :func:`model_section`.
    """
    report = Report(workdir, "Feature truncation with soft filter pruning (Tables 2, 4)")
    example = rows[0]
    num_seeds = max(r.get("mean_iou_n", 1) for r in rows)
    report.paragraph(
        f"Config `{config_file}`, {example['steps']} training steps per cell and seed, "
        f"{num_seeds} seed(s) per cell (mIoU, drop and FPI: mean ± std over the seeds with "
        "the 95 % t interval of the mean), evaluation on "
        f"the {example['eval_input_size']} x {example['eval_input_size']} validation images "
        "with the pixel-wise labels. Every cell is trained with soft filter pruning "
        f"(encoder at the given rate, decoder at {100 * DECODER_RATE:.0f} % when the encoder "
        "is pruned), hard-pruned after training (the pruned filters removed) and evaluated "
        "with the truncated decoder grid. Feature sizes are labelled by the paper's "
        "129 / 65 / 33 (the untruncated grid and F = 2 nu + 1 at a half and a quarter of "
        "its band limit); ours at evaluation in parentheses, in training "
        + ", ".join(
            sorted(
                {f"{r['paper_feature_size']}: {r['feature_size_train'] or 'none'}" for r in rows}
            )
        )
        + f" ({crop}-pixel crops: the same cut-off in cycles per pixel)."
    )
    report.paragraph(
        "Units: `MACs` are multiply-accumulates of the hard-pruned model's convolutions "
        "(valid taps, as XLA counts; `spectral_jax.flops.conv_macs`) for one image at the "
        "evaluation size, in millions; `G MACs 513` is the paper's full-size architecture "
        "(ResNet-101, 21 classes, output stride 16) pruned at the same rates, one 513 x 513 "
        "image; `paper conv. G FLOPs` reconstructs the paper's convention for that model "
        "(2 x dense MACs, encoder at output stride 32; `experiments/flops_table.py`). "
        "mIoU and drops in %, drop = baseline (0 %, 129) - cell, in points. "
        "FPI = FLOPs / mIoU (mIoU as a fraction): ours in M MACs at the evaluation size; "
        "`FPI 513` divides the full-size G MACs by our mIoU; the paper's is G FLOPs / mIoU."
    )
    header = [
        "enc. rate",
        "F (ours)",
        "mIoU",
        "paper mIoU",
        "drop",
        "paper drop",
        "M MACs",
        "pruned % (eval)",
        "FPI",
        "G MACs 513",
        "pruned % 513",
        "paper conv. G FLOPs",
        "paper G FLOPs",
        "paper pruned %",
        "FPI 513",
        "paper FPI",
    ]
    for model, dataset in sorted({(r["model"], r["dataset"]) for r in rows}):
        table = "Table 2" if model == "deeplab" else "Table 4"
        selected = [r for r in rows if (r["model"], r["dataset"]) == (model, dataset)]
        selected.sort(key=lambda r: (r["encoder_rate"], -r["paper_feature_size"]))
        report.heading(
            f"{MODEL_TITLES[model]} on {selected[0]['data']} (paper: {dataset}, {table})"
        )
        report.table(
            header,
            [
                (
                    f"{100 * r['encoder_rate']:.0f} %",
                    _fs_label(r),
                    _spread_text(r, "mean_iou", 100),
                    _pct(r["paper_miou"]),
                    _spread_text(r, "miou_drop", 100),
                    _pct(r["paper_miou_drop"]),
                    r["macs_eval"] / 1e6,
                    r["pruned_flops_percent_eval"],
                    _spread_text(r, "fpi_eval_mmacs"),
                    r["gmacs_513"],
                    r["pruned_flops_percent_513"],
                    r["paper_convention_gflops_513"],
                    r["paper_gflops"],
                    r["paper_pruned_flops_percent"],
                    _spread_text(r, "fpi_513"),
                    r["paper_fpi"],
                )
                for r in selected
            ],
            digits=2,
        )
        if (model, dataset) in (truncations or {}):
            model_section(
                report,
                truncations[model, dataset],
                heading=f"The unpruned 129 cell's weights with the decoder truncated "
                f"({MODEL_TITLES[model]}, {dataset})",
                model=model,
                dataset=dataset,
                retrained_by="so does the table above",
                level=3,
            )
    report.heading("The paper's claims over the grid (Tables 2, 4, Fig. 5)")
    report.paragraph(_claims(rows, per_seed))
    report.figure(
        plot_fpi(rows),
        "fpi.png",
        "Fig. 5: FPI (FLOPs per mIoU) by encoder pruning rate and feature size; left ours "
        "(M MACs of the hard-pruned tiny model at the evaluation size / mIoU), right the "
        "paper's (G FLOPs / mIoU).",
    )
    report.heading("Differences from the paper")
    report.paragraph(_differences(rows))
    report.paragraph(
        "All values: `feature_truncation.csv` (per seed), `feature_truncation_spread.csv` "
        "(mean, std and 95 % interval over seeds)"
        + (
            ", `truncated_weights.json` (the unpruned 129 cells' weights with the decoder "
            "truncated, per seed and over seeds)."
            if truncations
            else "."
        )
    )
    return report.write()


def _differences(rows: Sequence[dict[str, Any]]) -> str:
    """The differences paragraph, with this run's numbers."""
    lines = [
        "The paper trains ResNet-101 models from ImageNet weights for 100-600 epochs on "
        "the real data sets at 513 x 513; ours are the tiny models "
        "(`resnet_tiny`, narrow ASPP and decoder) trained from scratch for "
        f"{rows[0]['steps']} steps on the generated 129 x 129 scenes, so absolute mIoU is "
        "far lower and not comparable; the intervals over seeds above say which "
        "differences between cells the seeds resolve (a pruned cell can even beat the "
        "baseline).",
    ]
    by_cell = {
        (r["model"], r["dataset"], r["encoder_rate"], r["paper_feature_size"]): r for r in rows
    }
    savings = []
    for (_, _, rate, size), r in sorted(by_cell.items()):
        if (rate, size) == (0.0, 129) or r["pruned_flops_percent_eval"] is None:
            continue
        saving = f"{r['pruned_flops_percent_eval']:.1f} %"
        if r["pruned_flops_percent_513"] is not None:
            saving += f" ({r['pruned_flops_percent_513']:.1f} % for ResNet-101 at 513)"
        savings.append(
            f"{100 * rate:.0f} % / F {size}: {saving} vs the paper's "
            f"{r['paper_pruned_flops_percent']:.1f} %"
        )
    if savings:
        lines.append(
            "FLOP savings of our hard-pruned, truncated models at the evaluation size "
            "against the unpruned, untruncated one: "
            + "; ".join(dict.fromkeys(savings))
            + ". The tiny model's split between backbone, ASPP and decoder differs from "
            "ResNet-101's, so its savings differ; the full-size counts show what the same "
            "rates and truncation do to the paper's architecture in our convention (valid "
            "taps, output stride 16)."
        )
    reconstructed = [
        (
            r["paper_convention_gflops_513"],
            r["paper_gflops"],
            r["encoder_rate"],
            r["paper_feature_size"],
        )
        for r in by_cell.values()
        if r["paper_convention_gflops_513"] is not None and r["paper_gflops"] is not None
    ]
    if reconstructed:
        worst = max(reconstructed, key=lambda t: abs(t[0] / t[1] - 1))
        lines.append(
            "The paper's FLOPs are reproduced by 2 x dense MACs with the encoder counted at "
            "output stride 32 (`paper conv.`; our own count is about 0.6 times theirs): "
            f"the largest deviation in this grid is {100 * (worst[0] / worst[1] - 1):+.1f} % "
            f"({worst[0]:.1f} vs {worst[1]} G at {100 * worst[2]:.0f} %, F {worst[3]}). "
            "The paper does not say which layers SFP prunes; ours prunes the stem, the "
            "bottlenecks' first two convolutions, ASPP and the decoder "
            "(`spectral_jax.models.pruning`), never the residual outputs that every block shares, "
            "so pruned counts can differ from the paper's by a few percent."
        )
    if any(r["model"] == "dan" for r in rows):
        lines.append(
            "For DAN the paper's FLOPs column (Table 4) repeats Table 2's although its text "
            f"gives DAN's decoder {paper_values.DECODER_GFLOPS['dan']} G FLOPs, not "
            f"{paper_values.DECODER_GFLOPS['deeplab']} G: the reconstruction for DAN lies "
            "about a quarter below that column, and the paper's DAN FPI uses the repeated "
            "column."
        )
    lines.append(
        "SFP prunes at the end of each epoch (37 steps with the tiny config): a short run "
        "has only a few pruning events, so the pruned filters have had little time to be "
        "re-learned or replaced, and the drops from pruning are noisier than the paper's. "
        "SFP also relies on the redundancy of wide layers: the tiny model's bottleneck "
        "convolutions of 4-32 filters and its 16-channel ASPP and decoder have far less "
        "of it than ResNet-101's, so the same rates cost it much more "
        "mIoU (the trainer's own evaluation of the soft-pruned model, before the filters "
        "are removed, is in each cell's `summary.json`)."
    )
    return " ".join(lines)


# --------------------------------------------------------------------------------------
# One trained model's decoder truncated, without pruning or fine-tuning (the demo).


@dataclasses.dataclass(frozen=True)
class GridResult:
    """One trained model evaluated with its decoder on one grid (:func:`truncated_model_rows`).

    Attributes:
      feature_size: ``F``, the decoder's grid.
      paper_feature_size: the paper's ``F`` at 513 x 513 that ``F`` stands for.
      mean_iou: the validation mIoU.
      macs: multiply-accumulates of one image at the evaluation size.
      fpi: M MACs per unit mIoU (None for an mIoU of 0).
    """

    feature_size: int
    paper_feature_size: int
    mean_iou: float
    macs: float
    fpi: float | None


@dataclasses.dataclass(frozen=True)
class ModelTruncation:
    """Every seed's trained model with its decoder truncated to the paper's three grids.

    Attributes:
      per_seed: ``[S][3]`` :func:`truncated_model_rows` of each seed's model.
      input_size: the evaluation size.
    """

    per_seed: Sequence[Sequence[GridResult]]
    input_size: int

    def to_json(self) -> dict[str, Any]:
        """``rows`` (:func:`seed_rows`) and ``per_seed`` (``[S][3]`` of the records' fields)."""
        return {
            "rows": seed_rows(self.per_seed),
            "per_seed": [[dataclasses.asdict(r) for r in records] for records in self.per_seed],
        }


def truncated_model_rows(model, variables, config: ml_collections.ConfigDict) -> list[GridResult]:
    """The mIoU, MACs and FPI of ``model`` with its decoder on the paper's three grids.

    The grids are :func:`decoder_grid` of 129 / 65 / 33 at ``config.eval_crop_size``; the
    same weights are evaluated on ``config.eval_split`` at every grid (the parameters do
    not depend on it).

    Returns:
      Per grid, its mIoU, MACs and FPI (:class:`GridResult`).
    """
    input_size = int(config.eval_crop_size)
    records = []
    for paper_size in PAPER_FEATURE_SIZES:
        feature_size = decoder_grid(paper_size, input_size)
        truncated = model.clone(feature_size=feature_size)
        miou = float(runs.evaluate_model(truncated, variables, config).mean_iou)
        macs = flops.conv_macs(flops.conv_layers(truncated, (1, input_size, input_size, 3)))
        fpi = _fpi(macs / 1e6, miou)
        records.append(GridResult(feature_size, paper_size, miou, macs, fpi))
    return records


def seed_rows(records_per_seed: Sequence[Sequence[GridResult]]) -> list[dict[str, Any]]:
    """Per decoder grid, the spreads over seeds of :func:`truncated_model_rows`' numbers.

    Args:
      records_per_seed: ``[S][3]`` :func:`truncated_model_rows` of each seed's model.

    Returns:
      Per grid: ``feature_size``, ``paper_feature_size``, ``macs`` (the same for every
      seed), the :class:`~spectral_jax.evaluation.Spread` columns of ``mean_iou``,
      ``fpi`` and ``mean_iou_drop`` (mIoU(untruncated) - mIoU of the same seed, as a
      fraction) and of ``fpi_change`` (FPI - FPI(untruncated) of the same seed).
    """
    rows = []
    for index, first in enumerate(records_per_seed[0]):
        at_grid = [records[index] for records in records_per_seed]
        full = [records[0] for records in records_per_seed]
        row = {
            "feature_size": first.feature_size,
            "paper_feature_size": first.paper_feature_size,
            "macs": first.macs,
        }
        row.update(compute_spread([r.mean_iou for r in at_grid]).columns("mean_iou"))
        row.update(compute_spread([r.fpi for r in at_grid]).columns("fpi"))
        drops = [f.mean_iou - r.mean_iou for f, r in zip(full, at_grid, strict=True)]
        changes = [r.fpi - f.fpi for f, r in zip(full, at_grid, strict=True)]
        row.update(compute_spread(drops).columns("mean_iou_drop"))
        row.update(compute_spread(changes).columns("fpi_change"))
        rows.append(row)
    return rows


def model_section(
    report: Report,
    truncation: ModelTruncation,
    *,
    heading: str,
    model: str = "deeplab",
    dataset: str = "pascal",
    retrained_by: str = "`experiments/feature_truncation.py` does",
    level: int = 2,
) -> None:
    """Adds :func:`truncated_model_rows` of every seed beside the paper's unpruned row of
    Table 2 (Table 4 for DAN) on ``dataset``, with mean ± std and 95 % intervals over the
    seeds.

    The demo's section of one DeepLab v3+ (PASCAL-like); the experiment's
    :func:`write_report` adds one per model and data set for its unpruned, untruncated
    cell (:func:`untruncated_cell_truncation`).

    Args:
      report: the report to add the section to.
      truncation: every seed's records.
      heading: the section's heading, at ``level``.
      model: the paper's model whose values stand beside ours.
      dataset: the paper's data set whose values stand beside ours.
      retrained_by: what trains every size instead, as the text names it.
      level: of the heading.
    """
    records_per_seed, input_size = truncation.per_seed, truncation.input_size
    rows = seed_rows(records_per_seed)
    num_seeds = len(records_per_seed)
    table = []
    for index, row in enumerate(rows):
        feature_size, macs = row["feature_size"], row["macs"]
        paper = _paper_cell(model, dataset, 0.0, row["paper_feature_size"])
        paper_miou, paper_fpi = paper["paper_miou"], paper["paper_fpi"]
        saving = 100 * (1 - macs / rows[0]["macs"])
        grid = f"{feature_size} (ν_max {(feature_size - 1) // 2})"
        values = {
            name: compute_spread([getattr(records[index], name) for records in records_per_seed])
            for name in ("mean_iou", "fpi")
        }
        table.append(
            [grid, row["paper_feature_size"], format_spread(values["mean_iou"]), paper_miou]
            + [macs / 1e6, saving, format_spread(values["fpi"], 2), paper_fpi]
        )
    sizes = [row["feature_size"] for row in rows]
    report.heading(heading, level)
    report.paragraph(
        f"The trained models' decoder run on smaller grids: at {input_size} x {input_size} "
        f"input the untruncated decoder grid (stride 4) is {sizes[0]}, band limit "
        f"{(sizes[0] - 1) // 2}; a half and a quarter of that band limit give F = "
        f"{sizes[1]} and {sizes[2]} (F = 2ν_max + 1), as 129 -> 65 -> 33 in the paper at 513. "
        "The parameters do not depend on the grid, so the same weights are evaluated "
        f"(no fine-tuning: the paper trains every size; {retrained_by}). FLOPs: multiply-accumulates of every convolution at one {input_size} x "
        f"{input_size} image (`flops.conv_layers`, taps inside the unpadded input, as XLA "
        "counts); FPI = FLOPs / mIoU (M MACs per unit mIoU; the paper's G FLOPs per unit "
        f"mIoU). mIoU and FPI: mean ± std over {num_seeds} seeds, with the 95 % t interval "
        "of the mean."
    )
    header = ["decoder grid F", "paper's F", "mIoU", "paper mIoU", "M MACs", "saving %"]
    report.table([*header, "FPI (ours, M)", "FPI (paper, G)"], table)
    table_name = "Table 2" if model == "deeplab" else "Table 4"
    lines = [f"What the intervals say of {table_name}'s claims (paired by seed):"]
    paper = paper_values.MIOU_BY_MODEL[model][0.0][dataset]
    for index in (1, 2):
        row = rows[index]
        drop = compute_spread(
            [records[0].mean_iou - records[index].mean_iou for records in records_per_seed]
        )
        change = compute_spread(
            [records[index].fpi - records[0].fpi for records in records_per_seed]
        )
        size = row["feature_size"]
        paper_drop = paper[0] - paper[index]
        lines.append(
            claim_line(
                f"Truncating to F = {size} costs mIoU (drop above 0; paper: "
                f"{paper_drop:.1f} points)",
                drop,
                reference=0.0,
                expected="above",
            )
        )
        lines.append(
            claim_line(
                f"Truncating to F = {size} lowers the FPI (change below 0)",
                change,
                reference=0.0,
                expected="below",
                digits=2,
            )
        )
    report.paragraph("\n".join(lines))


# --------------------------------------------------------------------------------------
# Main.


def define_flags(flag_values: flags.FlagValues) -> None:
    """The flags of ``python -m experiments.feature_truncation`` besides ``--config``, ``--workdir``."""
    cli.define_models(flag_values, None, "Default: deeplab on the embedded data, else both.")
    cli.define_datasets(flag_values, None, "Default: the config's own (tiny.py: pascal).")
    cli.define_list(
        flag_values,
        "pruning_rates",
        None,
        "Encoder pruning rates; default: 0,0.4 on the embedded data, Table 2's four otherwise.",
        element=float,
    )
    cli.define_num_seeds(flag_values)
    cli.define_list(
        flag_values,
        "feature_sizes",
        PAPER_FEATURE_SIZES,
        "The paper's feature sizes to run.",
        element=int,
        choices=PAPER_FEATURE_SIZES,
    )
    flags.DEFINE_boolean(
        "full_size_flops",
        True,
        "Count the 513 x 513 ResNet-101 FLOPs of every cell (a few seconds per cell).",
        flag_values=flag_values,
    )


def main(argv: Sequence[str]) -> pathlib.Path:
    """Runs the grid on the command line ``argv``; returns the path of ``report.md``."""
    flag_values = cli.parse(argv, name="feature_truncation", doc=__doc__, define_flags=define_flags)
    config = flag_values.config
    embedded = runs.is_embedded(config)
    models = flag_values.models or (["deeplab"] if embedded else list(runs.MODEL_NAMES))
    datasets = flag_values.datasets or [runs.paper_dataset(config)]
    rates = flag_values.pruning_rates
    rates = rates or ([0.0, 0.4] if embedded else list(paper_values.PRUNING_RATES))
    sizes = flag_values.feature_sizes
    if 129 not in sizes or 0.0 not in rates:
        log("note: without the 0 %, 129 cell there is no baseline for the drops.")
    workdir = pathlib.Path(flag_values.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    grid = [(m, d, r, f) for m in models for d in datasets for r in rates for f in sizes]
    num_seeds = runs.num_seeds_of(flag_values.num_seeds, config)
    cells = []
    for index, (model, dataset, rate, size) in enumerate(grid):
        name = f"{model}_{dataset}_enc{round(100 * rate):02d}_f{size}"
        log(f"[{index + 1}/{len(grid)}] {name}, {num_seeds} seed(s)")
        cells.extend(
            run_cell(
                config,
                model=model,
                dataset=dataset,
                paper_feature_size=size,
                encoder_rate=rate,
                workdir=workdir / name,
                num_seeds=num_seeds,
                full_size=flag_values.full_size_flops,
            )
        )
    rows = table_rows(cells)
    spreads = spread_rows(rows)
    write_csv(workdir / "feature_truncation.csv", rows)
    write_csv(workdir / "feature_truncation_spread.csv", spreads)
    truncations = {}
    if 0.0 in rates and 129 in sizes:
        for model, dataset in [(m, d) for m in models for d in datasets]:
            log(f"{model}_{dataset}_enc00_f129: the same weights truncated")
            truncations[model, dataset] = untruncated_cell_truncation(
                config,
                model=model,
                dataset=dataset,
                workdir=workdir / f"{model}_{dataset}_enc00_f129",
                num_seeds=num_seeds,
            )
        same_weights = {f"{m}_{d}": t.to_json() for (m, d), t in truncations.items()}
        (workdir / "truncated_weights.json").write_text(json.dumps(same_weights, indent=1))
    path = write_report(
        workdir,
        spreads,
        rows,
        config_file=cli.config_file(flag_values),
        crop=int(config.crop_size),
        truncations=truncations,
    )
    print(path)
    return path


if __name__ == "__main__":
    cli.run(main)
