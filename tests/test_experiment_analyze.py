"""``experiments/analyze.py`` on a torchvision checkpoint file written here.

A torchvision ``deeplabv3_resnet50`` (21 classes, auxiliary head, random weights and
random BatchNorm statistics, its last convolution fitted to 4 training scenes by least
squares so that its predictions are not one class) is saved with ``torch.save``; the script imports it and
analyses 3 validation scenes of the embedded PASCAL-like data (129 x 129, batches of 2
so that the last batch is padded). Its numbers are checked against float64 NumPy
computations from the PyTorch model's own logits and ASPP output on the same images
(``tests/helpers/references.py``): mIoU, R(nu_max) and the band profiles under both ignore
conventions, and the ASPP's feature spectrum (Parseval). A rerun must read every stage
back without evaluating anything; a checkpoint with another class count must stop the
run before anything is written.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from absl import app

from experiments import analyze
from spectral_jax import analysis as analysis_lib
from spectral_jax.data import pipeline as pipeline_lib
from spectral_jax.evaluation import Evaluator
from tests.helpers import references

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

DATASET = "synthetic_scenes/pascal_like"
SPLIT = "validation[:3]"
SIZE = 129  # the embedded scenes' side: no padding beyond the scenes
NUM_CLASSES = 21


def _randomise_batch_norm(model, seed=0):
    """Random affine parameters and running statistics in every BatchNorm; eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                shape = module.weight.shape
                module.weight.copy_(0.5 + 0.5 * torch.rand(shape, generator=generator))
                module.bias.normal_(0.0, 0.1, generator=generator)
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.copy_(0.5 + 1.5 * torch.rand(shape, generator=generator))
    return model.eval()


def _argv(weights, workdir, data_dir, *extra):
    return [
        "analyze",
        "--model=torchvision_deeplabv3",
        "--backbone=resnet50",
        f"--weights={weights}",
        f"--dataset={DATASET}",
        f"--split={SPLIT}",
        f"--data_dir={data_dir}",
        f"--input_size={SIZE}",
        "--batch_size=2",
        f"--workdir={workdir}",
        *extra,
    ]


def _fit_classifier(model, data_dir, stride=8, ridge=1e-3):
    """The last 1x1 convolution fitted to 4 training scenes (ridge least squares).

    A random network's logits barely vary over the image (all pixels get one class);
    with its classifier fitted to the one-hot labels of its own features, the
    predictions follow the scenes, so that mIoU and R are not degenerate.
    """
    info = pipeline_lib.dataset_info(DATASET)
    source = pipeline_lib.load_split(DATASET, "train[:4]", data_dir=str(data_dir))
    batch = next(
        pipeline_lib.eval_batches(
            source, batch_size=len(source), crop_size=SIZE, mean=info.mean, std=info.std
        )
    )
    captured = {}
    hook = model.classifier[3].register_forward_hook(
        lambda module, inputs, output: captured.update(features=output)
    )
    with torch.no_grad():
        model(torch.from_numpy(batch["image"]).permute(0, 3, 1, 2))
    hook.remove()
    features = captured["features"].permute(0, 2, 3, 1).numpy().astype(np.float64)
    labels = batch["label"][:, ::stride, ::stride]  # the head's grid, 17 x 17
    valid = labels != info.ignore_index
    inputs = np.concatenate([features[valid], np.ones((valid.sum(), 1))], axis=1)
    targets = np.eye(NUM_CLASSES)[labels[valid]]
    solution = np.linalg.solve(
        inputs.T @ inputs + ridge * np.eye(inputs.shape[1]), inputs.T @ targets
    )  # [c + 1, C]
    with torch.no_grad():
        model.classifier[4].weight.copy_(torch.from_numpy(solution[:-1].T[:, :, None, None]))
        model.classifier[4].bias.copy_(torch.from_numpy(solution[-1]))
    return model


@pytest.fixture(scope="module")
def network(tmp_path_factory, data_dir):
    torch.manual_seed(0)
    model = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=True
    )
    model = _fit_classifier(_randomise_batch_norm(model), data_dir)
    path = tmp_path_factory.mktemp("weights") / "deeplabv3_resnet50_random.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def run(network, data_dir, tmp_path_factory):
    _, weights = network
    workdir = tmp_path_factory.mktemp("analyze") / "run"
    argv = _argv(weights, workdir, data_dir)
    report = analyze.main(argv)
    results = json.loads((workdir / "results.json").read_text())
    return argv, workdir, data_dir, report, results


@pytest.fixture(scope="module")
def reference(network, run):
    """The PyTorch model's float64 logits and ASPP output on the script's images."""
    model, _ = network
    _, _, data_dir, _, _ = run
    info = pipeline_lib.dataset_info(DATASET)
    source = pipeline_lib.load_split(DATASET, SPLIT, data_dir=str(data_dir))
    batch = next(
        pipeline_lib.eval_batches(
            source, batch_size=len(source), crop_size=SIZE, mean=info.mean, std=info.std
        )
    )
    captured = {}
    hook = model.classifier[0].register_forward_hook(
        lambda module, inputs, output: captured.update(aspp=output)
    )
    with torch.no_grad():
        outputs = model(torch.from_numpy(batch["image"]).permute(0, 3, 1, 2))
    hook.remove()
    logits = outputs["out"].permute(0, 2, 3, 1).numpy().astype(np.float64)  # [N, H, W, C]
    aspp = captured["aspp"].permute(0, 2, 3, 1).numpy().astype(np.float64)  # [N, h, w, c]
    return logits, batch["label"], aspp, info.ignore_index


def _reference_mean_iou(logits, labels, ignore_index):
    valid = labels != ignore_index
    truth, predicted = labels[valid], logits.argmax(-1)[valid]
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES))
    np.add.at(confusion, (truth, predicted), 1)
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    seen = union > 0
    return float(np.mean(np.diag(confusion)[seen] / union[seen]))


def test_report_figures_and_stages_are_written(run):
    _, workdir, _, report, results = run
    assert report == workdir / "report.md"
    text = report.read_text()
    for figure in ("band_profiles.png", "analysis/aspp_rows.png", "analysis/aspp_features.png"):
        assert (workdir / figure).stat().st_size > 1000
        assert f"({figure})" in text
    for stage in ("analysis_labels", "analysis_both", "truncation"):
        assert (workdir / "stages" / f"{stage}.json").exists()
    assert results["num_images"] == 3
    assert "Whole-image inference" in text


def test_miou_and_r_match_float64_reference_of_the_pytorch_logits(run, reference):
    _, _, _, report, results = run
    logits, labels, _, ignore_index = reference
    assert results["mean_iou"] == pytest.approx(
        _reference_mean_iou(logits, labels, ignore_index), abs=2e-4
    )  # a few arg-max ties may fall differently in float32
    assert (labels == ignore_index).any()  # the two conventions differ on these pixels
    text = report.read_text()
    for mode in analyze.IGNORE_MODES:
        spectrum = references.ce_spectrum(logits, labels, ignore_index, ignore_mode=mode)
        total = spectrum.sum(axis=(1, 2))  # [N]
        ours = results["ignore_modes"][mode]
        expected_r = [
            references.ratio_of_sums(references.truncated_ce(spectrum, nu, "chebyshev"), total)
            for nu in range(SIZE // 2 + 1)
        ]
        # float32 against float64: R is known to about 1e-7 absolute (Parseval error).
        np.testing.assert_allclose(ours["relative_discrepancy"], expected_r, rtol=1e-3, atol=1e-6)
        profile = references.band_sums(spectrum, "chebyshev").mean(axis=0)
        np.testing.assert_allclose(ours["band_profile"], profile, rtol=2e-3, atol=2e-6)
        # Table 1's columns: 8, 16, 32, 64 and 256 (the last band of the 129 grid).
        table = ours["relative_discrepancy_table1"]
        assert results["table1_band_limits"] == [8, 16, 32, 64, 256]
        assert table == [ours["relative_discrepancy"][nu] for nu in (8, 16, 32, 64, 64)]
        assert f"{table[1]:.4f}" in text
    labels_r = results["ignore_modes"]["labels"]["relative_discrepancy"]
    both_r = results["ignore_modes"]["both"]["relative_discrepancy"]
    assert not np.allclose(labels_r[:32], both_r[:32], rtol=1e-3)


def test_aspp_rows_and_feature_spectrum_match_the_pytorch_aspp(run, reference):
    _, workdir, _, _, results = run
    _, _, aspp, _ = reference
    assert results["aspp"]["shape"] == list(aspp.shape[1:])  # 17 x 17 x 256 at stride 8
    fractions = np.asarray(results["aspp"]["diagonal_energy_fraction"])  # [N, K]
    assert fractions.shape == (1, 3) and np.all((fractions > 0) & (fractions < 1))
    # Fig. 4's rows i = 0, M/4, M/2 of the 17 x 17 grid, as signed frequencies.
    m = 17 * 17
    expected = [divmod(i, 17) for i in (0, m // 4, m // 2)]
    expected = [[h if h <= 8 else h - 17, w if w <= 8 else w - 17] for h, w in expected]
    assert results["aspp"]["row_frequencies"] == expected
    # Parseval: the feature profile's bands sum to the mean square of the ASPP output.
    stored = analysis_lib.Analysis.from_json(
        (workdir / "stages" / "analysis_labels.json").read_text()
    )
    profile = stored.layer("aspp").feature_profile
    np.testing.assert_allclose(profile.sum(), np.mean(aspp**2), rtol=1e-4)
    expected_profile = references.band_sums(
        (np.abs(np.fft.fft2(aspp, axes=(1, 2))) ** 2).mean(-1) / (17 * 17) ** 2, "chebyshev"
    ).mean(0)
    np.testing.assert_allclose(profile, expected_profile, rtol=1e-3, atol=1e-9)


def test_truncation_rows_at_the_scaled_paper_grids(run):
    _, _, _, report, results = run
    rows = results["truncation"]
    # 129 input: stride-4 grid 33, band limit 16 -> 65 stands for 17, 33 for 9; the
    # torchvision head runs at stride 8 (17 x 17), so 129 and 65 are untruncated.
    assert [row["paper_feature_size"] for row in rows] == [129, 65, 33]
    assert [row["grid"] for row in rows] == [17, 17, 9]
    assert [row["feature_size"] for row in rows] == [None, None, 9]
    assert rows[0]["mean_iou"] == results["mean_iou"] == rows[1]["mean_iou"]
    assert rows[1]["mean_iou_drop_points"] == 0
    assert rows[2]["mean_iou_drop_points"] == pytest.approx(
        100 * (rows[0]["mean_iou"] - rows[2]["mean_iou"])
    )
    assert rows[2]["gmacs"] < rows[0]["gmacs"] == rows[1]["gmacs"]
    for row in rows:  # no FPI for an mIoU of 0 (random weights may score nothing)
        expected = row["gmacs"] / row["mean_iou"] if row["mean_iou"] > 0 else None
        assert row["fpi_gmacs"] == pytest.approx(expected)


def test_rerun_resumes_without_evaluating(run, monkeypatch):
    argv, workdir, _, _, results = run

    def refuse(*args, **kwargs):
        raise AssertionError("a finished stage was computed again")

    monkeypatch.setattr(analysis_lib, "analyze", refuse)
    monkeypatch.setattr(Evaluator, "__call__", refuse)
    analyze.main(argv)
    assert json.loads((workdir / "results.json").read_text()) == results


def test_other_settings_in_the_same_workdir_are_refused(run):
    argv, workdir, _, _, _ = run
    before = sorted(path.name for path in workdir.iterdir())
    with pytest.raises(app.UsageError, match=r"split: 'validation\[:3\]' there"):
        analyze.main([*argv, "--split=validation[:2]"])
    assert sorted(path.name for path in workdir.iterdir()) == before


def test_checkpoint_with_another_class_count_writes_nothing(network, data_dir, tmp_path):
    model, _ = network
    # The network's weights with a 5-class classifier and without the auxiliary head, as
    # deeplabv3_resnet50(num_classes=5) saves them (no second network to build).
    other = {k: v for k, v in model.state_dict().items() if not k.startswith("aux_classifier.")}
    other["classifier.4.weight"] = other["classifier.4.weight"][:5].clone()
    other["classifier.4.bias"] = other["classifier.4.bias"][:5].clone()
    weights = tmp_path / "five_classes.pth"
    torch.save(other, weights)
    workdir = tmp_path / "bad"
    with pytest.raises(ValueError, match="number of classes differs: the checkpoint has 5"):
        analyze.main(_argv(weights, workdir, data_dir))
    assert not workdir.exists()


def test_unknown_ignore_mode_is_refused_by_name():
    with pytest.raises(ValueError, match="ignore_mode must be one of .* got 'pixels'"):
        Evaluator(lambda variables, images: images, num_classes=3, ignore_mode="pixels")
