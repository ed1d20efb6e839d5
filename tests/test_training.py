"""Tests of spectral_jax.training: schedule, optimizer and the loop (train.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import array as array_lib
from orbax.checkpoint.checkpoint_manager import is_async_checkpointer

from spectral_jax.evaluation import evaluator as evaluator_lib
from spectral_jax.models import create_model, flax_to_torch_state_dict
from spectral_jax.training import checkpointing, train, train_and_evaluate, train_state, writers
from tests.helpers import references
from tests.helpers.compile_counting import count_compilations
from tests.helpers.models import random_variables
from tests.helpers.training import (
    NUM_CLASSES,
    generated_pipeline,
    run_python_isolated,
    tiny_test_config,
)

# ---------------------------------------------------------------------------------------
# Initialisation, schedule, optimizer.


class _TwoConvs(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        del train
        return nn.Conv(2, (3, 3))(nn.relu(nn.Conv(4, (3, 3))(x)))


def test_init_variables_compiles_once_per_model_and_equals_model_init():
    """Other keys of the same model reuse its compiled ``init``; the values are ``model.init``'s."""
    model = _TwoConvs()
    with count_compilations() as compiled:
        first = train_state.init_variables(model, jax.random.key(11), image_size=5)
    with count_compilations() as again:
        second = train_state.init_variables(model, jax.random.key(12), image_size=5)
    assert compiled.count("jit(init)") == 1 and again == [], (compiled, again)
    for key, variables in ((11, first), (12, second)):
        expected = model.init(jax.random.key(key), jnp.zeros((1, 5, 5, 3)), train=False)
        for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(
        first["params"]["Conv_0"]["kernel"], second["params"]["Conv_0"]["kernel"]
    )


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


# ---------------------------------------------------------------------------------------
# The loop on the tiny DeepLab: one uninterrupted run shared by the tests below.

STEPS = 4


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The uninterrupted run, evaluated at steps 2 and 4 (6 evaluation examples in batches
    of 4: one short batch, padded), with the names of the functions it compiled.

    The loop's program and the evaluator's step are created afresh (their caches
    cleared, nothing else), so that the run compiles them even when an earlier test in
    the process trained with the same settings.
    """
    config = tiny_test_config(steps=STEPS)
    config.tensorboard = True
    config.eval_every_steps = 2
    config.boundary_metrics = True
    pipeline = generated_pipeline(crop_size=config.crop_size)
    workdir = tmp_path_factory.mktemp("run")
    train._training_program.cache_clear()
    evaluator_lib._jitted_step.cache_clear()
    with count_compilations() as compiled:
        summary = train_and_evaluate(config, workdir, input_pipeline=pipeline)
    return config, pipeline, workdir, summary, compiled


def _eval_logits_and_labels(config, pipeline, workdir):
    model = create_model(config.model, num_classes=pipeline.num_classes)
    tree, _ = checkpointing.load_checkpoint(workdir)
    variables = {"params": tree["params"], "batch_stats": tree["batch_stats"]}
    apply = jax.jit(model.apply)
    for batch in pipeline.eval_batches(config.eval_batch_size, 0, 1):
        yield np.asarray(apply(variables, batch["image"])), batch["label"]


def test_a_label_outside_the_classes_stops_training_at_its_step(trained_run, tmp_path):
    # A label -1 (PyTorch's ignore value) was trained as class C - 1, silently. Now the
    # step's loss is NaN and the loop stops at the next log step (4), before it logs,
    # evaluates or saves, naming step 3 (batch 2 of the stream).
    config, pipeline, _, _, _ = trained_run
    config = config.copy_and_resolve_references()
    config.eval_every_steps = -1  # Only at the end, which the run does not reach.

    def train_batches(start_step, batch_size, shard_index, shard_count, seed=None):
        stream = pipeline.train_batches(start_step, batch_size, shard_index, shard_count, seed)
        for index, batch in enumerate(stream, start=start_step):
            if index == 2:
                batch["label"][1, 4, 5] = -1
            yield batch

    bad_pipeline = dataclasses.replace(pipeline, train_batches=train_batches)
    with pytest.raises(
        train.InvalidLabelsError,
        match=r"training step 3 \(batch 2 of the training stream, counted from 0\) holds 1 "
        r"label\(s\) outside \[0, 3\) that are not the ignore index 255",
    ):
        train_and_evaluate(config, tmp_path, input_pipeline=bad_pipeline)
    # Step 2 was logged and saved; steps 3 and 4 (NaN) were neither.
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line)["step"] for line in lines]
    assert logged == [2]
    manager = checkpointing.create_checkpoint_manager(tmp_path)
    assert list(manager.all_steps()) == [2]
    manager.close()


def test_config_ignore_index_must_match_the_pipeline(trained_run, tmp_path):
    config, pipeline, _, _, _ = trained_run
    config = config.copy_and_resolve_references()
    config.ignore_index = -1
    with pytest.raises(ValueError, match=r"config.ignore_index=-1 differs from the input pipeline"):
        train_and_evaluate(config, tmp_path, input_pipeline=pipeline)


def test_summary_and_metric_files(trained_run):
    config, _, workdir, summary, _ = trained_run
    assert json.loads((workdir / "summary.json").read_text()) == summary
    assert summary["steps"] == STEPS and summary["resumed_from_step"] is None
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if "train/loss" in r]
    eval_steps = [r["step"] for r in records if "eval/mean_iou" in r]
    assert train_steps == [2, 4] and eval_steps == [2, 4]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    if writers.tensorboard_available():
        assert list(workdir.glob("events.out.tfevents.*"))
    last_eval = [r for r in records if "eval/mean_iou" in r][-1]
    assert last_eval["eval/mean_iou"] == pytest.approx(summary["mean_iou"])


def test_summary_matches_numpy_evaluation(trained_run):
    """mIoU, per-class IoU and mean CE recomputed in NumPy from the final checkpoint."""
    config, pipeline, workdir, summary, _ = trained_run
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    image_ces = []
    for logits, labels in _eval_logits_and_labels(config, pipeline, workdir):
        predictions = logits.argmax(-1)
        valid = labels != 255
        np.add.at(confusion, (labels[valid], predictions[valid]), 1)
        image_ces += list(references.spatial_ce(logits, labels))  # float64, per image
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
    config, pipeline, workdir, summary, _ = trained_run
    resumed = tmp_path / "resumed"
    shutil.copytree(workdir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "4")
    summary_resumed = train_and_evaluate(config, resumed, input_pipeline=pipeline)
    assert summary_resumed["resumed_from_step"] == 2
    want, step = checkpointing.load_checkpoint(workdir)
    got, step_resumed = checkpointing.load_checkpoint(resumed)
    assert step == step_resumed == STEPS
    leaves_want = jax.tree.leaves_with_path(want)
    leaves_got = jax.tree.leaves_with_path(got)
    assert len(leaves_want) == len(leaves_got) > 10
    for (path, a), (_, b) in zip(leaves_want, leaves_got, strict=True):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=str(path))
    assert summary_resumed["mean_iou"] == summary["mean_iou"]


def test_incompatible_model_config_is_refused(trained_run, tmp_path):
    config, pipeline, workdir, _, _ = trained_run
    other = tmp_path / "other"
    shutil.copytree(workdir, other)
    config = config.copy_and_resolve_references()
    config.model.decoder_channels = 12
    with pytest.raises(checkpointing.CheckpointError, match="decoder_channels") as info:
        train_and_evaluate(config, other, input_pipeline=pipeline)
    assert str(other / "checkpoints") in str(info.value)


_TRAIN_ON_CORRUPT = """
import sys
from spectral_jax.training import checkpointing, train_and_evaluate
from tests.test_training import STEPS
from tests.helpers.training import generated_pipeline, tiny_test_config
config = tiny_test_config(steps=STEPS)
config.tensorboard = True
config.eval_every_steps = 2
try:
    train_and_evaluate(
        config, sys.argv[1], input_pipeline=generated_pipeline(crop_size=config.crop_size)
    )
    print("trained")
except checkpointing.CheckpointError as error:
    print("CheckpointError:", error)
"""


def test_corrupt_checkpoint_is_refused(trained_run, tmp_path):
    """The loop refuses a garbled checkpoint instead of starting afresh over it."""
    _, _, workdir, _, _ = trained_run
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

    config, _, _, _, _ = trained_run
    config = config.copy_and_resolve_references()
    config.pruning.encoder = 0.5
    config.pruning.decoder = 0.25
    pipeline = generated_pipeline(crop_size=config.crop_size, num_train=8)
    train_and_evaluate(config, tmp_path, input_pipeline=pipeline)
    tree, _ = checkpointing.load_checkpoint(tmp_path)
    model = create_model(config.model, num_classes=pipeline.num_classes)
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

    config, pipeline, workdir, _, _ = trained_run
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
    train_and_evaluate(config, tmp_path, input_pipeline=pipeline)
    assert len(calls) == 1 and calls[0][1] == "/weights/resnet.pth"
    assert set(calls[0][0]) == {"params", "batch_stats"}
    # A resumed run keeps its trained weights: the loader is not called again.
    train_and_evaluate(config, tmp_path, input_pipeline=pipeline)
    assert len(calls) == 1


class _StopBeforeTheFirstStep(Exception):
    """Raised by a spy (:func:`_spy_on_train_fn`) to end a run at its first step."""


def test_pretrained_weights_of_a_whole_network_start_the_run(tmp_path, monkeypatch):
    """config.pretrained_weights: a trained PyTorch network's checkpoint (here an .npz of
    torchvision DeepLab v3's state dict) is the fresh state; a checkpoint of another
    network stops the run, naming what differs, before anything is written."""
    config = tiny_test_config(steps=1)
    config.model.name = "torchvision_deeplabv3"
    pipeline = generated_pipeline(crop_size=config.crop_size)
    model = create_model(config.model, num_classes=NUM_CLASSES)
    variables = random_variables(model, (1, config.crop_size, config.crop_size, 3), seed=5)
    path = tmp_path / "deeplabv3.npz"
    np.savez(path, **flax_to_torch_state_dict(variables, layout="torchvision_deeplabv3"))
    config.pretrained_weights = str(path)
    first_states = []

    def keep_first(state):
        # A host copy of the state the first step gets; then the run stops, before it
        # compiles the step of this model, which the test does not need.
        first_states.append(jax.tree.map(np.asarray, (state.params, state.batch_stats)))
        raise _StopBeforeTheFirstStep

    _spy_on_train_fn(monkeypatch, keep_first)
    with pytest.raises(_StopBeforeTheFirstStep):
        train_and_evaluate(config, tmp_path / "run", input_pipeline=pipeline)
    assert len(first_states) == 1
    started = {"params": first_states[0][0], "batch_stats": first_states[0][1]}
    jax.tree.map(np.testing.assert_array_equal, started, variables)

    other = create_model(config.model, num_classes=NUM_CLASSES + 2)
    wrong = random_variables(other, (1, config.crop_size, config.crop_size, 3))
    np.savez(path, **flax_to_torch_state_dict(wrong, layout="torchvision_deeplabv3"))
    with pytest.raises(ValueError, match="number of classes differs: the checkpoint has 5"):
        train_and_evaluate(config, tmp_path / "refused", input_pipeline=pipeline)
    assert os.listdir(tmp_path / "refused") == []
    config.model.name = "deeplabv3plus"
    with pytest.raises(ValueError, match="config.pretrained_weights needs config.model.name"):
        train_and_evaluate(config, tmp_path / "refused", input_pipeline=pipeline)


# ---------------------------------------------------------------------------------------
# The loop keeps the device busy: no host synchronisation between log points, async
# checkpoints complete and exact when the run returns, evaluation compiled once.


def _spy_on_train_fn(monkeypatch, on_step):
    """Makes the loop's compiled step call ``on_step(state)`` before every step."""
    create_program = train._training_program

    def spied_program(*args, **kwargs):
        program = create_program(*args, **kwargs)

        def train_fn(state, batch, dropout_keys):
            on_step(state)
            return program.train_fn(state, batch, dropout_keys)

        return dataclasses.replace(program, train_fn=train_fn)

    monkeypatch.setattr(train, "_training_program", spied_program)


def test_host_reads_device_values_only_at_log_and_evaluation_steps(tmp_path, monkeypatch):
    """Between two log points the host neither reads a device array nor blocks on one.

    Every read of an array's value (``float``, ``int``, ``bool``, ``.tolist()``,
    ``jax.device_get``: all go through ``ArrayImpl._value``) and every
    ``block_until_ready`` on the loop's thread is recorded with the number of steps
    dispatched so far; they may happen only after the log and evaluation steps (here 2
    and 4) and before the first step. ``np.asarray`` of a CPU array is not seen (it
    reads the buffer without ``_value``, zero-copy); on an accelerator it goes through
    ``_value``.
    """
    config = tiny_test_config(steps=STEPS)  # trained_run's settings: compiled once.
    config.log_every_steps = 2
    config.checkpoint_every_steps = -1  # Only the final checkpoint.
    dispatched = [0]
    reads: list[int] = []
    loop_thread = threading.get_ident()

    def on_step(state):
        del state
        dispatched[0] += 1

    def record():
        if threading.get_ident() == loop_thread:
            reads.append(dispatched[0])

    value = array_lib.ArrayImpl.__dict__["_value"]  # a property; fails loudly if renamed

    def spied_value(self):
        record()
        return value.fget(self)

    def spied_block_until_ready(tree):
        record()
        return block_until_ready(tree)

    block_until_ready = jax.block_until_ready
    _spy_on_train_fn(monkeypatch, on_step)
    monkeypatch.setattr(array_lib.ArrayImpl, "_value", property(spied_value))
    monkeypatch.setattr(jax, "block_until_ready", spied_block_until_ready)
    train_and_evaluate(config, tmp_path, input_pipeline=generated_pipeline(crop_size=33))
    assert dispatched[0] == STEPS
    assert 2 in reads and 4 in reads  # The log points read (the spy sees the reads).
    assert set(reads) <= {0, 2, 4}, f"device values read after steps {sorted(set(reads))}"


def test_async_checkpoints_are_complete_and_exact_when_the_run_returns(tmp_path, monkeypatch):
    """Saves are asynchronous; every saved step restores to the state that was saved.

    The state saved at step 2 is donated to step 3 right after the save starts: orbax
    must have copied it first. Reading the checkpoints right after the run returns
    checks that the loop waited for the background writes.
    """
    config = tiny_test_config(steps=4)  # Checkpoints at steps 2 and 4.
    saved, managers = {}, []
    save, create_manager = checkpointing.save_checkpoint, checkpointing.create_checkpoint_manager

    def spied_create_manager(*args, **kwargs):
        managers.append(create_manager(*args, **kwargs))
        return managers[-1]

    def spied_save(manager, step, state, metadata):
        saved[step] = jax.tree.map(np.array, jax.device_get(state))  # Host copies.
        save(manager, step, state, metadata)

    monkeypatch.setattr(checkpointing, "create_checkpoint_manager", spied_create_manager)
    monkeypatch.setattr(checkpointing, "save_checkpoint", spied_save)
    train_and_evaluate(config, tmp_path, input_pipeline=generated_pipeline(crop_size=33))
    assert len(managers) == 1 and is_async_checkpointer(managers[0]._checkpointer)
    assert sorted(saved) == [2, 4]
    for step, state in saved.items():
        tree, loaded_step = checkpointing.load_checkpoint(tmp_path, step=step)
        assert loaded_step == step and int(tree["step"]) == step
        want = {"params": state.params, "batch_stats": state.batch_stats}
        got = {"params": tree["params"], "batch_stats": tree["batch_stats"]}
        leaves = jax.tree.leaves_with_path(want)
        assert len(leaves) > 10
        for (path, a), (_, b) in zip(leaves, jax.tree.leaves_with_path(got), strict=True):
            np.testing.assert_array_equal(np.asarray(b), a, err_msg=f"step {step} {path}")
    assert not np.array_equal(
        saved[2].params["decoder"]["classifier"]["kernel"],
        saved[4].params["decoder"]["classifier"]["kernel"],
    )


def test_train_and_evaluation_steps_compile_once(trained_run, tmp_path):
    """Two evaluations (one short batch padded) and four steps: one executable each.

    A second run with the same settings in the process, another seed included, compiles
    nothing: the loop's program and the evaluator's step are shared (the seed's keys are
    arguments of the compiled functions).
    """
    config, pipeline, workdir, _, compiled = trained_run
    assert compiled.count("jit(train_replica)") == 1, compiled
    assert compiled.count("jit(eval_step)") == 1, compiled
    records = (workdir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in records if "eval/mean_iou" in r] == [2, 4]
    config = config.copy_and_resolve_references()
    config.seed = 1
    with count_compilations() as compiled:
        train_and_evaluate(config, tmp_path / "second", input_pipeline=pipeline)
    assert compiled == []


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
    want, step = checkpointing.load_checkpoint(uninterrupted)
    got, step_resumed = checkpointing.load_checkpoint(killed)
    assert step == step_resumed == 40
    for (path, a), (_, b) in zip(
        jax.tree.leaves_with_path(want), jax.tree.leaves_with_path(got), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=str(path))
    reference_summary = json.loads((uninterrupted / "summary.json").read_text())
    assert summary["mean_iou"] == reference_summary["mean_iou"]


def test_jsonl_writer_records(tmp_path):
    writer = writers.create_default_writer(tmp_path, tensorboard=False, console=False)
    writer.write_scalars(3, {"a": np.float32(0.5), "b": float("nan")})
    writer.write_scalars(7, {"a": jnp.asarray(2.0)})
    writer.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 3, "a": 0.5, "b": None},
        {"step": 7, "a": 2.0},
    ]
