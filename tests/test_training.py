"""Tests of spectral_jax.training: loss, schedule, optimizer, steps and the loop."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.training import checkpointing, train_state
from spectral_jax.training import train as train_lib
from tests.training_helpers import (
    NUM_CLASSES,
    generated_pipeline,
    run_python_isolated,
    tiny_test_config,
)

# ---------------------------------------------------------------------------------------
# Loss, schedule, optimizer.


def _reference_ce(logits, labels, ignore_index=255):
    """float64 mean CE over the valid pixels (0 if none)."""
    logits = np.asarray(logits, np.float64)
    valid = labels != ignore_index
    if not valid.any():
        return 0.0
    z = logits[valid]  # [N, C]
    log_norm = np.log(np.sum(np.exp(z - z.max(-1, keepdims=True)), -1)) + z.max(-1)
    return float(np.mean(log_norm - z[np.arange(len(z)), labels[valid]]))


@pytest.mark.parametrize("shape", [(1, 5, 5, 3), (2, 4, 7, 21)])
@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_cross_entropy_matches_float64(rng, shape, dtype):
    logits = (3 * rng.standard_normal(shape)).astype(dtype)
    labels = rng.integers(0, shape[-1], size=shape[:3])
    labels[rng.random(shape[:3]) < 0.3] = 255
    loss, num_valid = jax.jit(train_lib.cross_entropy_loss)(logits, labels)
    want = _reference_ce(np.asarray(logits, np.float32), labels)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(num_valid) == np.sum(labels != 255)


def test_cross_entropy_all_ignored_is_zero(rng):
    loss, num_valid = train_lib.cross_entropy_loss(
        rng.standard_normal((2, 3, 3, 4)), np.full((2, 3, 3), 255)
    )
    assert float(loss) == 0.0 and float(num_valid) == 0.0


@pytest.mark.parametrize("total_steps", [1, 10, 333])
def test_poly_schedule_closed_form(total_steps):
    schedule = train_state.poly_schedule(0.007, total_steps=total_steps, power=0.9)
    for step in sorted({0, 1, total_steps // 2, total_steps - 1, total_steps, total_steps + 5}):
        want = 0.007 * max(0.0, 1 - step / total_steps) ** 0.9
        np.testing.assert_allclose(float(schedule(step)), want, rtol=1e-6, atol=1e-12)


def test_bad_optimizer_arguments():
    with pytest.raises(ValueError, match="total_steps"):
        train_state.poly_schedule(0.1, total_steps=0)
    schedule = train_state.poly_schedule(0.1, total_steps=5)
    with pytest.raises(ValueError, match="weight_decay"):
        train_state.create_optimizer(schedule, weight_decay=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        train_state.create_optimizer(schedule, momentum=1.0)


# The paper's Sec. 3: crop 513, batch 8, ResNet-101, and per data set (lr, epochs).
@pytest.mark.parametrize(
    "name, dataset, learning_rate, epochs",
    [
        ("pascal", "voc_sbd", 0.0007, 100),
        ("deepglobe", "deepglobe_land_cover", 0.007, 600),
        ("cityscapes", "cityscapes", 0.001, 200),
    ],
)
def test_paper_configs(name, dataset, learning_rate, epochs):
    module = importlib.import_module(f"experiments.configs.{name}")
    config = module.get_config()
    assert (config.dataset, config.learning_rate, config.num_epochs) == (
        dataset,
        learning_rate,
        epochs,
    )
    assert (config.crop_size, config.batch_size, config.model.backbone) == (513, 8, "resnet101")
    assert (config.momentum, config.lr_power, config.weight_decay) == (0.9, 0.9, 1e-4)
    assert "python -m experiments.train" in module.__doc__ and "Expected" in module.__doc__
    model = train_lib.create_model(config.model, num_classes=21)
    assert type(model).__name__ == "DeepLabV3Plus" and model.feature_size is None


def test_tiny_config_is_small():
    from experiments.configs import tiny

    config = tiny.get_config()
    assert 65 <= config.crop_size <= 129 and config.model.backbone == "resnet_tiny"
    assert config.num_train_steps > 0 and "mIoU" in tiny.__doc__


@pytest.mark.parametrize("config_name", ["tiny", "pascal"])
def test_any_config_builds_dan(config_name):
    """``--config.model.name=dan`` alone works: low_level_channels becomes DAN's width."""
    config = importlib.import_module(f"experiments.configs.{config_name}").get_config()
    config.model.name = "dan"
    model = train_lib.create_model(config.model, num_classes=5)
    assert type(model).__name__ == "DAN"
    # The paper's configs keep the default 48 of both models.
    assert model.projection_channels == config.model.get("low_level_channels", 48)
    x = jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, variables, x).shape == (1, 65, 65, 5)
    config.model.low_level_channels = 8
    config.model.projection_channels = 16
    with pytest.raises(ValueError, match="both low_level_channels and projection_channels"):
        train_lib.create_model(config.model, num_classes=5)


# ---------------------------------------------------------------------------------------
# train_step on a per-pixel linear classifier, whose CE gradient has a closed form.


class _PixelLinear(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(NUM_CLASSES)(x)


def _reference_sgd(images, labels, kernel, bias, *, steps, lr, total, momentum, decay):
    """float64 SGD with momentum, poly schedule and L2 on the kernel only."""
    x = np.asarray(images, np.float64).reshape(-1, images.shape[-1])  # [N, 3]
    y = labels.reshape(-1)
    valid = y != 255
    onehot = np.eye(NUM_CLASSES)[np.where(valid, y, 0)] * valid[:, None]
    kernel, bias = np.asarray(kernel, np.float64), np.asarray(bias, np.float64)
    trace_k, trace_b = np.zeros_like(kernel), np.zeros_like(bias)
    losses = []
    for step in range(steps):
        z = x @ kernel + bias  # [N, C]
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        losses.append(-np.sum(onehot * np.log(p)) / valid.sum())
        dz = (p - onehot) * valid[:, None] / valid.sum()  # dL/dz, closed form
        grad_k = x.T @ dz + decay * kernel
        grad_b = dz.sum(0)
        trace_k = grad_k + momentum * trace_k
        trace_b = grad_b + momentum * trace_b
        rate = lr * (1 - step / total) ** 0.9
        kernel, bias = kernel - rate * trace_k, bias - rate * trace_b
    return kernel, bias, losses


@pytest.mark.parametrize("size", [4, 5])
def test_train_step_matches_closed_form_sgd(rng, size):
    images = rng.standard_normal((2, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=(2, size, size)).astype(np.int32)
    labels[0, 0, :] = 255
    model = _PixelLinear()
    variables = model.init(jax.random.key(1), jnp.asarray(images))
    schedule = train_state.poly_schedule(0.5, total_steps=10)
    optimizer = train_state.create_optimizer(schedule, momentum=0.9, weight_decay=0.01)
    state = train_state.create_train_state(model, variables, optimizer)
    chex.clear_trace_counter()  # The parameterized cases trace their own shapes once each.

    @chex.assert_max_traces(n=1)
    def step(state, batch):
        return train_lib.train_step(
            state, batch, learning_rate_fn=schedule, dropout_key=jax.random.key(0)
        )

    step_fn = jax.jit(step, donate_argnums=0)
    params = jax.device_get(state.params)
    batch = {"image": images, "label": labels}
    metrics = []
    for _ in range(3):
        state, step_metrics = step_fn(state, batch)
        metrics.append(step_metrics)
    kernel, bias, losses = _reference_sgd(
        images,
        labels,
        params["Dense_0"]["kernel"],
        params["Dense_0"]["bias"],
        steps=3,
        lr=0.5,
        total=10,
        momentum=0.9,
        decay=0.01,
    )
    np.testing.assert_allclose(state.params["Dense_0"]["kernel"], kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.params["Dense_0"]["bias"], bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([float(m["loss"]) for m in metrics], losses, rtol=1e-5)
    np.testing.assert_allclose(
        [float(m["learning_rate"]) for m in metrics],
        [0.5 * (1 - t / 10) ** 0.9 for t in range(3)],
        rtol=1e-6,
    )
    assert int(state.step) == 3


# ---------------------------------------------------------------------------------------
# The loop on the tiny DeepLab: one uninterrupted run shared by the tests below.

STEPS = 4


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    config = tiny_test_config(steps=STEPS)
    config.tensorboard = True
    pipeline = generated_pipeline(crop_size=config.crop_size)
    workdir = tmp_path_factory.mktemp("run")
    summary = train_lib.train_and_evaluate(config, workdir, input_pipeline=pipeline)
    return config, pipeline, workdir, summary


def _eval_logits_and_labels(config, pipeline, workdir):
    model = train_lib.create_model(config.model, num_classes=pipeline.num_classes)
    tree, _ = train_lib.load_checkpoint(workdir)
    variables = {"params": tree["params"], "batch_stats": tree["batch_stats"]}
    apply = jax.jit(model.apply)
    for batch in pipeline.eval_batches(config.eval_batch_size, 0, 1):
        yield np.asarray(apply(variables, batch["image"])), batch["label"]


def test_summary_and_metric_files(trained_run):
    config, _, workdir, summary = trained_run
    assert json.loads((workdir / "summary.json").read_text()) == summary
    assert summary["steps"] == STEPS and summary["resumed_from_step"] is None
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "train/loss" in r]
    eval_steps = [r["step"] for r in records if "eval/mean_iou" in r]
    assert train_steps == [2, 4] and eval_steps == [4]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    if train_lib.writers_lib.tensorboard_available():
        assert list(workdir.glob("events.out.tfevents.*"))
    last_eval = [r for r in records if "eval/mean_iou" in r][-1]
    assert last_eval["eval/mean_iou"] == pytest.approx(summary["mean_iou"])


def test_summary_matches_numpy_evaluation(trained_run):
    """mIoU, per-class IoU and mean CE recomputed in NumPy from the final checkpoint."""
    config, pipeline, workdir, summary = trained_run
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    image_ces = []
    for logits, labels in _eval_logits_and_labels(config, pipeline, workdir):
        predictions = logits.argmax(-1)
        valid = labels != 255
        np.add.at(confusion, (labels[valid], predictions[valid]), 1)
        image_ces += [_reference_ce(z[None], y[None]) for z, y in zip(logits, labels, strict=True)]
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    iou = np.where(union > 0, np.diag(confusion) / np.maximum(union, 1), np.nan)
    np.testing.assert_allclose(summary["mean_iou"], np.nanmean(iou), rtol=1e-12)
    got_iou = [summary["iou"][name] for name in pipeline.class_names]
    np.testing.assert_allclose(np.array(got_iou, dtype=float), iou, rtol=1e-12)
    # Spectral statistics: the band components sum to the spatial CE (Parseval); float32.
    np.testing.assert_allclose(summary["mean_ce"], np.mean(image_ces), rtol=1e-4)
    np.testing.assert_allclose(sum(summary["band_profile"]), np.mean(image_ces), rtol=1e-4)
    assert set(summary["relative_discrepancy"]) == {"8", "16"}  # 33 x 33: 17 bands.


def test_resume_in_process_equals_uninterrupted(trained_run, tmp_path):
    """A run "killed" after its step-2 checkpoint and restarted ends bit-identical.

    The kill is simulated by deleting the later checkpoint; the restart restores step 2
    and the data stream resumes at batch 2. Exact equality is expected: the restored
    state is the saved float32 state, the step-t dropout key is folded from t, and the
    same XLA program on the same device repeats the same arithmetic.
    """
    config, pipeline, workdir, summary = trained_run
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "4")
    summary_resumed = train_lib.train_and_evaluate(config, resumed, input_pipeline=pipeline)
    assert summary_resumed["resumed_from_step"] == 2
    want, step = train_lib.load_checkpoint(workdir)
    got, step_resumed = train_lib.load_checkpoint(resumed)
    assert step == step_resumed == STEPS
    leaves_want = jax.tree.leaves_with_path(want)
    leaves_got = jax.tree.leaves_with_path(got)
    assert len(leaves_want) == len(leaves_got) > 10
    for (path, a), (_, b) in zip(leaves_want, leaves_got, strict=True):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=str(path))
    assert summary_resumed["mean_iou"] == summary["mean_iou"]


def test_incompatible_model_config_is_refused(trained_run, tmp_path):
    config, pipeline, workdir, _ = trained_run
    other = tmp_path / "other"
    shutil.copytree(workdir, other)
    config = config.copy_and_resolve_references()
    config.model.decoder_channels = 12
    with pytest.raises(checkpointing.CheckpointError, match="decoder_channels") as info:
        train_lib.train_and_evaluate(config, other, input_pipeline=pipeline)
    assert str(other / "checkpoints") in str(info.value)


_TRAIN_ON_CORRUPT = """
import sys
from spectral_jax.training import checkpointing
from spectral_jax.training import train as train_lib
from tests.test_training import STEPS
from tests.training_helpers import generated_pipeline, tiny_test_config
config = tiny_test_config(steps=STEPS)
config.tensorboard = True
try:
    train_lib.train_and_evaluate(
        config, sys.argv[1], input_pipeline=generated_pipeline(crop_size=config.crop_size)
    )
    print("trained")
except checkpointing.CheckpointError as error:
    print("CheckpointError:", error)
"""


def test_corrupt_checkpoint_is_refused(trained_run, tmp_path):
    """The loop refuses a garbled checkpoint instead of starting afresh over it."""
    _, _, workdir, _ = trained_run
    corrupt = tmp_path / "corrupt"
    shutil.copytree(workdir, corrupt)
    for path in (corrupt / "checkpoints" / "4" / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"\x00garbled" + path.read_bytes()[8:])
    # In a child process: a restore that fails half-way leaves orbax reads in flight.
    out = run_python_isolated(_TRAIN_ON_CORRUPT, str(corrupt))
    assert out.startswith("CheckpointError:"), out
    assert str(corrupt / "checkpoints" / "4") in out
    assert sorted(p.name for p in (corrupt / "checkpoints").iterdir()) == ["2", "4"]


def test_soft_filter_pruning_at_epoch_ends(trained_run, tmp_path):
    """With 8 training examples and batch 4 an epoch is 2 steps: the final state is pruned.

    Every planned convolution then has exactly ``floor(rate * C)`` all-zero filters
    (counted in NumPy from the checkpoint), with zero BatchNorm offsets.
    """
    from spectral_jax.models import pruning

    config, _, _, _ = trained_run
    config = config.copy_and_resolve_references()
    config.pruning.encoder = 0.5
    config.pruning.decoder = 0.25
    pipeline = generated_pipeline(crop_size=config.crop_size, num_train=8)
    train_lib.train_and_evaluate(config, tmp_path, input_pipeline=pipeline)
    tree, _ = train_lib.load_checkpoint(tmp_path)
    model = train_lib.create_model(config.model, num_classes=pipeline.num_classes)
    plan = pruning.pruning_plan(model, pruning.PruningRates(encoder=0.5, decoder=0.25))
    checked = 0
    for conv in plan.convs:
        node = tree["params"]
        for key in conv.path.split("/"):
            node = node[key]
        kernel = np.asarray(node["kernel"])  # [kh, kw, Cin, C]
        channels = kernel.shape[-1]
        zero = np.all(kernel.reshape(-1, channels) == 0, axis=0)
        assert zero.sum() == int(np.floor(conv.rate * channels)), conv.path
        checked += zero.sum() > 0
    assert checked > 5


def test_pretrained_backbone_is_loaded_into_the_fresh_state(trained_run, tmp_path, monkeypatch):
    """config.pretrained_backbone goes to models.pretrained.load_pretrained_backbone."""
    from spectral_jax.models import pretrained

    config, pipeline, workdir, _ = trained_run
    config = config.copy_and_resolve_references()
    config.pretrained_backbone = "/weights/resnet.pth"
    calls = []

    def fake_loader(variables, checkpoint):
        calls.append((variables, checkpoint))
        marked = jax.tree.map(lambda x: x, dict(variables))
        marked["params"] = dict(marked["params"])
        marked["params"]["encoder"] = jax.tree.map(jnp.zeros_like, variables["params"]["encoder"])
        return marked

    monkeypatch.setattr(pretrained, "load_pretrained_backbone", fake_loader)
    config.num_train_steps = STEPS
    train_lib.train_and_evaluate(config, tmp_path, input_pipeline=pipeline)
    assert len(calls) == 1 and calls[0][1] == "/weights/resnet.pth"
    assert set(calls[0][0]) == {"params", "batch_stats"}
    # A resumed run keeps its trained weights: the loader is not called again.
    train_lib.train_and_evaluate(config, tmp_path, input_pipeline=pipeline)
    assert len(calls) == 1


# ---------------------------------------------------------------------------------------
# experiments/train.py killed with SIGKILL after a checkpoint, then restarted.

_TRAIN_FLAGS = (
    "--config=experiments/configs/tiny.py",
    "--config.num_train_steps=40",
    "--config.crop_size=33",
    "--config.checkpoint_every_steps=4",
    "--config.log_every_steps=10",
    "--config.eval_every_steps=-1",
    "--config.eval_split=validation[:8]",
    "--config.spectral_statistics=False",
    "--config.progress_bar=False",
)


def _launch(workdir):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.Popen(
        [sys.executable, "-m", "experiments.train", f"--workdir={workdir}", *_TRAIN_FLAGS],
        cwd=root,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finished_steps(workdir):
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return [int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "state").is_dir()]


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_parameters(tmp_path):
    """SIGKILL after the first checkpoint, restart: the final parameters are bit-equal.

    Exact equality, not float32 tolerance: the data stream is a function of the step, the
    dropout key is folded from the step, the checkpoint stores the float32 state as is,
    and both processes run the same XLA CPU program (deterministic on one device).
    """
    from spectral_jax.data import load_split

    load_split("synthetic_scenes/pascal_like", "train")  # Build once, not in two processes.
    load_split("synthetic_scenes/pascal_like", "validation")
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    reference = _launch(uninterrupted)
    victim = _launch(killed)
    deadline = time.monotonic() + 600
    while not _finished_steps(killed):
        assert victim.poll() is None, victim.stderr.read()[-4000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    victim.stderr.close()
    assert not (killed / "summary.json").exists(), "the run finished before the kill"
    killed_at = max(_finished_steps(killed))
    assert killed_at < 40
    restarted = _launch(killed)
    _, err = restarted.communicate(timeout=600)
    assert restarted.returncode == 0, err[-4000:]
    _, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-4000:]
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed_from_step"] is not None and summary["resumed_from_step"] >= killed_at
    want, step = train_lib.load_checkpoint(uninterrupted)
    got, step_resumed = train_lib.load_checkpoint(killed)
    assert step == step_resumed == 40
    for (path, a), (_, b) in zip(
        jax.tree.leaves_with_path(want), jax.tree.leaves_with_path(got), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=str(path))
    reference_summary = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["mean_iou"] == reference_summary["mean_iou"]


def test_jsonl_writer_records(tmp_path):
    from spectral_jax.training import writers

    writer = writers.create_default_writer(tmp_path, tensorboard=False, console=False)
    writer.write_scalars(3, {"a": np.float32(0.5), "b": float("nan")})
    writer.write_scalars(7, {"a": jnp.asarray(2.0)})
    writer.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 3, "a": 0.5, "b": None},
        {"step": 7, "a": 2.0},
    ]
