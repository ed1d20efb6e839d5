"""Experiment 4 (block-wise annotation): rank correlation, band limits and the script's outputs.

The end-to-end test runs ``main`` on the smallest setting (one data set, band limits 4
and 8 plus pixel-wise, 2 training steps, 33-pixel crops) and checks the outputs against
independent computations: relative IoU from the CSV's own mIoU, R(nu_max) recomputed in
float64 NumPy (``tests/helpers/references.py``) from the restored pixel-wise model's logits, the
rank correlation against ``scipy.stats.spearmanr``, the example figure's block-wise labels
against :func:`spectral_jax.blockwise_annotation_numpy` and its predictions against the
restored models.
"""

from __future__ import annotations

import csv
import json

import jax
import numpy as np
import pytest
import scipy.stats

from experiments import blockwise_annotation as bw
from experiments import cli, paper_values, runs
from experiments.configs import tiny
from spectral_jax.blockwise import blockwise_annotation_numpy
from spectral_jax.data import create_input_pipeline
from spectral_jax.evaluation import bootstrap_spearman
from tests.helpers import references
from tests.helpers.outputs import read_csv


def test_paper_correlation_matches_scipy():
    (paper,) = [c for c in bw.correlation_rows([]) if c["source"] == "paper"]
    x = [
        paper_values.TABLE1_RELATIVE_DISCREPANCY[m][d][paper_values.TABLE1_BAND_LIMITS.index(nu)]
        for m in paper_values.MODELS
        for d in paper_values.DATASETS
        for nu in (8, 16, 32)
    ]
    y = [
        paper_values.TABLE3_RELATIVE_MIOU[m][d][paper_values.TABLE3_BAND_LIMITS.index(nu)]
        for m in paper_values.MODELS
        for d in paper_values.DATASETS
        for nu in (8, 16, 32)
    ]
    assert paper["points"] == 18
    np.testing.assert_allclose(paper["spearman"], scipy.stats.spearmanr(x, y).statistic)
    assert paper["spearman_ci_low"] <= paper["spearman"] <= paper["spearman_ci_high"]
    assert paper["spearman"] < -0.8  # the paper's claim: larger R, lower relative IoU


@pytest.mark.parametrize(
    ("band_limit", "crop", "eval_size", "expected"),
    [(2, 65, 129, 1), (4, 65, 129, 2), (8, 65, 129, 4), (16, 513, 513, 16), (4, 33, 129, 1)],
)
def test_training_band_limit_keeps_the_block_size(band_limit, crop, eval_size, expected):
    assert bw.training_band_limit(band_limit, crop_size=crop, eval_size=eval_size) == expected
    # Blocks on the crop within a factor of 2 of those on the evaluation grid.
    block_eval = eval_size / (2 * band_limit + 1)
    block_crop = crop / (2 * expected + 1)
    assert 0.5 < block_crop / block_eval < 2


def test_paper_band_limit():
    assert [bw.paper_band_limit(nu, 129) for nu in (2, 4, 8, 3)] == [8, 16, 32, None]
    assert bw.paper_band_limit("pixel", 129) == 256
    assert bw.paper_band_limit(16, 513) == 16


def test_read_ce_spectrum(tmp_path):
    fields = ("model", "dataset", "stage", "band_limit", "relative_discrepancy")
    values = [
        ("deeplabv3plus", "synthetic_scenes/pascal_like", "trained", "4", "0.5"),
        ("deeplabv3plus", "synthetic_scenes/pascal_like", "init", "4", "9.0"),
        ("dan", "cityscapes", "final", "8", "0.25"),
    ]
    rows = [dict(zip(fields, row, strict=True)) for row in values]
    with open(tmp_path / "table1.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert bw.read_ce_spectrum(tmp_path) == {
        ("deeplab", "pascal", 4): 0.5,
        ("dan", "cityscapes", 8): 0.25,
    }
    with pytest.raises(ValueError, match="from_ce_spectrum"):
        bw.read_ce_spectrum(tmp_path / "missing")


def _restored_logits(workdir, band_limit, data_dir):
    """Logits ``[N, H, W, C]`` and labels ``[N, H, W]`` of a run's model on the validation set."""
    config = tiny.get_config()
    config.update(crop_size=33, batch_size=4, eval_batch_size=4, data_dir=data_dir)
    config = runs.experiment_config(config, model="deeplab", dataset="pascal", self_evaluated=True)
    run = workdir / bw._run_name("deeplab", "pascal", band_limit) / "seed0"
    model, variables = runs.restore_trained(config, run)
    apply = jax.jit(model.apply)
    logits, labels = [], []
    for batch in create_input_pipeline(config).eval_batches(4, 0, 1):
        logits.append(np.asarray(apply(variables, batch["image"]), np.float64))
        labels.append(batch["label"])
    return np.concatenate(logits), np.concatenate(labels)


def _check_cell_section(text, rows, bands):
    """The DeepLab v3+ / pascal section's Table 3 rows are the spreads over the two seeds
    of the per-seed CSV ``rows`` (``{(band, seed): row}``), recomputed in NumPy, and its
    Fig. 6 line the cell's rank correlation (scipy)."""
    (section,) = text.split("### DeepLab v3+ on pascal (synthetic_scenes/pascal_like)")[1:]
    section = section.split("\n## ")[0]

    def spread_text(name, band):
        values = np.array([float(rows[band, s][name]) for s in ("0", "1")])
        half = scipy.stats.t.ppf(0.975, 1) * values.std(ddof=1) / np.sqrt(2)
        numbers = [values.mean(), values.std(ddof=1), values.mean() - half, values.mean() + half]
        mean, std, low, high = (f"{v:.3f}".replace("-", "−") for v in numbers)
        return f"{mean} ± {std} (95 % CI {low} to {high}, n=2)"

    for band, crop_band, paper_band, paper_index in bands:
        paper_relative = paper_values.TABLE3_RELATIVE_MIOU["deeplab"]["pascal"][paper_index]
        cells = [crop_band, band, paper_band, spread_text("mean_iou", band)]
        cells += [spread_text("relative_iou", band), f"{paper_relative:.3f}"]
        cells.append(spread_text("relative_discrepancy", band))
        assert "| " + " | ".join(map(str, cells)) + " | " in section
    points = [rows[b, s] for b, *_ in bands for s in ("0", "1")]
    x = [float(r["relative_discrepancy"]) for r in points]
    y = [float(r["relative_iou"]) for r in points]
    rho = scipy.stats.spearmanr(x, y).statistic
    assert "over the 4 (seed, band limit) points" in section
    assert f"18): {rho:.3f} (95 % bootstrap CI".replace("-", "−") in section


def _row(model, dataset, band, seed, mean_iou, relative_iou, r_value):
    return {
        "model": model,
        "dataset": dataset,
        "band_limit": band,
        "seed": seed,
        "train_band_limit": None if band == bw.PIXELWISE else band // 2,
        "crop_size": 65,
        "mean_iou": mean_iou,
        "relative_iou": relative_iou,
        "relative_discrepancy": r_value,
    }


def test_cell_blockwise_selects_the_cell_and_pairs_by_seed():
    rows = [
        _row("deeplab", "pascal", 4, 0, 0.2, 0.5, 0.01),
        _row("deeplab", "pascal", bw.PIXELWISE, 0, 0.4, 1.0, 0.0),
        _row("deeplab", "pascal", 2, 0, 0.3, 0.75, 0.05),
        _row("deeplab", "pascal", 2, 1, 0.1, 0.2, None),
        _row("deeplab", "pascal", bw.PIXELWISE, 1, 0.5, 1.0, 0.0),
        _row("deeplab", "pascal", 4, 1, 0.25, 0.5, 0.02),
        _row("deeplab", "cityscapes", 2, 0, 0.9, 9.0, 0.9),
        _row("dan", "pascal", 2, 0, 0.8, 8.0, 0.8),
    ]
    cell = bw.cell_blockwise(rows, model="deeplab", dataset="pascal")
    assert cell.pixelwise_mean_iou == [0.4, 0.5] and cell.crop_size == 65
    assert [(s.band_limit, s.eval_band_limit) for s in cell.settings] == [(1, 2), (2, 4)]
    assert cell.settings[0].mean_iou_per_seed == [0.3, 0.1]
    assert cell.settings[1].relative_mean_iou_per_seed == [0.5, 0.5]
    r_values = cell.settings[0].relative_discrepancy_per_seed
    assert r_values[0] == 0.05 and np.isnan(r_values[1])  # a missing R is NaN
    # The correlation leaves out the point without R: three points, against scipy.
    assert cell.correlation.n == 3
    expected = scipy.stats.spearmanr([0.05, 0.01, 0.02], [0.75, 0.5, 0.5]).statistic
    np.testing.assert_allclose(cell.correlation.rho, expected)
    with pytest.raises(ValueError, match="no pixel-wise run of model 'dan' on dataset 'pascal'"):
        bw.cell_blockwise(rows[-1:], model="dan", dataset="pascal")


@pytest.mark.slow
def test_main_smallest_setting(tmp_path, data_dir):
    workdir = tmp_path / "run"
    argv = ["blockwise_annotation", f"--workdir={workdir}", f"--config={cli.CONFIGS / 'tiny.py'}"]
    argv += [f"--config.data_dir={data_dir}", "--config.num_train_steps=2"]
    argv += ["--config.crop_size=33", "--config.batch_size=4", "--config.eval_batch_size=4"]
    argv += ["--datasets=pascal", "--band_limits=4,8"]
    argv += ["--num_seeds=2"]
    assert bw.main(argv) == workdir / "report.md"
    per_seed = read_csv(workdir / "blockwise_annotation.csv")
    rows = {(r["band_limit"], r["seed"]): r for r in per_seed}
    assert set(rows) == {(b, s) for b in ("4", "8", "pixel") for s in ("0", "1")}
    for (band, seed), row in rows.items():
        pixel_miou = float(rows["pixel", seed]["mean_iou"])  # paired by seed
        np.testing.assert_allclose(float(row["relative_iou"]), float(row["mean_iou"]) / pixel_miou)
        expected_train = {"4": 1, "8": 2, "pixel": None}[band]  # 33-pixel crops, 129 grid
        assert (row["train_band_limit"] or None) == (
            None if expected_train is None else str(expected_train)
        )
        if band != "pixel":  # R of the same seed's pixel-wise model
            pixel_r = json.loads(
                (workdir / "deeplab_pascal_pixelwise" / f"seed{seed}" / "run.json").read_text()
            )
            np.testing.assert_allclose(
                float(row["relative_discrepancy"]), pixel_r["relative_discrepancy"][int(band)]
            )
    # Paper's columns at the same relative block size: 4 -> 16, 8 -> 32.
    assert (
        float(rows["4", "0"]["paper_relative_iou"])
        == paper_values.TABLE3_RELATIVE_MIOU["deeplab"]["pascal"][1]
    )

    # The spreads over seeds, recomputed in NumPy from the per-seed rows.
    spreads = {r["band_limit"]: r for r in read_csv(workdir / "blockwise_spread.csv")}
    for band, spread in spreads.items():
        names = ["mean_iou", "relative_iou"] + (["relative_discrepancy"] if band != "pixel" else [])
        for name in names:
            values = np.array([float(rows[band, s][name]) for s in ("0", "1")])
            half = scipy.stats.t.ppf(0.975, 1) * values.std(ddof=1) / np.sqrt(2)
            np.testing.assert_allclose(float(spread[f"{name}_mean"]), values.mean(), rtol=1e-12)
            np.testing.assert_allclose(
                float(spread[f"{name}_std"]), values.std(ddof=1), rtol=1e-9, atol=1e-15
            )
            np.testing.assert_allclose(
                [float(spread[f"{name}_ci_low"]), float(spread[f"{name}_ci_high"])],
                [values.mean() - half, values.mean() + half],
                rtol=1e-9,
                atol=1e-15,
            )

    # R(nu_max) of the first seed's pixel-wise model, recomputed in float64 NumPy.
    logits, labels = _restored_logits(workdir, "pixel", data_dir)
    spectrum = references.ce_spectrum(logits, labels)  # [N, H, W]
    total = spectrum.sum(axis=(1, 2))
    for band in ("4", "8"):
        truncated = references.truncated_ce(spectrum, int(band), "chebyshev")
        expected = references.ratio_of_sums(truncated, total)
        np.testing.assert_allclose(
            float(rows[band, "0"]["relative_discrepancy"]), expected, rtol=2e-3, atol=1e-5
        )

    # Rank correlation of the four block-wise points (2 band limits x 2 seeds) against
    # scipy, and its bootstrap interval against the library's with the same generator.
    correlations = read_csv(workdir / "correlation.csv")
    (ours,) = [c for c in correlations if (c["source"], c["group"]) == ("ours", "all")]
    points = [rows[b, s] for b in ("4", "8") for s in ("0", "1")]
    x = [float(r["relative_discrepancy"]) for r in points]
    y = [float(r["relative_iou"]) for r in points]
    assert int(ours["spearman_points"]) == 4
    np.testing.assert_allclose(
        float(ours["spearman"]), scipy.stats.spearmanr(x, y).statistic, equal_nan=True
    )
    expected = bootstrap_spearman(x, y, rng=np.random.default_rng(0), resamples=10_000)
    np.testing.assert_allclose(
        [float(ours["spearman_ci_low"]), float(ours["spearman_ci_high"])],
        [expected.low, expected.high],
        equal_nan=True,
    )
    text = (workdir / "report.md").read_text()
    assert "n=2" in text and "What the intervals say" in text

    # The cell's section (the demo's model_section), against the per-seed rows.
    bands = (("4", 1, 16, 1), ("8", 2, 32, 2))  # band, on the crop, the paper's, its index
    _check_cell_section(text, rows, bands)
    assert (workdir / "blockwise_deeplab_pascal.png").stat().st_size > 0

    # The example figure's arrays.
    with np.load(workdir / "examples_pascal.npz") as f:
        arrays = dict(f)
    assert arrays["labels"].shape == (bw.NUM_EXAMPLES, 129, 129)
    np.testing.assert_array_equal(arrays["labels"], labels[: bw.NUM_EXAMPLES])
    for nu in (4, 8):
        np.testing.assert_array_equal(
            arrays[f"blockwise_{nu}"],
            blockwise_annotation_numpy(arrays["labels"], nu, num_classes=21),
        )
    np.testing.assert_array_equal(
        arrays["prediction_deeplab_pixel"], np.argmax(logits[: bw.NUM_EXAMPLES], axis=-1)
    )
    assert arrays["images"].min() >= 0 and arrays["images"].max() <= 1
    assert (workdir / "examples.png").stat().st_size > 0
    assert "relative_iou_vs_r.png" in (workdir / "report.md").read_text()
