r"""Experiment 1: the spectrum of the cross-entropy (paper Sec. 3.1, Fig. 1, Fig. 2, Table 1).

Launch from the repository root::

  python -m experiments.ce_spectrum --workdir runs/ce_spectrum \
      --config experiments/configs/tiny.py --config.num_train_steps=100   # ~10 min, CPU
  python -m experiments.ce_spectrum --workdir runs/ce_spectrum_300    # tiny.py's 300 steps
  python -m experiments.ce_spectrum --workdir runs/ce_pascal \
      --config experiments/configs/pascal.py                             # GPU/TPU
  python -m experiments.ce_spectrum --workdir runs/ce_small --models=deeplab \
      --datasets=pascal --config.num_train_steps=1 --config.crop_size=33 \
      --config.eval_split='validation[:4]'                               # seconds

A config on the embedded data (``tiny.py``) runs the three embedded presets (or those
``--datasets`` names); a paper config (``pascal.py``, ``deepglobe.py``,
``cityscapes.py``) runs its own data set: one invocation per paper data set.

For every model (DeepLab v3+ and DAN) and data set, the script trains the model with
``--num_seeds`` seeds (:func:`experiments.runs.train_seeds`; 3 on the embedded data by
default) and evaluates each seed, at initialisation (the variables the trainer starts
from: same seed, same ``init_variables``) and after training, on the validation split:

* the band profile :math:`P(r) = \sum_{band(\nu) = r} \mathcal{L}_{ce}(\nu)` (Eq. 5,
  Chebyshev bands ``r = max(|nu_h|, |nu_w|)``),
* the relative discrepancy :math:`R(\nu_{max})` of the truncated CE (Eqs. 13-14) at every
  band limit, a ratio of means over the validation images (Table 1's convention),
* the class-averaged magnitude profiles :math:`|b(\nu)|` and :math:`|\hat y(\nu)|`
  (:func:`spectral_jax.magnitude_profiles`), normalised by their maxima in the figures
  as in Fig. 1,

all accumulated over the split with :class:`spectral_jax.SpectralStatistics`.

Grids. The paper evaluates 513 x 513 maps: bands 0..256, and ``R(256) = 0`` by
definition (the truncated CE at the Nyquist band is the CE). The embedded presets are
129 x 129: bands 0..64, so ``R(64) = 0`` exactly and the paper's ``nu_max = 256`` column
maps to our last band 64 (also 0). A band ``nu`` is ``nu`` cycles per image side on
both grids, so ``R(8)``, ``R(16)`` and ``R(32)`` compare the same frequencies of scenes
of the same layout; what lies above 64 cycles per image the 129 grid cannot hold.

The first command above was measured (one seed per setting) at about 10 minutes on 2 CPU
cores; with the default 3 seeds it takes about three times as long (``--num_seeds=1``
for the single-seed run): the three embedded presets x two models = six trainings per
seed of the tiny config (``resnet_tiny``
backbone, 65 x 65 crops, batch 8) of 100 steps instead of the config's 300, and
evaluation on the 50 validation scenes of each preset.

Table 1 gives R as mean ± std over the seeds with the 95 % t interval of the mean, and
the report says which of the paper's claims (the data sets' order, R falling with
nu_max, training lowering the low bands' CE) the intervals support, contradict or cannot
decide. Each model on each data set gets the section the demo shows for its one model
(:func:`model_section` of a :class:`ModelSpectra`).

Writes to ``--workdir``: ``report.md``; ``table1.csv`` (R at the paper's band limits,
ours per seed beside the paper's), ``table1_spread.csv`` (over seeds), ``profiles.csv``
(every curve of every seed, every band), ``summary.csv``;
``fig1_profiles.png`` (Fig. 1) and ``fig2_init_vs_trained.png`` (Fig. 2);
``spectrum_<model>_<dataset>.png`` (the figure of each model's section); ``runs.json``
(the trained runs and their configs, read by :mod:`experiments.band_limit_sweep`); one
training directory per model and data set and ``spectra/*.npz``. Rerunning resumes:
finished trainings and evaluations are read back.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags

from experiments import cli, paper_values, runs
from experiments.report import (
    DATASET_COLORS,
    MODEL_STYLES,
    Report,
    claim_line,
    format_spread,
    log,
    pyplot,
    write_csv,
)
from experiments.runs import DATASET_TITLES, MODEL_TITLES
from spectral_jax.evaluation import compute_spread

STAGES = ("init", "trained")


# --------------------------------------------------------------------------------------
# Evaluation.


def evaluate_spectra(model, variables, config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Spectral statistics of ``model`` over ``config.eval_split`` (float32 sums).

    Returns:
      ``band_profile``, ``relative_discrepancy``, ``label_magnitude`` and
      ``logit_magnitude``: ``[R]`` NumPy arrays (``R`` bands of the evaluation maps);
      scalars ``mean_ce``, ``parseval_error``, ``mean_iou`` and ``num_images``.
    """
    stats = runs.evaluate_model(
        model, variables, config, spectral_statistics=True, with_magnitudes=True
    ).statistics
    if stats is None:
        raise ValueError(f"evaluation split {config.eval_split!r} of {config.dataset} is empty.")
    magnitudes = stats.magnitude_profiles()
    return {
        "band_profile": np.asarray(stats.band_profile(), np.float64),
        "relative_discrepancy": np.asarray(stats.relative_discrepancy_curve(), np.float64),
        "label_magnitude": np.asarray(magnitudes.labels, np.float64),
        "logit_magnitude": np.asarray(magnitudes.logits, np.float64),
        "mean_ce": float(stats.mean_ce()),
        "parseval_error": float(stats.parseval_error()),
        "mean_iou": float(stats.mean_iou()),
        "num_images": int(stats.num_images),
    }


def _load_or_evaluate(path: pathlib.Path, evaluate) -> dict[str, Any]:
    if path.exists():
        with np.load(path) as data:
            return {k: (data[k] if data[k].ndim else data[k].item()) for k in data.files}
    result = evaluate()
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path.with_suffix(".tmp.npz"), **result)
    path.with_suffix(".tmp.npz").replace(path)
    return result


def run_cell(
    config: ml_collections.ConfigDict, *, workdir: pathlib.Path, name: str, num_seeds: int
) -> dict[str, Any]:
    """Trains (or reads back) one model with ``num_seeds`` seeds and evaluates each at
    initialisation and trained.

    Returns:
      ``summaries`` and ``seeds`` (per seed), ``per_seed`` (``[S]`` of ``{"init": ...,
      "trained": ...}``, :func:`evaluate_spectra`), the same as ``spectra``
      (:class:`ModelSpectra`, for :func:`model_section`), and the first seed's ``summary``,
      ``run_dir``, ``init`` and ``trained`` (the figures and the per-band CSV).
    """
    seed_runs = runs.train_seeds(config, workdir / name, num_seeds=num_seeds)
    model = runs.create_model(config)
    per_seed = []
    for k, seed in enumerate(seed_runs.seeds):
        results = {}
        for stage in STAGES:

            def evaluate(stage=stage, k=k, seed=seed):
                log(f"  {name}, seed {seed}: evaluating the {stage} model")
                if stage == "init":
                    variables = seed_runs.initial_variables(k, model)
                else:
                    variables = seed_runs.variables(k)
                return evaluate_spectra(model, variables, config)

            path = workdir / "spectra" / f"{name}_seed{seed}_{stage}.npz"
            results[stage] = _load_or_evaluate(path, evaluate)
        per_seed.append(results)
    return {
        "summary": seed_runs.summaries[0],
        "summaries": list(seed_runs.summaries),
        "seeds": list(seed_runs.seeds),
        "run_dir": str(seed_runs.seed_workdir(0)),
        "per_seed": per_seed,
        "spectra": ModelSpectra(per_seed),
        "init": per_seed[0]["init"],
        "trained": per_seed[0]["trained"],
    }


# --------------------------------------------------------------------------------------
# Tables.


def table_band_limits(num_bands: int) -> list[tuple[int, int]]:
    """``(paper nu_max, our nu_max)`` for Table 1's columns on a grid of ``num_bands``."""
    return [(nu, min(nu, num_bands - 1)) for nu in paper_values.TABLE1_BAND_LIMITS]


def table1_rows(cells: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """One CSV row per model, data set, stage, seed and Table 1 band limit."""
    rows = []
    for (model, dataset), cell in cells.items():
        for stage in STAGES:
            for seed, results in zip(cell["seeds"], cell["per_seed"], strict=True):
                sweep = results[stage]["relative_discrepancy"]
                paper = paper_values.TABLE1_RELATIVE_DISCREPANCY[model][dataset]
                for index, (nu, ours) in enumerate(table_band_limits(sweep.size)):
                    rows.append(
                        {
                            "model": model,
                            "dataset": dataset,
                            "stage": stage,
                            "seed": seed,
                            "paper_nu_max": nu,
                            "nu_max": ours,
                            "relative_discrepancy": float(sweep[ours]),
                            "paper_relative_discrepancy": paper[index]
                            if stage == "trained"
                            else "",
                        }
                    )
    return rows


def _r_values(cell: dict[str, Any], stage: str, band: int) -> list[float]:
    """``[S]`` R(band) of every seed of ``cell`` at ``stage``."""
    return [float(r[stage]["relative_discrepancy"][band]) for r in cell["per_seed"]]


def table1_spread_rows(cells: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, data set, stage and Table 1 band limit: R's spread over seeds."""
    rows = []
    for (model, dataset), cell in cells.items():
        for stage in STAGES:
            num_bands = cell[stage]["relative_discrepancy"].size
            paper = paper_values.TABLE1_RELATIVE_DISCREPANCY[model][dataset]
            for index, (nu, ours) in enumerate(table_band_limits(num_bands)):
                rows.append(
                    {
                        "model": model,
                        "dataset": dataset,
                        "stage": stage,
                        "paper_nu_max": nu,
                        "nu_max": ours,
                        **compute_spread(_r_values(cell, stage, ours)).columns(
                            "relative_discrepancy"
                        ),
                        "paper_relative_discrepancy": paper[index] if stage == "trained" else "",
                    }
                )
    return rows


def profile_rows(cells: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Every curve of every seed at every band: CE components, R, magnitudes (raw and
    normalised)."""
    rows = []
    for (model, dataset), cell in cells.items():
        for stage, (seed, results) in itertools.product(
            STAGES, zip(cell["seeds"], cell["per_seed"], strict=True)
        ):
            result = results[stage]
            labels, logits = result["label_magnitude"], result["logit_magnitude"]
            for band in range(result["band_profile"].size):
                rows.append(
                    {
                        "model": model,
                        "dataset": dataset,
                        "stage": stage,
                        "seed": seed,
                        "band": band,
                        "ce_component": float(result["band_profile"][band]),
                        "relative_discrepancy": float(result["relative_discrepancy"][band]),
                        "label_magnitude": float(labels[band]),
                        "logit_magnitude": float(logits[band]),
                        "label_magnitude_normalised": float(labels[band] / labels.max()),
                        "logit_magnitude_normalised": float(logits[band] / logits.max()),
                    }
                )
    return rows


def summary_rows(cells: dict[tuple[str, str], dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model, data set, seed and stage: mean CE, mIoU, Parseval error, trainer's R(16)."""
    rows = []
    for (model, dataset), cell in cells.items():
        seeds = zip(cell["seeds"], cell["summaries"], cell["per_seed"], strict=True)
        for seed, summary, results in seeds:
            trainer_r = summary.get("relative_discrepancy") or {}
            for stage in STAGES:
                result = results[stage]
                rows.append(
                    {
                        "model": model,
                        "dataset": dataset,
                        "stage": stage,
                        "seed": seed,
                        "steps": 0 if stage == "init" else summary["steps"],
                        "num_images": result["num_images"],
                        "mean_ce": result["mean_ce"],
                        "mean_iou": result["mean_iou"],
                        "parseval_error": result["parseval_error"],
                        "r16": float(result["relative_discrepancy"][16]),
                        "trainer_r16": trainer_r.get("16", "") if stage == "trained" else "",
                    }
                )
    return rows


# --------------------------------------------------------------------------------------
# Figures.


def _positive(values: np.ndarray) -> np.ndarray:
    """NaN where ``values <= 0`` (log axes): R is exactly 0 at the last band."""
    values = np.asarray(values, np.float64)
    return np.where(values > 0, values, np.nan)


def plot_profiles(cells, stage: str = "trained"):
    """Fig. 1: |b(nu)|, |y_hat(nu)| (normalised), |L_ce(nu)| and R(nu_max), log scale."""
    fig, axes = pyplot().subplots(1, 4, figsize=(19, 4.4), layout="constrained")
    seen_labels = set()
    for (model, dataset), cell in cells.items():
        result = cell[stage]
        bands = np.arange(result["band_profile"].size)
        color, style = DATASET_COLORS[dataset], MODEL_STYLES[model]
        tag = f"{model}, {dataset}"
        if dataset not in seen_labels:  # |b| does not depend on the model
            seen_labels.add(dataset)
            labels = result["label_magnitude"]
            axes[0].semilogy(bands, _positive(labels / labels.max()), color=color, label=dataset)
        logits = result["logit_magnitude"]
        axes[1].semilogy(bands, _positive(logits / logits.max()), style, color=color, label=tag)
        axes[2].semilogy(bands, np.abs(result["band_profile"]), style, color=color, label=tag)
        axes[3].semilogy(
            bands, _positive(result["relative_discrepancy"]), style, color=color, label=tag
        )
    titles = (
        "|b(ν)| / max (class-averaged)",
        "|ŷ(ν)| / max (class-averaged)",
        "|L_ce(ν)| summed over band ν",
        "R(ν_max)",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set(title=title, xlabel="ν_max" if ax is axes[3] else "band ν")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="x-small")
    return fig


def plot_init_vs_trained(cells):
    """Fig. 2: |L_ce(nu)| and R(nu_max) at initialisation and after training, per data set."""
    datasets = list(dict.fromkeys(dataset for _, dataset in cells))
    fig, axes = pyplot().subplots(
        2, len(datasets), figsize=(5.5 * len(datasets), 7.5), layout="constrained", squeeze=False
    )
    for (model, dataset), cell in cells.items():
        column = datasets.index(dataset)
        for stage, alpha in (("trained", 1.0), ("init", 0.55)):
            result = cell[stage]
            bands = np.arange(result["band_profile"].size)
            label = model if stage == "trained" else f"{model}_init"
            style = MODEL_STYLES[model] if stage == "trained" else ":"
            color = "C0" if model == "deeplab" else "C1"
            axes[0, column].semilogy(
                bands, np.abs(result["band_profile"]), style, color=color, alpha=alpha, label=label
            )
            axes[1, column].semilogy(
                bands,
                _positive(result["relative_discrepancy"]),
                style,
                color=color,
                alpha=alpha,
                label=label,
            )
        axes[0, column].set(title=f"{DATASET_TITLES[dataset]}: |L_ce(ν)|", xlabel="band ν")
        axes[1, column].set(title=f"{DATASET_TITLES[dataset]}: R(ν_max)", xlabel="ν_max")
    for ax in axes.ravel():
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="x-small")
    return fig


# --------------------------------------------------------------------------------------
# Report.


def _cell_text(values: Sequence[float], paper: float | None) -> str:
    ours = format_spread(compute_spread(values))
    return ours if paper is None else f"{ours} ({paper:.3f})"


def _table1_markdown(report: Report, cells, stage: str) -> None:
    any_cell = next(iter(cells.values()))
    limits = table_band_limits(any_cell[stage]["relative_discrepancy"].size)
    header = ["model", "data set"] + [
        f"ν={nu}" if nu == ours else f"ν={nu} (ours {ours})" for nu, ours in limits
    ]
    rows = []
    for (model, dataset), cell in cells.items():
        paper = paper_values.TABLE1_RELATIVE_DISCREPANCY[model][dataset]
        rows.append(
            [MODEL_TITLES[model], DATASET_TITLES[dataset]]
            + [
                _cell_text(_r_values(cell, stage, ours), paper[i] if stage == "trained" else None)
                for i, (_, ours) in enumerate(limits)
            ]
        )
    report.table(header, rows)


def _order(values: dict[str, float]) -> str:
    return " > ".join(DATASET_TITLES[d] for d in sorted(values, key=values.get, reverse=True))


def _difference(first: Sequence[float], second: Sequence[float]):
    """The spread of ``first[k] - second[k]`` (paired by seed, or by seed index)."""
    return compute_spread([a - b for a, b in zip(first, second, strict=True)])


def _falls_claim(
    label: str, low: int, high: int, r_low: Sequence[float], r_high: Sequence[float]
) -> str:
    """Table 1's claim that R falls from ``nu_max = low`` to ``high``, paired by seed."""
    return claim_line(
        f"{label}: R falls from ν_max = {low} to {high} (R({low}) − R({high}) above 0)",
        _difference(r_low, r_high),
        reference=0.0,
        expected="above",
        digits=4,
    )


def _observations(cells) -> list[str]:
    """What the intervals over seeds say of Table 1's order of the data sets, per model.

    Empty where no model ran on two or more data sets. The claims of one model on one data
    set are in its :func:`model_section`.
    """
    lines = []
    for model in dict.fromkeys(m for m, _ in cells):
        datasets = [d for m, d in cells if m == model]
        if len(datasets) > 1:
            for nu in (8, 16):
                ours = {
                    d: float(np.mean(_r_values(cells[model, d], "trained", nu))) for d in datasets
                }
                paper = {
                    d: paper_values.table1_relative_discrepancy(model, d, nu) for d in datasets
                }
                same = _order(ours) == _order(paper)
                lines.append(
                    f"- {MODEL_TITLES[model]}, R({nu}), means over seeds: ours {_order(ours)}, "
                    f"paper {_order(paper)} ({'same order' if same else 'different order'})."
                )
                ranked = sorted(datasets, key=lambda d: paper[d], reverse=True)
                for high, low in zip(ranked, ranked[1:], strict=False):
                    lines.append(
                        claim_line(
                            f"Table 1, {MODEL_TITLES[model]}: R({nu}) of {DATASET_TITLES[high]} "
                            f"above {DATASET_TITLES[low]}'s (difference by seed index above 0)",
                            _difference(
                                _r_values(cells[model, high], "trained", nu),
                                _r_values(cells[model, low], "trained", nu),
                            ),
                            reference=0.0,
                            expected="above",
                            digits=4,
                        )
                    )
    return lines


def _differences(cells) -> str:
    """The explanation of the differences, with the direction taken from the numbers."""
    trained = [(m, d) for m, d in cells]
    below = sum(
        float(np.mean(_r_values(cells[key], "trained", 16)))
        < paper_values.table1_relative_discrepancy(*key, 16)
        for key in trained
    )
    steps = next(iter(cells.values()))["summary"]["steps"]
    return (
        f"Our mean over seeds is below the paper's R(16) in {below} of {len(trained)} cases. "
        "Why the "
        "numbers differ. (1) Models and training: the tiny config's `resnet_tiny` "
        "backbone with 16-channel ASPP/decoder, trained from scratch for "
        f"{steps} steps, against ImageNet ResNet-101 models trained for 100-600 "
        "epochs. A component L_ce(ν) = Re Σ_c conj(b(ν, c)) ŷ(ν, c) needs both the labels "
        "and the prediction's negative log-probabilities to have energy at ν. A briefly "
        "trained model predicts smooth maps that are wrong over whole regions: its "
        "ŷ(ν) is small at high ν, its CE sits in the lowest bands, and R at a fixed band "
        "limit is small, whatever the labels' fine structure. A well trained model is "
        "right inside regions and uncertain only along boundaries, so its CE moves to "
        "the boundaries' frequencies and R grows: the paper's R(8) of 0.1-2 are those of "
        "such models. The order of the data sets follows the same logic: our short "
        "Cityscapes-like runs (mIoU about 0.25) have not learnt the poles and small "
        "objects at all, so those errors sit at low frequencies. With a prediction "
        "that is sharp at the pixel scale (the ground truth blurred by 1 pixel, "
        "`spectral_jax.data.synthetic` and `notebooks/band_limit_sweeps.ipynb`) the "
        "presets do reproduce Table 1's order: R(16) = 0.213, 0.056 and 0.028 for the "
        "Cityscapes-, PASCAL- and DeepGlobe-like scenes. (2) Initial stage: the paper's "
        "has a pretrained encoder, ours is random, so our initial models predict nearly "
        "constant maps and nearly all of their CE is at ν = 0. Training does not lower "
        "the ν = 0 component itself (in the tiny run it stays or grows); the components "
        "at ν = 1-10 become large and negative as the predictions acquire structure, so "
        "the CE summed over bands 0-8 (the low-frequency part) falls to a fraction of "
        "its initial value, Fig. 2's observation. "
        "(3) Data: generated scenes that mimic the "
        "label spectra of the three data sets, 129 x 129 instead of 513 x 513, 50 "
        "validation images each. (4) Grid: our last band is 64 (see Table 1's note). "
        "What carries over is the shape of the curves: |b(ν)|, |ŷ(ν)| and |L_ce(ν)| fall "
        "by decades from ν = 0 to ν ≈ 10-15, and R(ν_max) is small above ν ≈ 10 for every "
        "trained model."
    )


def _summary_cells(row: dict[str, Any]) -> list[Any]:
    keys = ("model", "dataset", "stage", "seed", "steps", "num_images", "mean_ce", "mean_iou")
    trainer = row["trainer_r16"]
    return [
        *(row[key] for key in keys),
        f"{row['parseval_error']:.1e}",
        f"{row['r16']:.4f}",
        "-" if trainer == "" else f"{trainer:.4f}",
    ]


def write_report(
    workdir: pathlib.Path, cells, *, config_file: str, command: str, seconds: float
) -> pathlib.Path:
    """``report.md`` with Table 1, the summary, both figures and the comparison."""
    report = Report(workdir, "Experiment 1: the spectrum of the cross-entropy")
    any_cell = next(iter(cells.values()))
    num_bands = any_cell["trained"]["band_profile"].size
    size = 2 * (num_bands - 1) + 1
    models = ", ".join(dict.fromkeys(model for model, _ in cells))
    datasets = ", ".join(dict.fromkeys(dataset for _, dataset in cells))
    report.paragraph(
        f"Config `{config_file}`, models {models}, data sets "
        f"{datasets}; {any_cell['summary']['steps']} training steps per "
        f"model; evaluation on `{any_cell['trainer_config'].eval_split}` "
        f"({any_cell['trained']['num_images']} images of about {size} x {size}: bands "
        f"0..{num_bands - 1}). Wall time of this invocation: {seconds:.0f} s on "
        f"{jax.devices()[0].platform} ({jax.device_count()} device(s)).\n\n"
        f"Command: `{command}`"
    )
    num_seeds = len(any_cell["seeds"])
    report.heading("Table 1: R(ν_max) of the trained models, ours (paper)")
    report.paragraph(
        "R is a ratio of means over the validation images (Eq. 14). The paper's grid is "
        f"513 x 513 (bands up to 256); ours is {size} x {size} (bands up to "
        f"{num_bands - 1}), so every column at or above ν = {num_bands - 1} is our full "
        f"CE and reads exactly 0: the paper's R(64) (about 0.01) is CE at 64-256 cycles "
        "per image that a 129 grid cannot represent. A band ν is ν cycles per image side "
        "on both grids, so ν = 8, 16, 32 compare like with like. Ours: mean ± std over "
        f"{num_seeds} seed(s) with the 95 % t interval of the mean."
    )
    _table1_markdown(report, cells, "trained")
    report.heading("R(ν_max) at initialisation (the paper gives no table)")
    _table1_markdown(report, cells, "init")
    report.heading("Summary")
    header = ["model", "data set", "stage", "seed", "steps", "images", "mean CE", "mIoU"]
    header += ["Parseval error", "R(16)", "R(16), trainer's evaluation"]
    report.table(header, [_summary_cells(row) for row in summary_rows(cells)])
    report.paragraph(
        "The Parseval error is |Σ_ν L_ce(ν) − CE| / CE of the float32 decomposition: R "
        "values far above it are resolved. The last column is R(16) from the trainer's "
        "own end-of-training evaluation, an independent pass over the same split: it "
        "must equal ours."
    )
    fig1 = plot_profiles(cells)
    report.figure(
        fig1,
        "fig1_profiles.png",
        "Fig. 1 (trained models): class-averaged |b(ν)| and |ŷ(ν)| normalised by their "
        "maxima, |L_ce(ν)| per band and R(ν_max), log scale; colour = data set, solid = "
        "DeepLab v3+, dashed = DAN. Bands where L_ce is negative are plotted by magnitude.",
    )
    fig2 = plot_init_vs_trained(cells)
    report.figure(
        fig2,
        "fig2_init_vs_trained.png",
        "Fig. 2: |L_ce(ν)| and R(ν_max) at initialisation (dotted, *_init) and after "
        "training, per data set.",
    )
    report.heading("Per model and data set")
    report.paragraph(
        "Each model on each data set at initialisation and trained: the first seed's R "
        "beside Table 1's row and its profiles (band profile, R(ν_max), magnitudes), then "
        "R over the seeds and what the intervals say of the paper's claims (a one-seed "
        "run cannot decide any)."
    )
    for (model, dataset), cell in cells.items():
        model_section(
            report,
            cell["spectra"],
            heading=f"{MODEL_TITLES[model]}, {DATASET_TITLES[dataset]}",
            title=f"{MODEL_TITLES[model]} (seed {cell['seeds'][0]})",
            model=model,
            dataset=dataset,
            figure=f"spectrum_{model}_{dataset}.png",
            heading_level=3,
            describe_grids=False,
        )
    report.heading("Ours against the paper")
    order_lines = _observations(cells)
    if order_lines:
        report.paragraph(
            "What the intervals over seeds say of Table 1's order of the data sets:\n"
            + "\n".join(order_lines)
        )
    report.paragraph(_differences(cells))
    report.heading("Files")
    report.paragraph(
        "`table1.csv` (R at the paper's band limits, ours per seed and the paper's), "
        "`table1_spread.csv` (R's mean, std and 95 % interval over seeds), "
        "`profiles.csv` (every curve of every seed at every band, raw and normalised "
        "magnitudes), "
        "`summary.csv`, `spectrum_<model>_<data set>.png` (the figure of each model and "
        "data set), `runs.json` (trained runs and configs, for "
        "`experiments.band_limit_sweep --from_ce_spectrum`), `spectra/*.npz`, one "
        "training directory per model and data set (one sub-directory per seed)."
    )
    return report.write()


# --------------------------------------------------------------------------------------
# One model at initialisation and trained, beside the paper's row: the demo's section and
# each cell's section of the grid report.

#: Table 1's band limits that a 129 x 129 grid holds (with its last band, R = 0).
MODEL_BAND_LIMITS = (8, 16, 32)
#: The paper's name of each data set, in the sections' text.
PAPER_DATASET_NAMES = {"pascal": "PASCAL VOC", "deepglobe": "DeepGlobe", "cityscapes": "Cityscapes"}


def r_row(discrepancy: np.ndarray) -> list[float]:
    """``R`` at :data:`MODEL_BAND_LIMITS` and at the last band (the Nyquist band)."""
    return [float(discrepancy[nu]) for nu in MODEL_BAND_LIMITS] + [float(discrepancy[-1])]


def paper_r_row(model: str, dataset: str) -> list[float]:
    """Table 1's ``R`` of ``model`` on ``dataset`` at :data:`MODEL_BAND_LIMITS` and 256.

    Raises:
      ValueError: for a model or data set that Table 1 does not have.
    """
    if model not in paper_values.TABLE1_RELATIVE_DISCREPANCY:
        raise ValueError(f"model must be one of {paper_values.MODELS}, got {model!r}.")
    if dataset not in paper_values.TABLE1_RELATIVE_DISCREPANCY[model]:
        raise ValueError(f"dataset must be one of {paper_values.DATASETS}, got {dataset!r}.")
    return [
        paper_values.table1_relative_discrepancy(model, dataset, nu)
        for nu in (*MODEL_BAND_LIMITS, 256)
    ]


def _grid_size(num_bands: int) -> int:
    """Side of the (odd) evaluation maps whose Chebyshev bands are ``0 .. num_bands - 1``."""
    return 2 * (num_bands - 1) + 1


def _sign_sentence(profile: np.ndarray, discrepancy: np.ndarray) -> str:
    """Where the trained band profile is negative, and where R(nu_max) has its minimum."""
    negative = np.flatnonzero(profile < 0)
    if negative.size == 0:
        return "Every band of the trained profile is positive, so R falls monotonically."
    # The dip: where the cumulative sum, pushed above the CE by the positive low bands,
    # is brought back across it by the negative ones.
    window = discrepancy[: min(int(negative.max()) + 2, discrepancy.size - 1)]
    low = int(np.argmin(window))
    return (
        f"{negative.size} bands of the trained profile are negative (x in the figure, "
        f"between bands {negative.min()} and {negative.max()}): the truncated CE overshoots "
        f"the CE at small ν_max and R(ν_max) is not monotone (it dips to "
        f"{discrepancy[low]:.4f} at ν_max = {low}, where the truncated CE crosses the CE)."
    )


def _compare_with_paper(
    initial: np.ndarray, trained: np.ndarray, *, model: str, dataset: str
) -> str:
    """Sentences that read the R table: training's effect and the ratio to the paper."""
    paper = paper_r_row(model, dataset)
    parts = []
    for k, nu in enumerate(MODEL_BAND_LIMITS):
        change = "fell" if trained[nu] < initial[nu] else "rose"
        ratio = trained[nu] / paper[k]
        parts.append(
            f"R({nu}) {change} from {initial[nu]:.3f} to {trained[nu]:.3f} in training "
            f"({ratio:.2g} x the paper's {paper[k]:.3f})"
        )
    size = _grid_size(trained.size)
    paper_miou = paper_values.MIOU_BY_MODEL[model][0.0][dataset][0]
    return (
        "; ".join(parts) + ". At initialisation the logits hardly depend on the position, so "
        "the CE sits at the lowest bands and R is small; a model that learns the objects "
        "moves its remaining error to their boundaries, which are high frequencies. How far "
        "R moves depends on how well the model has learnt: a tiny model trained for minutes "
        f"on {size} x {size} scenes is far from the paper's ResNet-101 "
        f"({paper_miou} % mIoU on {PAPER_DATASET_NAMES[dataset]})."
    )


def _plot_model(spectra: dict[str, dict[str, Any]], *, model: str, dataset: str):
    """Band profile, R(nu_max) (the paper's row as circles) and magnitude profiles."""
    fig, axes = pyplot().subplots(1, 3, figsize=(15, 4), layout="constrained")
    for k, (stage, result) in enumerate(spectra.items()):
        profile, r = result["band_profile"], result["relative_discrepancy"]
        bands = np.arange(profile.size)
        axes[0].semilogy(bands, np.abs(profile), color=f"C{k}", label=f"{stage} |P(r)|")
        negative = profile < 0
        axes[0].semilogy(bands[negative], -profile[negative], "x", color=f"C{k}", ms=4)
        shown = r > 0
        axes[1].semilogy(bands[shown], r[shown], color=f"C{k}", label=stage)
        for name, key, style in (("|b|", "label_magnitude", "-"), ("|ŷ|", "logit_magnitude", "--")):
            curve = result[key]
            label = f"{stage} {name}"
            axes[2].semilogy(bands, curve / curve.max(), style, color=f"C{k}", label=label)
    paper = paper_r_row(model, dataset)[:3]
    label = f"paper, {DATASET_TITLES[dataset]} (Table 1)"
    axes[1].semilogy(MODEL_BAND_LIMITS, paper, "o", mfc="none", color="k", label=label)
    axes[0].set(title="band profile (x: negative)", xlabel="band r", ylabel="|Σ L_ce| per band")
    axes[1].set(title="relative discrepancy R(ν_max)", xlabel="ν_max", ylabel="R")
    axes[2].set(title="magnitude profiles (÷ max)", xlabel="band r")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    return fig


@dataclasses.dataclass(frozen=True)
class ModelSpectra:
    """The CE spectra of one model trained with several seeds, at initialisation and trained.

    Attributes:
      per_seed: ``[S]`` of ``{"init": ..., "trained": ...}``, each :func:`evaluate_spectra`
        of that seed's model on the validation scenes of one data set.
    """

    per_seed: Sequence[dict[str, dict[str, Any]]]

    def r_per_seed(self) -> dict[str, dict[str, list[float]]]:
        """``{stage: {"8": [S], ...}}``: R at :data:`MODEL_BAND_LIMITS` of every seed."""
        return {
            stage: {
                str(nu): [float(s[stage]["relative_discrepancy"][nu]) for s in self.per_seed]
                for nu in MODEL_BAND_LIMITS
            }
            for stage in STAGES
        }

    def to_json(self) -> dict[str, Any]:
        """The section's numbers.

        Per stage, of the first seed: ``relative_discrepancy`` and ``band_profile`` (lists
        over the bands), ``mean_ce``, ``parseval_error`` and ``table`` (R at 8, 16, 32 and
        the last band, keyed "8", "16", "32" and the last band, "64" on 129 x 129 maps);
        ``seeds``: ``{stage: {"8": spread columns, ...}}``
        (:meth:`~spectral_jax.evaluation.Spread.columns` named ``relative_discrepancy``)
        and ``per_seed``: ``{stage: {"8": [S]}}``.
        """
        numbers: dict[str, Any] = {}
        for stage, result in self.per_seed[0].items():
            discrepancy = result["relative_discrepancy"]
            keys = [*map(str, MODEL_BAND_LIMITS), str(discrepancy.size - 1)]
            numbers[stage] = {
                "relative_discrepancy": discrepancy.tolist(),
                "band_profile": result["band_profile"].tolist(),
                "mean_ce": result["mean_ce"],
                "parseval_error": result["parseval_error"],
                "table": dict(zip(keys, r_row(discrepancy), strict=True)),
            }
        per_seed = self.r_per_seed()
        numbers["seeds"] = {
            "per_seed": per_seed,
            **{
                stage: {
                    nu: compute_spread(values).columns("relative_discrepancy")
                    for nu, values in by_band.items()
                }
                for stage, by_band in per_seed.items()
            },
        }
        return numbers


def model_section(
    report: Report,
    spectra: ModelSpectra,
    *,
    heading: str,
    title: str,
    model: str,
    dataset: str,
    figure: str,
    heading_level: int = 2,
    describe_grids: bool = True,
) -> None:
    """Adds the CE spectrum of one model at initialisation and trained, beside Table 1.

    The first seed's band profile, R(nu_max) beside Table 1's row of ``model`` on
    ``dataset`` and magnitude profiles; then R(nu_max) at 8 / 16 / 32 over the seeds, and
    what the intervals say of the paper's claims (R falls with nu_max; training moves the
    CE to higher frequencies and lowers its low bands, Fig. 2).

    Args:
      report: the report to add the section to.
      spectra: the model's spectra, every seed.
      heading: the section's heading.
      title: the model's name in the table.
      model: the paper's model the row of Table 1 is taken from (``"deeplab"``, ``"dan"``).
      dataset: the paper's data set the model was evaluated on (or whose preset).
      figure: file name of the section's figure (PNG).
      heading_level: Markdown level of ``heading``.
      describe_grids: whether to open with the paragraph on the CE components and the
        two grids (a report with a section per model says it once, above them).

    Raises:
      ValueError: for a model or data set that Table 1 does not have.
    """
    paper_r_row(model, dataset)  # checks both before anything is added
    _first_seed_part(
        report,
        spectra.per_seed[0],
        heading=heading,
        title=title,
        model=model,
        dataset=dataset,
        figure=figure,
        heading_level=heading_level,
        describe_grids=describe_grids,
    )
    _seeds_part(report, spectra, model=model, dataset=dataset)


def _grids_paragraph(report: Report, num_bands: int, *, model: str, dataset: str) -> None:
    """What the CE components and R are, and how our grid compares with the paper's."""
    size, last = _grid_size(num_bands), num_bands - 1
    text = (
        "CE components L_ce(ν) (Eq. 5) summed per Chebyshev band r = max(|ν_h|, |ν_w|) and "
        "averaged over the validation scenes; R(ν_max) (Eq. 14) is a ratio of means over "
        "the scenes (Table 1's convention), from `SpectralStatistics`. Grids: the paper's "
        f"maps are 513 x 513 (bands 0..256), ours {size} x {size} (bands 0..{last}). A band "
        f"ν is ν cycles per image side on both grids and a {size} scene stands for a whole "
        f"513 crop of a {PAPER_DATASET_NAMES[dataset]} image, so ν_max = 8, 16, 32 compare "
        "the same frequencies; the highest band of each grid (paper 256, ours "
        f"{last}) holds the whole CE, R = 0 by definition."
    )
    if last <= 64:  # the paper's R(64) is CE our grid cannot hold
        r64 = paper_values.table1_relative_discrepancy(model, dataset, 64)
        text += f" The paper's R(64) = {r64:.3f} has no counterpart below our Nyquist band."
    report.paragraph(text)


def _first_seed_part(
    report: Report,
    spectra: dict[str, dict[str, Any]],
    *,
    heading: str,
    title: str,
    model: str,
    dataset: str,
    figure: str,
    heading_level: int,
    describe_grids: bool,
) -> None:
    """The heading, the R table beside the paper's, and the figure of one seed's model."""
    report.heading(heading, heading_level)
    num_bands = spectra["trained"]["relative_discrepancy"].size
    if describe_grids:
        _grids_paragraph(report, num_bands, model=model, dataset=dataset)
    header = ["model", "mean CE", "R(8)", "R(16)", "R(32)", f"R(Nyquist: 256 / {num_bands - 1})"]
    rows = [
        [f"{title}, {stage}", result["mean_ce"], *r_row(result["relative_discrepancy"])]
        for stage, result in spectra.items()
    ]
    paper_title = f"{MODEL_TITLES[model]} (paper, Table 1, {DATASET_TITLES[dataset]})"
    rows.append([paper_title, None, *paper_r_row(model, dataset)])
    report.table(header, rows)
    errors = ", ".join(f"{r['parseval_error']:.1e} ({stage})" for stage, r in spectra.items())
    init, trained = spectra["init"], spectra["trained"]
    comparison = _compare_with_paper(
        init["relative_discrepancy"], trained["relative_discrepancy"], model=model, dataset=dataset
    )
    report.paragraph(
        f"Decomposition check: |Σ_ν L_ce(ν) − CE| / CE = {errors}. "
        + comparison
        + " "
        + _sign_sentence(trained["band_profile"], trained["relative_discrepancy"])
    )
    report.figure(
        _plot_model(spectra, model=model, dataset=dataset),
        figure,
        f"Band profile, R(ν_max) (paper's {DATASET_TITLES[dataset]} row as circles) and "
        "class-averaged |b(ν)|, |ŷ(ν)| at initialisation and after training.",
    )


def _seeds_part(report: Report, spectra: ModelSpectra, *, model: str, dataset: str) -> None:
    """R(nu_max) at 8 / 16 / 32 over seeds, and what the intervals say of the paper."""
    per_seed = spectra.r_per_seed()
    spreads = {
        stage: {nu: compute_spread(values) for nu, values in by_band.items()}
        for stage, by_band in per_seed.items()
    }
    paper = paper_r_row(model, dataset)
    rows = [
        [stage, *(format_spread(spreads[stage][str(nu)], 4) for nu in MODEL_BAND_LIMITS)]
        for stage in STAGES
    ]
    rows.append([f"paper (Table 1, {DATASET_TITLES[dataset]})", *paper[: len(MODEL_BAND_LIMITS)]])
    report.paragraph(
        f"R(ν_max) over {len(spectra.per_seed)} seeds (mean ± std, 95 % t interval of the "
        "mean); the table and figure above are the first seed's."
    )
    report.table(["stage", *(f"R({nu})" for nu in MODEL_BAND_LIMITS)], rows, digits=4)
    trained = per_seed["trained"]
    lines = ["What the intervals say of the paper's claims (paired by seed):"]
    for low, high in zip(MODEL_BAND_LIMITS, MODEL_BAND_LIMITS[1:], strict=False):
        lines.append(_falls_claim("Table 1", low, high, trained[str(low)], trained[str(high)]))
    lines.append(
        claim_line(
            "Fig. 2: training moves the CE to higher frequencies (R(16) trained − init above 0)",
            _difference(trained["16"], per_seed["init"]["16"]),
            reference=0.0,
            expected="above",
            digits=4,
        )
    )
    ratios = [
        np.sum(s["trained"]["band_profile"][:9]) / np.sum(s["init"]["band_profile"][:9])
        for s in spectra.per_seed
    ]
    lines.append(
        claim_line(
            "Fig. 2: training lowers the CE of bands 0-8 (trained / initial below 1)",
            compute_spread(ratios),
            reference=1.0,
            expected="below",
        )
    )
    report.paragraph("\n".join(lines))


# --------------------------------------------------------------------------------------
# Main.


def define_flags(flag_values: flags.FlagValues) -> None:
    """The flags of ``python -m experiments.ce_spectrum`` besides ``--config``, ``--workdir``."""
    cli.define_models(flag_values, paper_values.MODELS)
    cli.define_datasets(
        flag_values, None, "Default: all three on the embedded data, else the config's own."
    )
    cli.define_num_seeds(flag_values)


def main(argv: Sequence[str]) -> pathlib.Path:
    """Runs the experiment on the command line ``argv``; returns the path of ``report.md``."""
    flag_values = cli.parse(argv, name="ce_spectrum", doc=__doc__, define_flags=define_flags)
    start = time.perf_counter()
    workdir = pathlib.Path(flag_values.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    datasets = flag_values.datasets or runs.datasets_of(flag_values.config)
    grid = [(model, dataset) for model in flag_values.models for dataset in datasets]
    num_seeds = runs.num_seeds_of(flag_values.num_seeds, flag_values.config)
    cells, manifest = {}, []
    for index, (model, dataset) in enumerate(grid):
        name = f"{model}_{dataset}"
        log(f"[{index + 1}/{len(grid)}] {name}, {num_seeds} seed(s)")
        config = runs.experiment_config(flag_values.config, model=model, dataset=dataset)
        cell = run_cell(config, workdir=workdir, name=name, num_seeds=num_seeds)
        cell["trainer_config"] = config
        cells[model, dataset] = cell
        # The first seed's run, for experiments.band_limit_sweep --from_ce_spectrum.
        run_dir = str(pathlib.Path(cell["run_dir"]).relative_to(workdir))
        manifest.append(
            {
                "model": model,
                "dataset": dataset,
                "run_dir": run_dir,
                "config": runs.seed_config(config, cell["seeds"][0]).to_dict(),
            }
        )
    (workdir / "runs.json").write_text(json.dumps(manifest, indent=2))
    write_csv(workdir / "table1.csv", table1_rows(cells))
    write_csv(workdir / "table1_spread.csv", table1_spread_rows(cells))
    write_csv(workdir / "profiles.csv", profile_rows(cells))
    write_csv(workdir / "summary.csv", summary_rows(cells))
    path = write_report(
        workdir,
        cells,
        config_file=cli.config_file(flag_values),
        command=cli.command("ce_spectrum", argv),
        seconds=time.perf_counter() - start,
    )
    print(path)
    return path


if __name__ == "__main__":
    cli.run(main)
