"""Experiment 5 (``experiments/band_limit_sweep.py``): the vmapped grid and a tiny run.

The vmapped ``[M, D, K]`` grid is compared with a Python loop of
:func:`spectral_jax.relative_discrepancy` calls and with float64 NumPy references
(:mod:`tests.references`); the compile count is checked; the script runs on the initial
variables of both models on two presets with different class counts (no training) and
its CSV is recomputed from the saved predictions (marked ``slow``: it builds two presets
and compiles four models, about a minute of CPU time).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import spectral_jax as sj
from experiments import band_limit_sweep
from experiments.report import Report
from spectral_jax.data import dataset_info
from tests.helpers import references
from tests.helpers.outputs import read_csv


def _random_grid(rng, *, models, datasets, images, shape, classes, dtype):
    logits = rng.normal(scale=2.0, size=(models, datasets, images, *shape, classes))
    labels = rng.integers(0, classes, size=(datasets, images, *shape)).astype(np.int32)
    labels[0, 0, :2] = 255  # ignored rows
    return logits.astype(dtype), labels


def _reference_sweep(logits, labels, band_limits, ignore_mode="labels"):
    """``[K]`` float64 R of one model on one data set, from the full-DFT reference."""
    spectrum = references.ce_spectrum(logits, labels, ignore_mode=ignore_mode)
    total = references.spatial_ce(logits, labels)
    return np.array(
        [
            references.ratio_of_sums(references.truncated_ce(spectrum, nu, "chebyshev"), total)
            for nu in band_limits
        ]
    )


@pytest.mark.parametrize(
    ("shape", "dtype", "tolerance"),
    [((16, 16), np.float32, 2e-5), ((17, 15), np.float32, 2e-5), ((15, 18), np.float64, 1e-10)],
)
def test_vmapped_grid_equals_a_loop_and_the_reference(rng, shape, dtype, tolerance):
    with jax.enable_x64(dtype == np.float64):
        logits, labels = _random_grid(
            rng, models=2, datasets=3, images=2, shape=shape, classes=4, dtype=dtype
        )
        band_limits = np.array([0, 3, 1, 8, 100, -1], np.int32)  # any order, out of range
        grid = np.asarray(
            jax.jit(band_limit_sweep.relative_discrepancy_grid)(logits, labels, band_limits)
        )
        assert grid.shape == (2, 3, band_limits.size)
        loop = np.array(
            [
                [
                    [
                        float(sj.relative_discrepancy(logits[m, d], labels[d], nu))
                        for nu in band_limits
                    ]
                    for d in range(3)
                ]
                for m in range(2)
            ]
        )
        np.testing.assert_allclose(grid, loop, rtol=0, atol=tolerance)
        for m in range(2):
            for d in range(3):
                expected = _reference_sweep(logits[m, d], labels[d], band_limits)
                np.testing.assert_allclose(grid[m, d], expected, rtol=0, atol=tolerance)
        assert grid[..., 4] == pytest.approx(0.0, abs=tolerance)  # above the last band
        np.testing.assert_allclose(grid[..., 5], 1.0, atol=tolerance)  # nothing kept
        # The other convention for ignored pixels, against its own reference.
        both = jax.jit(band_limit_sweep.relative_discrepancy_grid, static_argnames="ignore_mode")
        both = np.asarray(both(logits, labels, band_limits, ignore_mode="both"))
        for m in range(2):
            for d in range(3):
                expected = _reference_sweep(logits[m, d], labels[d], band_limits, "both")
                np.testing.assert_allclose(both[m, d], expected, rtol=0, atol=tolerance)
        assert np.abs(both - grid).max() > 1e-3


def test_grid_compiles_once_for_any_band_limits(rng):
    logits, labels = _random_grid(
        rng, models=2, datasets=2, images=1, shape=(9, 10), classes=3, dtype=np.float32
    )
    sweep = jax.jit(band_limit_sweep.relative_discrepancy_grid)
    with band_limit_sweep.count_compilations() as count:
        first = sweep(logits, labels, np.arange(6, dtype=np.int32))
        second = sweep(logits, labels, np.array([5, 4, 3, 2, 1, 0], np.int32))
        jax.block_until_ready((first, second))
    assert count[0] == 1
    np.testing.assert_array_equal(np.asarray(second), np.asarray(first)[..., ::-1])


@pytest.mark.parametrize("shape", [(12, 12), (13, 11)])
def test_padding_classes_changes_nothing(rng, shape):
    logits, labels = _random_grid(
        rng, models=1, datasets=1, images=2, shape=shape, classes=3, dtype=np.float32
    )
    padded = band_limit_sweep.pad_classes(logits, 8)
    assert padded.shape[-1] == 8 and np.all(padded[..., 3:] == band_limit_sweep.PAD_LOGIT)
    band_limits = np.arange(sj.num_bands(shape), dtype=np.int32)
    grid = band_limit_sweep.relative_discrepancy_grid
    np.testing.assert_array_equal(
        np.asarray(jax.jit(grid)(padded, labels, band_limits)),
        np.asarray(jax.jit(grid)(logits, labels, band_limits)),
    )


def test_pad_classes_rejects_fewer_classes():
    with pytest.raises(ValueError, match="num_classes"):
        band_limit_sweep.pad_classes(np.zeros((1, 2, 2, 5)), 4)


def test_sweep_section_of_a_grid_cell_shows_its_values_beside_table1(rng, tmp_path):
    by_mode = {mode: rng.uniform(0.0, 1.0, (2, 3, 65)) for mode in ("labels", "both")}
    cell = band_limit_sweep.cell_sweep(
        by_mode, 1, 2, name="DAN, Cityscapes (trained)", compilations=1, seconds=0.5
    )
    assert cell.names == ["DAN, Cityscapes (trained)"]
    np.testing.assert_array_equal(cell.relative_discrepancy, by_mode["labels"][1, 2][None])
    np.testing.assert_array_equal(
        cell.relative_discrepancy_by_ignore_mode["both"], by_mode["both"][1, 2][None]
    )
    report = Report(tmp_path, "test")
    band_limit_sweep.sweep_section(
        report,
        cell,
        heading="DAN, Cityscapes",
        paper=[("dan", "cityscapes")],
        heading_level=3,
        digits=4,
    )
    band_limit_sweep.sweep_section(
        report, cell, heading="with a figure", paper=[], figure="cell.png"
    )
    text = report.write().read_text()
    first, second = text.split("### DAN, Cityscapes", 1)[1].split("## with a figure")
    for mode, title in band_limit_sweep.IGNORE_MODE_TITLES.items():
        values = by_mode[mode][1, 2]
        row = " | ".join(f"{values[nu]:.4f}" for nu in (8, 16, 32, 64))
        assert f"| DAN, Cityscapes (trained) | {title} | {row} |" in first
        row = " | ".join(f"{values[nu]:.3f}" for nu in (8, 16, 32, 64))
        assert f"| DAN, Cityscapes (trained) | {title} | {row} |" in second
    # Table 1, DAN on Cityscapes: R(8), R(16), R(32), R(256).
    assert (
        "| paper DAN, cityscapes | (no ignore label) | 1.3070 | 0.2550 | 0.0290 | 0.0000 |" in first
    )
    assert "paper" not in second and "![" not in first
    assert "(cell.png)" in second and (tmp_path / "cell.png").stat().st_size > 5_000


@pytest.mark.slow
def test_tiny_run_at_initialisation(tmp_path):
    workdir = tmp_path / "sweep"
    argv = ["sweep", f"--workdir={workdir}", f"--config.data_dir={tmp_path / 'tfds'}"]
    argv += ["--stage=init", "--models=deeplab,dan", "--datasets=pascal,deepglobe"]
    argv += ["--num_images=2", "--save_predictions"]
    report = band_limit_sweep.main(argv)
    assert report.exists() and (workdir / "relative_discrepancy.png").stat().st_size > 10_000
    with np.load(workdir / "predictions.npz") as saved:
        logits, labels = saved["logits"], saved["labels"]
        assert list(saved["models"]) == ["deeplab", "dan"]
        assert list(saved["datasets"]) == ["pascal", "deepglobe"]
    assert logits.shape == (2, 2, 2, 129, 129, 21) and labels.shape == (2, 2, 129, 129)
    rows = read_csv(workdir / "relative_discrepancy.csv")
    assert len(rows) == 2 * 2 * 2 * 65  # both ignore modes x models x data sets x bands
    assert {row["ignore_mode"] for row in rows} == {"labels", "both"}
    classes = {"pascal": 21, "deepglobe": 7}
    assert dataset_info("synthetic_scenes/deepglobe_like").num_classes == 7
    for m, model in enumerate(["deeplab", "dan"]):
        for d, dataset in enumerate(["pascal", "deepglobe"]):
            unpadded = logits[m, d, ..., : classes[dataset]]  # the model's own classes
            assert np.all(logits[m, d, ..., classes[dataset] :] == band_limit_sweep.PAD_LOGIT)
            for mode in ("labels", "both"):
                expected = _reference_sweep(unpadded, labels[d], range(65), mode)
                key = (model, dataset, mode)
                ours = [
                    float(r["R"])
                    for r in rows
                    if (r["model"], r["dataset"], r["ignore_mode"]) == key
                ]
                np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-5)
    assert '"compilations": 1' in (workdir / "compilations.json").read_text()
    # Each cell's section shows the CSV's R at 8 / 16 / 32 / Nyquist, and no paper row
    # (the paper gives no values at initialisation).
    text = report.read_text()
    for model, dataset, next_heading in [
        ("DeepLab v3+", "PASCAL", "### DeepLab v3+, DeepGlobe"),
        ("DAN", "DeepGlobe", None),
    ]:
        section = text.split(f"### {model}, {dataset}\n", 1)[1]
        section = section.split(next_heading)[0] if next_heading else section
        assert "paper" not in section
        key = {"DeepLab v3+": "deeplab", "DAN": "dan"}[model], dataset.lower()
        for mode, title in band_limit_sweep.IGNORE_MODE_TITLES.items():
            curve = {
                int(r["band_limit"]): float(r["R"])
                for r in rows
                if (r["model"], r["dataset"], r["ignore_mode"]) == (*key, mode)
            }
            values = " | ".join(f"{curve[nu]:.4f}" for nu in (8, 16, 32, 64))
            assert f"| {model}, {dataset} (init) | {title} | {values} |" in section
