"""Tests of the frequency-domain methods in the training loop (issue 7).

Boundary metrics at evaluation, the DCT-input DeepLab with its gate, and the
de-aliasing filter / FreqMix backbones, each a few steps on generated data.
"""

from __future__ import annotations

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.data import dct_input_pipeline, dct_pipeline, load_dct_statistics
from spectral_jax.evaluation import BOUNDARY_SCORES
from spectral_jax.models import create_model
from spectral_jax.related import boundary_metrics
from spectral_jax.training import load_variables, train_and_evaluate
from tests.helpers.training import NUM_CLASSES, generated_pipeline, tiny_test_config


def _predictions_of_checkpoint(config, workdir, pipeline, *, dct_pipeline=None):
    model = create_model(config.model, num_classes=NUM_CLASSES)
    variables = load_variables(workdir)
    batches = (dct_pipeline or pipeline).eval_batches(4, 0, 1)
    apply = jax.jit(functools.partial(model.apply, train=False))
    predictions, labels = [], []
    for batch in batches:
        logits = apply(variables, jnp.asarray(batch["image"]))
        predictions.append(np.asarray(jnp.argmax(logits, -1)))
        labels.append(batch["label"])
    return np.concatenate(predictions), np.concatenate(labels)


@pytest.mark.slow
def test_summary_boundary_scores_equal_recomputation_from_checkpoint(tmp_path):
    config = tiny_test_config(crop_size=33, steps=2)
    pipeline = generated_pipeline(crop_size=33)
    summary = train_and_evaluate(config, tmp_path, input_pipeline=pipeline)
    predictions, labels = _predictions_of_checkpoint(config, tmp_path, pipeline)
    assert predictions.shape[0] == 6  # Only the real examples; no padded ones.
    statistics = boundary_metrics.boundary_statistics(predictions, labels, num_classes=NUM_CLASSES)
    want = boundary_metrics.boundary_scores(statistics)
    assert set(summary["boundary"]) == set(BOUNDARY_SCORES)
    for name in BOUNDARY_SCORES:
        np.testing.assert_allclose(summary["boundary"][name], want[name], rtol=1e-12)
    assert json.loads((tmp_path / "summary.json").read_text())["boundary"] == summary["boundary"]


def _dct_config(*, gate, crop_size=32, steps=3):
    config = tiny_test_config(crop_size=crop_size, steps=steps)
    config.model.name = "dct_deeplabv3plus"
    config.model.channels = tuple(range(0, 192, 4))  # 48 channels
    config.model.gate = gate
    config.model.gate_weight = 0.01
    config.dct_statistics_batches = 2
    config.spectral_statistics = False
    config.boundary_metrics = False
    return config


def _train_metrics(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if "train/loss" in line]


@pytest.mark.parametrize("gate", [pytest.param(False, marks=pytest.mark.slow), True])
def test_dct_model_trains_with_gate_regularizer(tmp_path, gate):
    config = _dct_config(gate=gate)
    pipeline = generated_pipeline(crop_size=32)
    summary = train_and_evaluate(config, tmp_path, input_pipeline=pipeline)
    records = _train_metrics(tmp_path)
    assert records and all(np.isfinite(r["train/loss"]) for r in records)
    assert np.isfinite(summary["mean_iou"])
    assert summary["boundary"] is None, "boundary_metrics=False must leave no boundary scores"
    if gate:
        for record in records:
            # Mean open gates per image among the 48, and total = CE + lambda * gates.
            assert 0 <= record["train/gate_regularizer"] <= 48
            np.testing.assert_allclose(
                record["train/total_loss"],
                record["train/loss"] + config.model.gate_weight * record["train/gate_regularizer"],
                rtol=1e-5,
            )
    else:
        assert "train/gate_regularizer" not in records[0]
    # The summary's mIoU is that of the checkpoint's predictions on the DCT input.
    mean, std = load_dct_statistics(tmp_path)
    dct_pipeline = dct_input_pipeline(pipeline, mean, std)
    predictions, labels = _predictions_of_checkpoint(
        config, tmp_path, pipeline, dct_pipeline=dct_pipeline
    )
    valid = labels != 255
    intersection = [np.sum((predictions == c) & (labels == c) & valid) for c in range(3)]
    union = [np.sum(((predictions == c) | (labels == c)) & valid) for c in range(3)]
    iou = [i / u for i, u in zip(intersection, union, strict=True) if u > 0]
    np.testing.assert_allclose(summary["mean_iou"], np.mean(iou), rtol=1e-12)


@pytest.mark.parametrize("layout, grid", [("segmentation", 8), ("classification", 4)])
def test_dct_statistics_dc_mean_is_the_luma_mean(tmp_path, layout, grid):
    """Channel 0 (Y DC, orthonormal DCT) has mean ``8 (mean(Y) - 128)`` over the batches
    (bilinear 2x up-scaling with replicated edges keeps the mean)."""
    pipeline = generated_pipeline(crop_size=32)
    statistics = dct_pipeline._dct_channel_statistics(
        pipeline, batch_size=4, num_batches=2, layout=layout
    )
    batches = pipeline.train_batches(0, 4, 0, 1)
    images = np.concatenate([next(batches)["image"] for _ in range(2)]).astype(np.float64)
    rgb = 255.0 * images
    luma = rgb @ np.array([0.299, 0.587, 0.114]) - 128.0
    np.testing.assert_allclose(float(statistics.mean[0]), 8 * luma.mean(), rtol=1e-4)
    assert float(statistics.count) == 8 * grid * grid  # 8 images of grid x grid positions


def test_dct_statistics_remember_their_layout(tmp_path):
    mean, std = np.zeros(192), np.ones(192)
    np.savez(tmp_path / "dct_statistics.npz", mean=mean, std=std, layout="segmentation")
    np.testing.assert_array_equal(load_dct_statistics(tmp_path, layout="segmentation")[1], std)
    with pytest.raises(ValueError, match="'segmentation' layout, not 'classification'"):
        load_dct_statistics(tmp_path, layout="classification")
    # Files from before the layouts hold the classification layout.
    np.savez(tmp_path / "dct_statistics.npz", mean=mean, std=std)
    load_dct_statistics(tmp_path, layout="classification")
    with pytest.raises(ValueError, match="'classification' layout, not 'segmentation'"):
        load_dct_statistics(tmp_path, layout="segmentation")
    # A run of the other layout refuses them rather than normalising with them.
    config = _dct_config(gate=False)
    with pytest.raises(ValueError, match="layout"):
        train_and_evaluate(config, tmp_path, input_pipeline=generated_pipeline(crop_size=32))


def test_dct_input_is_computed_on_the_host_cpu(monkeypatch):
    """The pipeline's DCT runs on the CPU device, committed there, not on the default one.

    On an accelerator, reading coefficients back from the default device would make the
    host wait for the training steps queued there, at every step.
    """
    calls = []
    normalized_dct = dct_pipeline._normalized_dct

    def spied(*args, **kwargs):
        calls.append(args)
        return normalized_dct(*args, **kwargs)

    monkeypatch.setattr(dct_pipeline, "_normalized_dct", spied)
    pipeline = dct_input_pipeline(generated_pipeline(crop_size=32), np.zeros(192), np.ones(192))
    batch = next(pipeline.train_batches(0, 4, 0, 1))
    assert isinstance(batch["image"], np.ndarray) and batch["image"].shape == (4, 8, 8, 192)
    cpu = jax.local_devices(backend="cpu")[0]
    assert len(calls) == 1
    for array in calls[0]:  # images, image mean and std, channel mean and std
        assert array.committed and array.devices() == {cpu}


def test_dct_model_rejects_crops_not_multiple_of_16(tmp_path):
    config = _dct_config(gate=False, crop_size=33)
    with pytest.raises(ValueError, match="crop_size"):
        train_and_evaluate(config, tmp_path, input_pipeline=generated_pipeline(crop_size=33))


@pytest.mark.parametrize("name", ["daf", "freqmix"])
def test_downsample_filter_configs_build_their_filters(name):
    """``config.model.downsample_filter`` puts the named filter before the strided blocks
    of the model the trainer creates (traced only: ``jax.eval_shape``)."""
    config = tiny_test_config(crop_size=33)
    config.model.downsample_filter = name
    model = create_model(config.model, num_classes=NUM_CLASSES)
    called = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            called.append(type(context.module).__name__)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        variables = jax.eval_shape(
            functools.partial(model.init, train=False),
            jax.random.key(0),
            jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32),
        )
    filter_name = {"daf": "DeAliasingFilter", "freqmix": "FreqMix"}[name]
    # Before the strided blocks of layer2 and layer3 (output stride 16: layer4 dilates).
    assert called.count(filter_name) == 2, called
    names = repr(jax.tree_util.tree_structure(variables["params"]))
    assert ("'downsample_filter'" in names) == (name == "freqmix")


# Slow: the filters' values and gradients have tests of their own
# (tests/test_anti_aliasing.py), the configuration's model the test above, and the
# loop trains every model alike. FreqMix compiles slowly (an FFT pair per strided block,
# forward and backward); the DAF is a fixed filter.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["daf", "freqmix"])
def test_downsample_filter_configs_train(tmp_path, name):
    """Each filter trains; with the boundary metrics switched off (a run of its own costs
    20 s of compilation), the summary has none."""
    config = tiny_test_config(crop_size=33, steps=2)
    config.model.downsample_filter = name
    config.spectral_statistics = False
    config.boundary_metrics = False
    summary = train_and_evaluate(config, tmp_path, input_pipeline=generated_pipeline(crop_size=33))
    records = _train_metrics(tmp_path)
    assert records and all(np.isfinite(r["train/loss"]) for r in records)
    assert 0 <= summary["mean_iou"] <= 1
    assert summary["boundary"] is None, "boundary_metrics=False must leave no boundary scores"
    names = repr(jax.tree_util.tree_structure(load_variables(tmp_path)["params"]))
    # FreqMix has parameters (its channel attention); the DAF is parameter-free.
    assert ("'downsample_filter'" in names) == (name == "freqmix")
