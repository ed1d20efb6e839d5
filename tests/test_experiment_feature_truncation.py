"""Experiment 3 (feature truncation with SFP): grid settings, FLOPs and the script's CSV.

The end-to-end test runs ``main`` on the smallest grid (2 training steps, 33-pixel crops,
encoder pruning 0 and 40 %, feature sizes 129 and 33) and checks the CSV against
independent computations: MACs of the model rebuilt from its widths, the widths from
the pruning rates, the mIoU of the soft-pruned full-width model (hard pruning must not
change the function), and the derived columns (drop, pruned %, FPI).
"""

from __future__ import annotations

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from experiments import cli, paper_values, runs
from experiments import feature_truncation as ft
from experiments.configs import tiny
from spectral_jax import flops
from spectral_jax.models import DAN, DeepLabV3Plus, create_model, pruning
from tests.helpers.outputs import read_csv


@pytest.mark.parametrize(
    ("input_size", "expected"),
    [(513, (None, 65, 33)), (129, (None, 17, 9)), (65, (None, 9, 5)), (64, (None, 7, 3))],
)
def test_feature_size_for(input_size, expected):
    # The paper's 129 / 65 / 33 are F = 2 nu + 1 at nu_L, nu_L / 2, nu_L / 4 of the
    # untruncated grid L = 129 (nu_L = 64).
    assert tuple(ft.feature_size_for(f, input_size) for f in ft.PAPER_FEATURE_SIZES) == expected


@pytest.mark.parametrize("input_size", [33, 64, 65, 129])
def test_low_level_grid_matches_the_model(input_size):
    widths = dict(aspp_channels=8, low_level_channels=4, decoder_channels=8)
    model = DeepLabV3Plus(num_classes=3, backbone="resnet_tiny", **widths)
    x = jax.ShapeDtypeStruct((1, input_size, input_size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    _, low_level = jax.eval_shape(functools.partial(model.apply, method="encode"), variables, x)
    assert low_level.shape[1:3] == (ft.low_level_grid(input_size),) * 2


def test_pruning_rates_follow_the_paper():
    assert ft.pruning_rates(0.0) == {"encoder": 0.0, "decoder": 0.0}
    assert ft.pruning_rates(0.6) == {"encoder": 0.6, "decoder": 0.2}
    with pytest.raises(ValueError, match="encoder_rate"):
        ft.pruning_rates(1.0)


@pytest.mark.parametrize("model", ["deeplab", "dan"])
def test_experiment_config_builds_the_model(model):
    base = tiny.get_config()
    base.num_train_steps = 7
    config = runs.experiment_config(base, model=model, dataset="cityscapes")
    assert config.dataset == "synthetic_scenes/cityscapes_like"
    assert config.num_train_steps == 7
    built = create_model(config.model, num_classes=19)
    assert isinstance(built, DAN if model == "dan" else DeepLabV3Plus)
    if model == "dan":  # The tiny low-level width becomes DAN's projection width.
        assert built.projection_channels == 8
    x = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32)
    variables = jax.eval_shape(built.init, jax.random.key(0), x)
    assert jax.eval_shape(built.apply, variables, x).shape == (1, 33, 33, 19)
    with pytest.raises(ValueError, match="model must be one of"):
        runs.experiment_config(base, model="unet")


def test_full_size_macs_unpruned_and_pruned():
    # Unpruned: exactly the plain ResNet-101 DeepLab v3+ at 513 (feature size 65).
    plain = DeepLabV3Plus(num_classes=21, backbone="resnet101", feature_size=65)
    reference = flops.conv_macs(flops.conv_layers(plain, (1, 513, 513, 3)))
    assert ft.full_size_macs("deeplab", 65, ft.pruning_rates(0.0)) == reference
    # Pruned at 40 % / 20 %: every pruned layer keeps C - floor(r C) filters, and a
    # 1x1 or 3x3 convolution between two pruned layers costs (1 - r)^2 as much.
    pruned = ft.full_size_macs("deeplab", 65, ft.pruning_rates(0.4))
    assert 0.36 * reference < pruned < 0.8 * reference


def _float(value):
    return None if value in ("", "None") else float(value)


def _check_same_weights(workdir, per_seed, rows, report):
    """The unpruned 129 cell's weights with the decoder truncated (the demo's section): at
    the untruncated grid they are the cell's model (same mIoU and MACs as its CSV row); at
    F = 9 the architecture of the trained 0 %, 33 cell (same MACs); the section's F = 9
    mIoU is their spread over the seeds, recomputed in NumPy."""
    same_weights = json.loads((workdir / "truncated_weights.json").read_text())
    records = same_weights["deeplab_pascal"]["per_seed"]  # [S][3]
    assert [[r["feature_size"] for r in seed] for seed in records] == [[33, 17, 9]] * 2
    for seed, seed_records in zip(("0", "1"), records, strict=True):
        (base_row,) = [
            r
            for r in per_seed
            if (float(r["encoder_rate"]), int(r["paper_feature_size"]), r["seed"])
            == (0.0, 129, seed)
        ]
        assert seed_records[0]["mean_iou"] == float(base_row["mean_iou"])
        assert seed_records[0]["macs"] == float(base_row["macs_eval"])
        assert seed_records[2]["macs"] == float(rows[(0.0, 33)]["macs_eval"])
    (section,) = report.split("### The unpruned 129 cell's weights")[1:]
    values = np.array([seed[2]["mean_iou"] for seed in records])
    half = scipy.stats.t.ppf(0.975, 1) * values.std(ddof=1) / np.sqrt(2)
    numbers = [values.mean(), values.std(ddof=1), values.mean() - half, values.mean() + half]
    mean, std, low, high = (f"{v:.3f}".replace("-", "−") for v in numbers)
    paper = paper_values.TABLE2_MIOU[0.0]["pascal"][2] / 100
    row = f"| 9 (ν_max 4) | 33 | {mean} ± {std} (95 % CI {low} to {high}, n=2) | {paper:.3f} |"
    assert row in section


@pytest.mark.slow
def test_main_smallest_grid(tmp_path, data_dir):
    workdir = tmp_path / "run"
    argv = ["feature_truncation", f"--workdir={workdir}", f"--config={cli.CONFIGS / 'tiny.py'}"]
    argv += [f"--config.data_dir={data_dir}", "--config.num_train_steps=2"]
    argv += ["--config.crop_size=33", "--config.batch_size=4", "--config.eval_batch_size=4"]
    argv += ["--pruning_rates=0,0.4", "--feature_sizes=129,33", "--nofull_size_flops"]
    argv += ["--num_seeds=2"]
    assert ft.main(argv) == workdir / "report.md"
    per_seed = read_csv(workdir / "feature_truncation.csv")
    cells = {(0.0, 129), (0.0, 33), (0.4, 129), (0.4, 33)}
    assert {
        (float(r["encoder_rate"]), int(r["paper_feature_size"]), r["seed"]) for r in per_seed
    } == {(*cell, seed) for cell in cells for seed in ("0", "1")}

    # The spreads over seeds, recomputed in NumPy from the per-seed rows.
    for spread in read_csv(workdir / "feature_truncation_spread.csv"):
        cell = (float(spread["encoder_rate"]), int(spread["paper_feature_size"]))
        seeds = [
            r for r in per_seed if (float(r["encoder_rate"]), int(r["paper_feature_size"])) == cell
        ]
        for name in ("mean_iou", "miou_drop", "fpi_eval_mmacs"):
            values = np.array([float(r[name]) for r in seeds])
            mean, std = values.mean(), values.std(ddof=1)
            half = scipy.stats.t.ppf(0.975, 1) * std / np.sqrt(2)
            np.testing.assert_allclose(float(spread[f"{name}_mean"]), mean, rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(float(spread[f"{name}_std"]), std, rtol=1e-9, atol=1e-15)
            np.testing.assert_allclose(
                [float(spread[f"{name}_ci_low"]), float(spread[f"{name}_ci_high"])],
                [mean - half, mean + half],
                rtol=1e-9,
                atol=1e-15,
            )
    report = (workdir / "report.md").read_text()
    assert "n=2" in report and "What the intervals over seeds say" in report

    rows = {
        (float(r["encoder_rate"]), int(r["paper_feature_size"])): r
        for r in per_seed
        if r["seed"] == "1"  # the second seed: pairs with its own baseline
    }
    base = rows[(0.0, 129)]
    config = tiny.get_config()
    config.crop_size = 33
    config = runs.experiment_config(config, model="deeplab", dataset="pascal", self_evaluated=True)
    unpruned = DeepLabV3Plus(
        num_classes=21,
        backbone="resnet_tiny",
        aspp_channels=config.model.aspp_channels,
        low_level_channels=config.model.low_level_channels,
        decoder_channels=config.model.decoder_channels,
    )
    x = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32)
    kernels = {
        "/".join(k.key for k in path[1:-1]): leaf.shape[-1]
        for path, leaf in jax.tree_util.tree_leaves_with_path(
            jax.eval_shape(unpruned.init, jax.random.key(0), x)
        )
        if path[0].key == "params" and path[-1].key == "kernel"
    }
    for (rate, size), row in rows.items():
        name = f"deeplab_pascal_enc{round(100 * rate):02d}_f{size}"
        cell = json.loads((workdir / name / "seed1" / "cell.json").read_text())
        # Feature sizes: 33-pixel crops (L = 9) in training, 129 (L = 33) at evaluation.
        expected_sizes = {129: (None, None), 33: (3, 9)}[size]
        assert (cell["feature_size_train"], cell["feature_size_eval"]) == expected_sizes
        widths = dict(map(tuple, cell["widths"]))
        if rate == 0:
            assert widths == {}
        else:
            # Every stem, bottleneck conv1/conv2 and ASPP layer at 40 %, decoder at 20 %.
            for path, channels in kernels.items():
                layer = path.rsplit("/", 1)[-1]
                decoder = ("decoder/low_level_conv", "decoder/fuse1_conv", "decoder/fuse2_conv")
                prunable = (
                    path == "encoder/conv1"
                    or layer in ("conv1", "conv2")
                    or path.startswith("aspp/")
                    or path in decoder
                )
                if not prunable:
                    assert path not in widths
                    continue
                layer_rate = 0.2 if path.startswith("decoder/") else 0.4
                kept = channels - math.floor(round(layer_rate * channels, 9))
                assert widths.get(path, channels) == kept, path
        # MACs of the model rebuilt from the widths, at the evaluation input.
        rebuilt = unpruned.clone(
            feature_size=cell["feature_size_eval"], widths=tuple(sorted(widths.items())) or None
        )
        macs = flops.conv_macs(flops.conv_layers(rebuilt, (1, 129, 129, 3)))
        assert float(row["macs_eval"]) == macs
        miou = float(row["mean_iou"])
        assert 0 <= miou <= 1
        assert math.isclose(float(row["fpi_eval_mmacs"]), macs / 1e6 / miou, rel_tol=1e-12)
        assert math.isclose(float(row["miou_drop"]), float(base["mean_iou"]) - miou, abs_tol=1e-12)
        assert math.isclose(
            float(row["pruned_flops_percent_eval"]),
            100 * (1 - macs / float(base["macs_eval"])),
            abs_tol=1e-9,
        )
        index = ft.PAPER_FEATURE_SIZES.index(size)
        paper_miou = paper_values.TABLE2_MIOU[rate]["pascal"][index]
        assert math.isclose(float(row["paper_miou"]), paper_miou / 100)
        assert math.isclose(
            float(row["paper_fpi"]),
            paper_values.TABLE2_FLOPS[rate][index] / (paper_miou / 100),
        )
        assert _float(row["gmacs_513"]) is None
    # Truncation and pruning both cut the MACs.
    assert float(rows[(0.0, 33)]["macs_eval"]) < float(base["macs_eval"])

    _check_same_weights(workdir, per_seed, rows, report)
    assert float(rows[(0.4, 129)]["macs_eval"]) < float(base["macs_eval"])

    # Hard pruning keeps the function: the soft-pruned full-width model, truncated the
    # same way, has the same mIoU.
    cell_dir = workdir / "deeplab_pascal_enc40_f33" / "seed1"
    config.model.feature_size = 3
    config.data_dir = data_dir
    config.seed = 1
    model, variables = runs.restore_trained(config, cell_dir)
    plan = pruning.pruning_plan(model, pruning.PruningRates(encoder=0.4, decoder=0.2))
    soft, _ = pruning.soft_prune(variables, plan)
    result = runs.evaluate_model(model.clone(feature_size=9), soft, config)
    np.testing.assert_allclose(result.mean_iou, float(rows[(0.4, 33)]["mean_iou"]), atol=2e-3)
    report = (workdir / "report.md").read_text()
    assert "fpi.png" in report and (workdir / "fpi.png").stat().st_size > 0
