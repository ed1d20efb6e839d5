"""End-to-end tests of the frequency-method experiments (issue 7) on the smallest setting.

Each runs ``main`` (one or two training steps, small crops, the embedded PASCAL-like
scenes) into ``tmp_path`` and checks its outputs against independent computations.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import aliasing as aliasing_experiment
from experiments import frequency_input, frequency_masking
from tests.helpers.outputs import read_csv


def _training_flags(data_dir, *, crop: int, batch: int = 4) -> list[str]:
    """One training step on ``crop`` crops, ``batch`` images per training and evaluation batch."""
    flags = [f"--config.data_dir={data_dir}", "--config.num_train_steps=1"]
    flags += [f"--config.crop_size={crop}", f"--config.batch_size={batch}"]
    return [*flags, f"--config.eval_batch_size={batch}"]


def _numpy_aliasing_score(images: np.ndarray, cutoff: float) -> np.ndarray:
    """float64 share of the power outside ``|nu| < cutoff n`` on both axes, per image."""
    x = images.astype(np.float64)
    _, h, w, _ = x.shape
    power = np.abs(np.fft.fft2(x, axes=(1, 2))) ** 2  # [B, H, W, C]
    low_h = np.abs(np.fft.fftfreq(h) * h) < cutoff * h - 1e-9
    low_w = np.abs(np.fft.fftfreq(w) * w) < cutoff * w - 1e-9
    low = low_h[:, None] & low_w[None, :]
    total = power.sum(axis=(1, 2, 3))
    return power[:, ~low, :].sum(axis=(1, 2)) / total


@pytest.mark.parametrize(
    "variants",
    [
        pytest.param(("baseline",), marks=pytest.mark.slow),
        pytest.param(("baseline", "daf"), marks=pytest.mark.slow),
    ],
)
def test_aliasing_experiment(tmp_path, data_dir, variants):
    workdir = tmp_path / "aliasing"
    args = ["aliasing", f"--workdir={workdir}", *_training_flags(data_dir, crop=33, batch=2)]
    args += ["--eval_images=2", f"--variants={','.join(variants)}"]
    assert aliasing_experiment.main(args) == workdir / "report.md"
    scores = read_csv(workdir / "aliasing_scores.csv")
    images = np.load(workdir / "aliasing_images.npy")
    # The stem convolution (stride 2) sees the images themselves: cutoff 1.4 / 4.
    want = _numpy_aliasing_score(images, 0.35).mean()
    for model in ("baseline (init)", *(f"{v} (trained)" for v in variants)):
        (row,) = [r for r in scores if r["model"] == model and r["layer"] == "encoder/conv1"]
        np.testing.assert_allclose(float(row["aliasing_score"]), want, rtol=1e-4)
    assert len({r["layer"] for r in scores}) >= 4
    metrics = read_csv(workdir / "boundary_metrics.csv")
    for row in metrics:
        summary = json.loads((workdir / row["variant"] / "seed0" / "summary.json").read_text())
        np.testing.assert_allclose(float(row["mean_iou"]), summary["mean_iou"], rtol=1e-12)
        np.testing.assert_allclose(float(row["biou"]), summary["boundary"]["biou"], rtol=1e-12)
    assert (workdir / "aliasing_scores.png").exists() and (workdir / "report.md").exists()


@pytest.mark.slow
def test_frequency_masking_experiment(tmp_path, data_dir):
    workdir = tmp_path / "masking"
    args = ["frequency_masking", f"--workdir={workdir}", *_training_flags(data_dir, crop=33)]
    args += ["--mus=0.2,0.5"]
    assert frequency_masking.main(args) == workdir / "report.md"
    rows = read_csv(workdir / "mu_ablation.csv")
    assert [float(r["mu"]) for r in rows] == [0.2, 0.5]
    summary = json.loads((workdir / "baseline" / "seed0" / "summary.json").read_text())
    for row in rows:
        # Parseval: the two parts' energies add up to the features' sum of squares.
        np.testing.assert_allclose(
            float(row["energy_low"]) + float(row["energy_high"]),
            float(row["energy_total"]),
            rtol=1e-4,
        )
        assert 0 <= float(row["score_share_low"]) <= 1
        np.testing.assert_allclose(float(row["miou_full"]), summary["mean_iou"], atol=1e-3)
    # A larger low square holds more of the energy.
    assert float(rows[1]["energy_share_low"]) >= float(rows[0]["energy_share_low"])
    cams = np.load(workdir / "cams.npz")
    assert cams["cam_low"].min() >= 0 and cams["cam_low"].max() <= 1
    assert "mIoU full" in (workdir / "report.md").read_text()


@pytest.mark.slow
def test_frequency_input_experiment(tmp_path, data_dir):
    workdir = tmp_path / "dct"
    args = ["frequency_input", f"--workdir={workdir}", *_training_flags(data_dir, crop=32)]
    args += ["--config.dct_statistics_batches=1", "--variants=dct24s,dct192_gate"]
    assert frequency_input.main(args) == workdir / "report.md"
    rows = read_csv(workdir / "frequency_input.csv")
    assert [r["variant"] for r in rows] == ["dct24s", "dct192_gate"]
    assert [int(r["input_channels"]) for r in rows] == [24, 192]
    for row in rows:
        summary = json.loads((workdir / row["variant"] / "seed0" / "summary.json").read_text())
        np.testing.assert_allclose(float(row["mean_iou"]), summary["mean_iou"], rtol=1e-12)
        assert int(row["eval_crop_size"]) == 144
    frequency = np.load(workdir / "gate_frequency_dct192_gate.npy")
    assert frequency.shape == (192,)
    # 50 validation images: every open fraction is a multiple of 1 / 50.
    np.testing.assert_allclose(frequency * 50, np.round(frequency * 50), atol=1e-4)
    assert (workdir / "gate_heat_map_dct192_gate.png").exists()
