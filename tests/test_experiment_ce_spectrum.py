"""Experiment 1 (``experiments/ce_spectrum.py``): configs, and one tiny end-to-end run.

The end-to-end run (marked ``slow``: about 80 s of CPU time, mostly compiling the
training and evaluation steps) trains DeepLab v3+ for one step on ``pascal_like`` (33 x 33 crops) and
evaluates 3 validation scenes; its CSVs are checked against float64 NumPy references
(:mod:`tests.references`) computed from the restored models' own predictions, and
against the trainer's evaluation and experiment 5's vmapped sweep of the same run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.stats

from experiments import band_limit_sweep, ce_spectrum, runs
from experiments.configs import cityscapes, pascal, tiny
from experiments.report import Report
from tests.helpers import references
from tests.helpers.outputs import read_csv

EVAL_SPLIT = "validation[:3]"


# --------------------------------------------------------------------------------------
# Configs.


def test_dan_config_takes_the_low_level_width_as_projection_width():
    deeplab = tiny.get_config()
    deeplab.num_train_steps = 7  # as --config.num_train_steps=7 sets it
    config = runs.experiment_config(deeplab, model="dan", dataset="deepglobe")
    assert config.model.name == "dan" and deeplab.model.name == "deeplabv3plus"
    assert config.model.low_level_channels == deeplab.model.low_level_channels
    assert config.dataset == "synthetic_scenes/deepglobe_like"
    assert config.num_train_steps == 7
    model = runs.create_model(config)
    assert model.num_classes == 7
    assert model.projection_channels == deeplab.model.low_level_channels


@pytest.mark.parametrize("module", [pascal, cityscapes])
def test_paper_config_runs_its_own_data_set_only(module):
    paper = module.get_config()
    dataset = runs.paper_dataset(paper)
    assert dataset == module.__name__.rsplit(".", 1)[1]
    assert runs.datasets_of(paper) == (dataset,)
    config = runs.experiment_config(paper, model="deeplab", dataset=dataset)
    assert config.dataset == paper.dataset
    assert config.learning_rate == paper.learning_rate
    with pytest.raises(ValueError, match="deepglobe"):
        runs.experiment_config(paper, model="deeplab", dataset="deepglobe")


@pytest.mark.parametrize(
    "kwargs", [dict(model="unet", dataset="pascal"), dict(model="dan", dataset="ade20k")]
)
def test_bad_model_or_dataset_raises(kwargs):
    with pytest.raises(ValueError, match="model|dataset"):
        runs.experiment_config(tiny.get_config(), **kwargs)


@pytest.mark.parametrize("num_bands", [65, 257, 9])
def test_table_band_limits_map_above_the_grid_to_its_last_band(num_bands):
    pairs = ce_spectrum.table_band_limits(num_bands)
    assert [p for p, _ in pairs] == [8, 16, 32, 64, 256]
    assert [o for _, o in pairs] == [min(p, num_bands - 1) for p, _ in pairs]


# --------------------------------------------------------------------------------------
# The per-model section (the demo's, and each cell's of the grid report).


def _stage_spectra(rng, band_profile: np.ndarray) -> dict:
    """One stage of :func:`ce_spectrum.evaluate_spectra` on 129 x 129 maps (65 bands)."""
    discrepancy = np.sort(rng.uniform(0.0, 0.5, 65))[::-1].copy()
    discrepancy[-1] = 0.0
    return {
        "band_profile": band_profile,
        "relative_discrepancy": discrepancy,
        "label_magnitude": rng.uniform(0.1, 1.0, 65),
        "logit_magnitude": rng.uniform(0.1, 1.0, 65),
        "mean_ce": float(rng.uniform(1.0, 3.0)),
        "parseval_error": float(rng.uniform(1e-8, 1e-6)),
        "mean_iou": 0.5,
        "num_images": 4,
    }


def _seed_spectra(rng, low_band_ratio: float) -> dict:
    """Both stages of one seed; training scales the band profile by ``low_band_ratio``."""
    initial = rng.uniform(0.5, 1.5, 65)
    return {
        "init": _stage_spectra(rng, initial),
        "trained": _stage_spectra(rng, low_band_ratio * initial),
    }


@pytest.mark.parametrize("describe_grids", [True, False])
def test_model_section_shows_the_cells_numbers_beside_its_table1_row(rng, tmp_path, describe_grids):
    per_seed = [_seed_spectra(rng, ratio) for ratio in (0.5, 0.52)]
    report = Report(tmp_path, "test")
    ce_spectrum.model_section(
        report,
        ce_spectrum.ModelSpectra(per_seed),
        heading="DAN, Cityscapes",
        title="DAN (seed 3)",
        model="dan",
        dataset="cityscapes",
        figure="spectrum_dan_cityscapes.png",
        heading_level=3,
        describe_grids=describe_grids,
    )
    text = (report.write()).read_text()
    assert "### DAN, Cityscapes" in text
    assert (tmp_path / "spectrum_dan_cityscapes.png").stat().st_size > 10_000
    assert ("ours 129 x 129 (bands 0..64)" in text) == describe_grids
    assert ("513 crop of a Cityscapes image" in text) == describe_grids
    # Table 1's R(64) of DAN on Cityscapes: CE above our Nyquist band (64).
    assert ("The paper's R(64) = 0.012 has no counterpart" in text) == describe_grids
    for stage, result in per_seed[0].items():
        r = result["relative_discrepancy"]
        values = [result["mean_ce"], r[8], r[16], r[32], r[64]]
        row = f"| DAN (seed 3), {stage} | " + " | ".join(f"{v:.3f}" for v in values) + " |"
        assert row in text
    # Table 1, DAN on Cityscapes: R(8), R(16), R(32), R(256).
    assert "| DAN (paper, Table 1, Cityscapes) | - | 1.307 | 0.255 | 0.029 | 0.000 |" in text
    # Fig. 2's claim: CE of bands 0-8, trained / initial, over the two seeds.
    ratios = [
        s["trained"]["band_profile"][:9].sum() / s["init"]["band_profile"][:9].sum()
        for s in per_seed
    ]
    mean, std = np.mean(ratios), np.std(ratios, ddof=1)
    half = scipy.stats.t.ppf(0.975, 1) * std / np.sqrt(2)
    claim = (
        f"training lowers the CE of bands 0-8 (trained / initial below 1): {mean:.3f} ± "
        f"{std:.3f} (95 % CI {mean - half:.3f} to {mean + half:.3f}, n=2): **supports**."
    )
    assert claim in text


@pytest.mark.parametrize(
    ("model", "dataset", "argument"), [("unet", "pascal", "model"), ("dan", "ade20k", "dataset")]
)
def test_paper_row_of_a_cell_table1_lacks_raises(tmp_path, model, dataset, argument):
    with pytest.raises(
        ValueError,
        match=f"{argument} must be one of .*{dataset if argument == 'dataset' else model}",
    ):
        ce_spectrum.paper_r_row(model, dataset)
    report = Report(tmp_path, "test")
    with pytest.raises(ValueError, match=argument):
        ce_spectrum.model_section(
            report,
            ce_spectrum.ModelSpectra([]),
            heading="h",
            title="t",
            model=model,
            dataset=dataset,
            figure="f.png",
        )
    assert report.parts == ["# test", ""]  # nothing added


# --------------------------------------------------------------------------------------
# End to end.


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("ce_spectrum")
    argv = ["ce_spectrum", f"--workdir={workdir}", "--models=deeplab", "--datasets=pascal"]
    argv += [f"--config.data_dir={data_dir}", "--config.num_train_steps=1"]
    argv += ["--config.crop_size=33", f"--config.eval_split={EVAL_SPLIT}", "--num_seeds=2"]
    report = ce_spectrum.main(argv)
    return workdir, data_dir, argv, report


def _reference_predictions(workdir, data_dir):
    """Logits ``[B, H, W, C]`` (init and trained) and labels of the evaluated scenes."""
    config = tiny.get_config()
    config.update(num_train_steps=1, data_dir=data_dir, crop_size=33, eval_split=EVAL_SPLIT)
    config = runs.experiment_config(config, model="deeplab", dataset="pascal")
    images, labels = band_limit_sweep.evaluation_batch(config, 3)
    model = runs.create_model(config)
    variables = {
        "init": runs.initial_variables(model, config),
        "trained": runs.restore_trained(config, workdir / "deeplab_pascal" / "seed0")[1],
    }
    logits = {
        stage: np.asarray(model.apply(v, images, train=False), np.float64)
        for stage, v in variables.items()
    }
    return logits, labels


@pytest.mark.slow
def test_csvs_match_float64_references(tiny_run):
    workdir, data_dir, _, report = tiny_run
    assert report == workdir / "report.md" and report.exists()
    assert (workdir / "fig1_profiles.png").stat().st_size > 10_000
    assert (workdir / "fig2_init_vs_trained.png").stat().st_size > 10_000
    logits, labels = _reference_predictions(workdir, data_dir)
    table = [r for r in read_csv(workdir / "table1.csv") if r["seed"] == "0"]
    profiles = [r for r in read_csv(workdir / "profiles.csv") if r["seed"] == "0"]
    for stage, stage_logits in logits.items():
        spectrum = references.ce_spectrum(stage_logits, labels)  # [B, H, W]
        bands = references.band_sums(spectrum, "chebyshev")  # [B, R]
        total = references.spatial_ce(stage_logits, labels)  # [B]
        np.testing.assert_allclose(bands.sum(axis=1), total, rtol=1e-10)  # Parseval
        rows = [r for r in table if r["stage"] == stage]
        assert [int(r["paper_nu_max"]) for r in rows] == [8, 16, 32, 64, 256]
        for row in rows:
            nu = int(row["nu_max"])
            expected = references.ratio_of_sums(bands[:, : nu + 1].sum(axis=1), total)
            # float32 decomposition against float64: R is a difference of CE-sized sums.
            assert float(row["relative_discrepancy"]) == pytest.approx(expected, abs=2e-5)
        assert float(rows[-1]["relative_discrepancy"]) == 0.0  # nu = 256 -> last band 64
        curve = [r for r in profiles if r["stage"] == stage]
        assert len(curve) == bands.shape[1] == 65
        np.testing.assert_allclose(
            [float(r["ce_component"]) for r in curve], bands.mean(axis=0), rtol=1e-3, atol=1e-6
        )
        label_ref, logit_ref = references.magnitude_profiles(stage_logits, labels, "chebyshev")
        np.testing.assert_allclose(
            [float(r["label_magnitude"]) for r in curve], label_ref.mean(0), rtol=1e-4, atol=1e-9
        )
        np.testing.assert_allclose(
            [float(r["logit_magnitude"]) for r in curve], logit_ref.mean(0), rtol=1e-4, atol=1e-9
        )
        normalised = [float(r["logit_magnitude_normalised"]) for r in curve]
        assert max(normalised) == pytest.approx(1.0)


@pytest.mark.slow
def test_table1_spread_is_recomputed_from_the_seeds(tiny_run):
    workdir = tiny_run[0]
    per_seed = read_csv(workdir / "table1.csv")
    spreads = read_csv(workdir / "table1_spread.csv")
    assert len(spreads) == 2 * 5 and len(per_seed) == 2 * len(spreads)  # stages x nu, seeds
    for row in spreads:
        values = np.array(
            [
                float(r["relative_discrepancy"])
                for r in per_seed
                if (r["stage"], r["paper_nu_max"]) == (row["stage"], row["paper_nu_max"])
            ]
        )
        assert values.size == 2
        half = scipy.stats.t.ppf(0.975, 1) * values.std(ddof=1) / np.sqrt(2)
        mean = values.mean()
        np.testing.assert_allclose(float(row["relative_discrepancy_mean"]), mean, rtol=1e-12)
        np.testing.assert_allclose(
            [float(row["relative_discrepancy_ci_low"]), float(row["relative_discrepancy_ci_high"])],
            [mean - half, mean + half],
            rtol=1e-9,
            atol=1e-15,
        )
    text = (workdir / "report.md").read_text()
    assert "n=2" in text
    assert any(verdict in text for verdict in ("**supports**", "**contradicts**", "**cannot"))


@pytest.mark.slow
def test_report_section_of_the_cell_shows_its_csv_numbers(tiny_run):
    workdir = tiny_run[0]
    text = (workdir / "report.md").read_text()
    section = text.split("### DeepLab v3+, PASCAL", 1)[1].split("## Ours against the paper")[0]
    assert "(spectrum_deeplab_pascal.png)" in section
    assert (workdir / "spectrum_deeplab_pascal.png").stat().st_size > 10_000
    summary = [r for r in read_csv(workdir / "summary.csv") if r["seed"] == "0"]
    for row in summary:
        assert f"| DeepLab v3+ (seed 0), {row['stage']} | {float(row['mean_ce']):.3f} |" in section
        assert f"{float(row['parseval_error']):.1e} ({row['stage']})" in section
    spreads = read_csv(workdir / "table1_spread.csv")
    for stage in ce_spectrum.STAGES:
        line = next(line for line in section.splitlines() if line.startswith(f"| {stage} |"))
        cells = line.strip("| ").split(" | ")[1:]
        by_band = {r["nu_max"]: r for r in spreads if r["stage"] == stage}
        for cell, nu in zip(cells, ("8", "16", "32"), strict=True):
            mean = float(by_band[nu]["relative_discrepancy_mean"])
            std = float(by_band[nu]["relative_discrepancy_std"])
            expected = f"{mean:.4f} ± {std:.4f}".replace("-", "−")
            assert cell.startswith(expected), (cell, expected)


@pytest.mark.slow
def test_summary_agrees_with_the_trainers_evaluation(tiny_run):
    workdir = tiny_run[0]
    summary = [r for r in read_csv(workdir / "summary.csv") if r["stage"] == "trained"]
    assert [r["seed"] for r in summary] == ["0", "1"]
    for trained in summary:
        path = workdir / "deeplab_pascal" / f"seed{trained['seed']}" / "summary.json"
        trainer = json.loads(path.read_text())
        expected = trainer["relative_discrepancy"]["16"]
        assert float(trained["r16"]) == pytest.approx(expected, rel=1e-4)
        assert int(trained["num_images"]) == 3
    manifest = json.loads((workdir / "runs.json").read_text())
    assert [(e["model"], e["dataset"]) for e in manifest] == [("deeplab", "pascal")]


@pytest.mark.slow
def test_rerun_resumes_without_retraining(tiny_run):
    workdir, _, argv, _ = tiny_run
    checkpoint_files = sorted((workdir / "deeplab_pascal").rglob("*"))
    mtimes = [p.stat().st_mtime_ns for p in checkpoint_files]
    before = (workdir / "table1.csv").read_text()
    ce_spectrum.main(argv)
    assert (workdir / "table1.csv").read_text() == before
    assert [p.stat().st_mtime_ns for p in checkpoint_files] == mtimes


@pytest.mark.slow
def test_band_limit_sweep_of_the_trained_runs_equals_experiment_1(tiny_run, tmp_path):
    workdir, _, _, _ = tiny_run
    sweep_dir = tmp_path / "sweep"
    band_limit_sweep.main(
        ["sweep", f"--workdir={sweep_dir}", f"--from_ce_spectrum={workdir}", "--num_images=3"]
    )
    ours = {int(r["band_limit"]): float(r["R"]) for r in read_csv(sweep_dir / "table.csv")}
    table = [r for r in read_csv(workdir / "table1.csv") if r["stage"] == "trained"]
    table = [r for r in table if r["seed"] == "0"]  # the manifest's run: the first seed
    for row in table[:4]:  # nu = 8, 16, 32, 64
        nu = int(row["nu_max"])
        assert ours[nu] == pytest.approx(float(row["relative_discrepancy"]), abs=1e-6)
    assert json.loads((sweep_dir / "compilations.json").read_text())["compilations"] == 1
    # The cell's section: both conventions (the CSV's values) and Table 1's row.
    report = (sweep_dir / "report.md").read_text()
    section = report.split("### DeepLab v3+, PASCAL", 1)[1]
    rows = read_csv(sweep_dir / "relative_discrepancy.csv")
    for mode, title in band_limit_sweep.IGNORE_MODE_TITLES.items():
        curve = {int(r["band_limit"]): float(r["R"]) for r in rows if r["ignore_mode"] == mode}
        values = " | ".join(f"{curve[nu]:.4f}" for nu in (8, 16, 32, 64))
        assert f"| DeepLab v3+, PASCAL (trained) | {title} | {values} |" in section
    assert (
        "| paper DeepLab v3+, pascal | (no ignore label) | 0.2750 | 0.0400 | 0.0180 | 0.0000 |"
        in section
    )
