"""The prepared accelerator check (``benchmarks/accelerator_check.py``) runs on the CPU.

``--smoke`` runs every section at tiny sizes, so the script cannot rot between the rare
runs on an accelerator; its own correctness gates are compared with independent float64
references here, and a wrong spectrum must make the gate fail.
"""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import accelerator_check
from spectral_jax import probes
from tests.helpers import references


def _explicit_conv_layer_jacobian(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """``[HW, HW]`` real Jacobian of ``softplus(circular conv(x))``, built entry by entry."""
    height, width = x.shape
    kh, kw = kernel.shape
    matrix = np.zeros((height * width, height * width))
    z = np.zeros((height, width))
    for h in range(height):
        for w in range(width):
            for a in range(kh):
                for b in range(kw):
                    # probes.conv: wrap padding ((k - 1) // 2, k // 2), cross-correlation.
                    source = ((h + a - (kh - 1) // 2) % height, (w + b - (kw - 1) // 2) % width)
                    z[h, w] += kernel[a, b] * x[source]
                    matrix[h * width + w, source[0] * width + source[1]] += kernel[a, b]
    slope = 1.0 / (1.0 + np.exp(-z.ravel()))  # softplus' = sigmoid
    return slope[:, None] * matrix


@pytest.mark.parametrize("shape", [(5, 5), (6, 7)])
def test_conv_layer_jacobian_norm_is_the_spectral_jacobians_norm(shape):
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, size=(*shape, 1))
    kernel = 0.3 * rng.normal(size=(3, 3, 1, 1))
    real = _explicit_conv_layer_jacobian(x[..., 0], kernel[..., 0, 0])
    # J = F A F^{-1} with the unnormalised 2-D DFT over the flattened (C order) grid.
    dft = np.kron(
        np.fft.fft(np.eye(shape[0]), axis=0), np.fft.fft(np.eye(shape[1]), axis=0)
    )  # [HW, HW]
    spectral = dft @ real @ np.linalg.inv(dft)
    expected = np.sum(np.abs(spectral) ** 2)
    assert accelerator_check.conv_layer_jacobian_norm(x, kernel) == pytest.approx(
        expected, rel=1e-12
    )
    # The layer is the one the check differentiates.
    layer = probes.conv_activation(jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32))
    z = np.log(np.expm1(np.asarray(layer, np.float64)))  # softplus^{-1}
    np.testing.assert_allclose(
        1 / (1 + np.exp(-z.ravel())), np.diag(real) / kernel[1, 1, 0, 0], rtol=1e-4
    )


def test_direct_mean_ce_matches_float64():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 6, 4)) * 3
    labels = rng.integers(0, 4, size=(3, 7, 6))
    labels[0, :2] = 255
    labels[2] = 255  # An image without valid pixels: 0.
    got = accelerator_check.direct_mean_ce(jnp.asarray(logits, jnp.float32), jnp.asarray(labels))
    np.testing.assert_allclose(got, references.spatial_ce(logits, labels), rtol=1e-5, atol=1e-6)


def test_convolution_dtypes_counts_each_convolution_by_type():
    x = jax.ShapeDtypeStruct((1, 8, 8, 2), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 2, 4), jnp.float32)

    def two_convs(x, w, dtype):
        y = jax.lax.conv_general_dilated(
            x.astype(dtype),
            w.astype(dtype),
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        ) + y.astype(jnp.float32)

    lowered = jax.jit(two_convs, static_argnums=2).lower(x, w, jnp.bfloat16)
    assert accelerator_check.convolution_dtypes(lowered) == {"f32": 1, "bf16": 1}


def test_report_writes_valid_json_after_every_row(tmp_path):
    report = accelerator_check.Report(tmp_path, {"smoke": True, "environment": {}})
    report.add(accelerator_check.Row("s", "a", 2.0, "ms", ratio=0.5, baseline="b", bound=1.0))
    report.add(accelerator_check.Row("s", "nan", float("nan"), "ms", ratio=3.0, bound=1.0))
    data = json.loads((tmp_path / "accelerator_check.json").read_text())
    assert [row["holds"] for row in data["rows"]] == [True, False]
    assert data["rows"][1]["value"] is None  # NaN is written as null, valid JSON.
    assert "| s | a | 2 ms |" in (tmp_path / "accelerator_check.md").read_text()


def test_a_failing_section_is_recorded_and_the_next_runs(tmp_path, monkeypatch):
    def fail(sizes, report):
        raise RuntimeError("out of memory, say")

    monkeypatch.setattr(accelerator_check, "run_jacobian", fail)
    monkeypatch.setattr(accelerator_check, "run_spectrum", lambda sizes, report: {"ran": True})
    status = accelerator_check.main(
        ["--smoke", "--out", str(tmp_path), "--sections", "jacobian,spectrum"]
    )
    data = json.loads((tmp_path / "accelerator_check.json").read_text())
    assert status == 1
    assert data["sections"]["jacobian"]["status"] == "error"
    assert "out of memory, say" in data["sections"]["jacobian"]["error"]
    assert data["sections"]["spectrum"] == {
        "status": "ok",
        "elapsed_s": data["sections"]["spectrum"]["elapsed_s"],
        "results": {"ran": True},
        "device_peak_mib": None,
    }


def test_sections_past_the_time_budget_are_skipped(tmp_path):
    status = accelerator_check.main(["--smoke", "--out", str(tmp_path), "--budget-s", "-1"])
    data = json.loads((tmp_path / "accelerator_check.json").read_text())
    assert status == 0
    assert {s["status"] for s in data["sections"].values()} == {"skipped"}
    assert list(data["sections"]) == list(accelerator_check.SECTIONS)


def test_the_spectrum_gate_catches_a_wrong_spectrum(tmp_path, monkeypatch):
    correct = accelerator_check.sj.ce_spectrum
    monkeypatch.setattr(
        accelerator_check.sj, "ce_spectrum", lambda *args, **kw: 1.001 * correct(*args, **kw)
    )
    status = accelerator_check.main(["--smoke", "--out", str(tmp_path), "--sections", "spectrum"])
    data = json.loads((tmp_path / "accelerator_check.json").read_text())
    failed = {c["name"] for c in data["checks"] if not c["ok"]}
    assert status == 1
    assert "ce_spectrum vs float64 (2 images)" in failed
    assert "ce_spectrum Parseval (all images)" in failed


# Every section end to end, the PyTorch train step included: about 45 s of the 2 cores, so
# in the slow suite (`make test-slow`); the default tests keep the checks, the records and a
# failing section (above).
@pytest.mark.slow
def test_smoke_runs_every_section(tmp_path):
    status = accelerator_check.main(["--smoke", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "accelerator_check.json").read_text())
    assert status == 0, data["sections"]
    assert {name: s["status"] for name, s in data["sections"].items()} == {
        name: "ok" for name in accelerator_check.SECTIONS
    }
    assert data["checks_ok"] and len(data["checks"]) >= 12
    rows = {(row["section"], row["name"]): row for row in data["rows"]}

    # Every measured value is a positive, finite number.
    for row in data["rows"]:
        if row["value"] is not None:
            assert math.isfinite(row["value"]) and row["value"] > 0, row
    for name in ("floor", "ce_spectrum", "band_limit_sweep", "ce_spectrum[k=3]"):
        row = rows[("spectrum", f"{name} 2x33x33x5")]
        assert row["details"]["compile_s"] > 0 and row["memory_mib"] >= 0
        if name != "floor":
            assert row["ratio"] == pytest.approx(
                row["value"] / rows[("spectrum", "floor 2x33x33x5")]["value"]
            )
    assert {name for section, name in rows if section == "jacobian"} == {
        "spectral_jacobian 9x9 (chunk 16)",
        "spectral_jacobian_band_energy 9x9 (chunk 16)",
    }
    jax_f32 = rows[("train_step", "JAX float32")]
    assert math.isfinite(jax_f32["details"]["loss"])
    assert jax_f32["details"]["convolution_dtypes"].get("bf16", 0) == 0
    torch_f32 = rows[("train_step", "PyTorch float32")]
    if accelerator_check.torch is None:
        assert torch_f32["value"] is None and torch_f32["note"] == "torch not installed"
    elif torch_f32["note"] == "torchvision not installed":  # torch alone (make test)
        assert torch_f32["value"] is None
    else:
        assert torch_f32["value"] > 0

    loop = data["sections"]["loop"]["results"]
    assert 0.0 <= loop["summary"]["mean_iou"] <= 1.0
    assert loop["summary"]["steps"] == accelerator_check.SMOKE.loop_steps
    final_loss = rows[("loop", "train_and_evaluate: 3 steps + evaluation")]["details"]
    assert math.isfinite(final_loss["final_train_loss"])
    spectral = rows[("loop", "evaluation pass + spectral statistics")]
    plain = rows[("loop", "evaluation pass, plain (mIoU, CE)")]
    assert spectral["ratio"] == pytest.approx(spectral["value"] / plain["value"])
