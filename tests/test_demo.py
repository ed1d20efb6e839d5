"""The demo (``experiments/demo.py``) end to end on its smallest setting.

One run of ``main`` (3 training steps per model, 4 validation scenes, one block-wise band
limit, no full-size FLOPs) into a temporary directory; the tests then check its numbers
against independent computations: R(nu_max) recomputed in float64 NumPy
(``tests/helpers/references.py``) from the logits of the model restored from the saved
checkpoint, the vmapped sweep against ``SpectralStatistics``, the FLOPs against
``conv_macs`` of the rebuilt model, the untruncated mIoU against the trainer's summary,
the relative mIoU against the two summaries' ratio, and the circular convolution's
diagonal energy fraction against its closed form (1).
"""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest
import scipy.stats

import spectral_jax as sj
from experiments import band_limit_sweep, ce_spectrum, cli, demo, paper_values, runs
from experiments.configs import demo as demo_config
from spectral_jax import flops
from spectral_jax.data import synthetic
from spectral_jax.models import DeepLabV3Plus
from spectral_jax.training import train_state
from tests.helpers import references

NUM_EVAL = 4
STEPS = 3
BAND_LIMIT = 4
NUM_SEEDS = 2
IMAGE_SIZE = 129  # the embedded scenes' side


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("demo")
    argv = ["demo", f"--workdir={workdir}", f"--config={cli.CONFIGS / 'demo.py'}:quick"]
    argv += [f"--config.data_dir={data_dir}", f"--config.num_train_steps={STEPS}"]
    argv += [f"--config.eval_split=validation[:{NUM_EVAL}]", f"--block_band_limits={BAND_LIMIT}"]
    argv += [f"--num_seeds={NUM_SEEDS}"]
    report = demo.main([*argv, "--nofull_size_flops"])
    results = json.loads((workdir / "results.json").read_text())
    config = demo_config.get_config("quick")
    config.update(num_train_steps=STEPS, eval_split=f"validation[:{NUM_EVAL}]")
    config = demo.training_config(config, data_dir=data_dir)
    return workdir, report, results, config


@pytest.fixture(scope="module")
def restored(run):
    workdir, _, _, config = run
    seed_runs = runs.train_seeds(config, workdir / "train", num_seeds=NUM_SEEDS)  # read back
    model, variables = runs.create_model(config), seed_runs.variables(0)
    images, labels = band_limit_sweep.evaluation_batch(config, NUM_EVAL)
    logits = np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, images))
    return model, variables, images, labels, logits


def test_report_and_figures_are_written(run):
    workdir, report, results, _ = run
    assert report == workdir / "report.md"
    text = report.read_text()
    figures = ("data_examples", "ce_spectrum", "band_limit_sweep", "ce_spectral_gradient")
    for name in (*figures, "layer_spectral_rows", "blockwise"):
        assert (workdir / f"{name}.png").stat().st_size > 1000
        assert f"({name}.png)" in text
    assert results["training"]["steps"] == STEPS
    assert results["time"]["cpu_s"] > 0


def test_r_table_matches_float64_reference_of_the_checkpoint(run, restored):
    _, report, results, _ = run
    _, _, _, labels, logits = restored
    spectrum = references.ce_spectrum(logits.astype(np.float64), labels)  # [N, H, W]
    total = spectrum.sum(axis=(1, 2))
    table = results["ce_spectrum"]["trained"]["table"]
    text = report.read_text()
    for nu in ce_spectrum.MODEL_BAND_LIMITS:
        truncated = references.truncated_ce(spectrum, nu, "chebyshev")
        expected = references.ratio_of_sums(truncated, total)
        np.testing.assert_allclose(table[str(nu)], expected, rtol=2e-3, atol=2e-5)
        assert f"{table[str(nu)]:.3f}" in text
    assert table["64"] == pytest.approx(0.0, abs=1e-5)


def test_sweep_row_equals_spectral_statistics(run, restored):
    _, _, results, _ = run
    _, _, _, labels, logits = restored
    stats = sj.SpectralStatistics.create(labels.shape[1:], logits.shape[-1])
    stats = stats.update(logits, labels)
    sweep = np.asarray(results["sweep"]["relative_discrepancy"])  # [4, R]
    assert sweep.shape == (4, sj.num_bands(labels.shape[1:]))
    assert results["sweep"]["compilations"] == 1
    np.testing.assert_allclose(
        sweep[0], np.asarray(stats.relative_discrepancy_curve()), rtol=1e-3, atol=1e-5
    )
    np.testing.assert_allclose(
        results["ce_spectrum"]["trained"]["relative_discrepancy"],
        np.asarray(stats.relative_discrepancy_curve()),
        rtol=1e-4,
        atol=1e-6,
    )


def test_padded_preset_rows_equal_unpadded(run):
    """The presets' rows, padded to 21 classes, equal R of their unpadded predictions."""
    _, _, results, _ = run
    sweep = np.asarray(results["sweep"]["relative_discrepancy"])
    presets = [paper_values.PRESET_OF_DATASET[d].split("/")[1] for d in paper_values.DATASETS]
    for row, name in zip(sweep[1:], presets, strict=True):
        config = synthetic.preset(name)
        labels = np.stack(
            [synthetic.generate_example(config, "validation", i)["label"] for i in range(NUM_EVAL)]
        ).astype(np.int32)
        logits = synthetic.blurred_label_logits(labels, num_classes=config.num_classes)
        spectrum = references.ce_spectrum(logits, labels)
        total = spectrum.sum(axis=(1, 2))
        for nu in (4, 8, 16):
            expected = references.ratio_of_sums(
                references.truncated_ce(spectrum, nu, "chebyshev"), total
            )
            np.testing.assert_allclose(row[nu], expected, rtol=2e-3, atol=2e-5)


def _assert_spread(columns, name, values):
    """``columns``' ``{name}_mean``, ``_std``, ``_ci_low``, ``_ci_high`` recomputed in NumPy."""
    values = np.asarray(values, np.float64)
    n = values.size
    mean, std = values.mean(), values.std(ddof=1)
    half = scipy.stats.t.ppf(0.975, n - 1) * std / np.sqrt(n)
    np.testing.assert_allclose(columns[f"{name}_mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(columns[f"{name}_std"], std, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(
        [columns[f"{name}_ci_low"], columns[f"{name}_ci_high"]],
        [mean - half, mean + half],
        rtol=1e-10,
        atol=1e-15,
    )
    assert columns[f"{name}_n"] == n


def test_training_spread_over_seeds(run):
    workdir, report, results, _ = run
    training = results["training"]
    assert training["seeds"] == [0, 1]
    summaries = [
        json.loads((workdir / "train" / f"seed{s}" / "summary.json").read_text()) for s in (0, 1)
    ]
    assert training["mean_iou_per_seed"] == [s["mean_iou"] for s in summaries]
    _assert_spread(training, "mean_iou", training["mean_iou_per_seed"])
    _assert_spread(training, "pixel_accuracy", [s["pixel_accuracy"] for s in summaries])
    text = report.read_text()
    assert "Headline numbers" in text and f"n={NUM_SEEDS}" in text
    assert results["time"]["cpu_model"] in text and "Another CPU gives other" in text


def test_r_spread_over_seeds(run):
    _, _, results, _ = run
    seeds = results["ce_spectrum"]["seeds"]
    for nu in ce_spectrum.MODEL_BAND_LIMITS:
        values = seeds["per_seed"]["trained"][str(nu)]
        assert len(values) == NUM_SEEDS
        # Seed 0 is the model of the detailed table.
        assert values[0] == results["ce_spectrum"]["trained"]["table"][str(nu)]
        _assert_spread(seeds["trained"][str(nu)], "relative_discrepancy", values)
        _assert_spread(
            seeds["init"][str(nu)], "relative_discrepancy", seeds["per_seed"]["init"][str(nu)]
        )


def test_truncation_flops_and_miou(run, restored):
    _, _, results, _ = run
    model, _, _, _, _ = restored
    per_seed = results["truncation"]["per_seed"]
    assert len(per_seed) == NUM_SEEDS
    for k, rows in enumerate(per_seed):
        assert [r["feature_size"] for r in rows] == [33, 17, 9]
        for row in rows:
            layers = flops.conv_layers(
                model.clone(feature_size=row["feature_size"]), (1, IMAGE_SIZE, IMAGE_SIZE, 3)
            )
            assert row["macs"] == flops.conv_macs(layers)
            assert row["fpi"] == pytest.approx(row["macs"] / 1e6 / row["mean_iou"])
        # The untruncated grid is the model as trained: the trainer's own evaluation agrees.
        expected = results["training"]["mean_iou_per_seed"][k]
        assert rows[0]["mean_iou"] == pytest.approx(expected, abs=1e-6)
        assert rows[0]["macs"] > rows[1]["macs"] > rows[2]["macs"]
    for index, row in enumerate(results["truncation"]["rows"]):
        at_grid = [rows[index] for rows in per_seed]
        _assert_spread(row, "mean_iou", [r["mean_iou"] for r in at_grid])
        _assert_spread(row, "fpi", [r["fpi"] for r in at_grid])
        drops = [rows[0]["mean_iou"] - rows[index]["mean_iou"] for rows in per_seed]
        _assert_spread(row, "mean_iou_drop", drops)


def test_blockwise_relative_miou_is_the_ratio_of_summaries(run):
    workdir, _, results, _ = run
    (record,) = results["blockwise"]["records"]
    trained_r = results["ce_spectrum"]["seeds"]["per_seed"]["trained"]
    relative = []
    for k, seed in enumerate((0, 1)):
        pixel = json.loads((workdir / "train" / f"seed{seed}" / "summary.json").read_text())
        weak_dir = workdir / f"train_blockwise_nu{BAND_LIMIT}" / f"seed{seed}"
        weak = json.loads((weak_dir / "summary.json").read_text())
        relative.append(weak["mean_iou"] / pixel["mean_iou"])
        assert record["relative_mean_iou_per_seed"][k] == pytest.approx(relative[-1])
    assert record["eval_band_limit"] == round(BAND_LIMIT * 129 / 65)
    nu = record["eval_band_limit"]
    assert record["relative_discrepancy_per_seed"][0] == pytest.approx(
        results["ce_spectrum"]["trained"]["relative_discrepancy"][nu]
    )
    if str(nu) in trained_r:
        assert record["relative_discrepancy_per_seed"] == trained_r[str(nu)]
    _assert_spread(record, "relative_mean_iou", relative)
    _assert_spread(record, "relative_discrepancy", record["relative_discrepancy_per_seed"])
    # Spearman's rho over the (seed, band limit) points against scipy.
    correlation = results["blockwise"]["correlation"]
    x, y = record["relative_discrepancy_per_seed"], record["relative_mean_iou_per_seed"]
    assert correlation["spearman_points"] == NUM_SEEDS
    expected = scipy.stats.spearmanr(x, y).statistic
    np.testing.assert_allclose(correlation["spearman"], expected, rtol=1e-12)


def test_circular_convolution_is_diagonal(run):
    _, _, results, _ = run
    fractions = results["spectral_gradient"]["layer_diagonal_fraction"]
    np.testing.assert_allclose(fractions["3x3 conv, circular padding"], 1.0, atol=1e-5)
    for name, values in fractions.items():
        assert all(0.0 <= v <= 1.0 + 1e-6 for v in values), name


def test_initial_variables_are_the_trainers(run):
    """The demo's initial variables are the trainer's: its key split (the first of the two
    keys of the seed) and its initialisation on a zero batch of the training crops.

    The trainer initialises with ``train_state.init_variables`` (whose values are
    ``model.init``'s: tests/test_training.py); called here with the key and the size
    derived by hand, it reuses the demo's compilation instead of compiling ``init`` again.
    """
    _, _, _, config = run
    model = DeepLabV3Plus(
        num_classes=21, **{k: v for k, v in config.model.to_dict().items() if k != "name"}
    )
    variables = runs.initial_variables(model, config)
    key = jax.random.split(jax.random.key(int(config.seed)))[0]
    expected = train_state.init_variables(model, key, image_size=int(config.crop_size))
    assert jax.tree.structure(variables) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(a, b)
    # The unsplit key gives other variables: the comparison sees the key.
    other = train_state.init_variables(
        model, jax.random.key(int(config.seed)), image_size=int(config.crop_size)
    )
    differ = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(variables), strict=True)
    ]
    assert any(differ)
