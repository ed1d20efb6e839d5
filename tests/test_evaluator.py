"""Tests of spectral_jax.evaluation.evaluator: the one evaluation loop.

References: a float64 NumPy confusion matrix and cross-entropy over the real examples,
the library's own accumulators fed directly (SpectralStatistics, boundary_statistics of
the unpadded images), and a trace counter for the once-per-shape compilation.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src import array as array_lib

import spectral_jax as sj
from spectral_jax.evaluation import Evaluator, inference_apply_fn
from spectral_jax.related import boundary_metrics
from spectral_jax.statistics import SpectralStatistics

NUM_CLASSES = 3
SIZE = 12


class _Pixel(nn.Module):
    """A per-pixel classifier with a 3 x 3 context, ``train`` as the library's models."""

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Conv(NUM_CLASSES, (3, 3))(x)


BOUNDARY_SCORE_NAMES = ("biou", "bacc", "ferr", "merr", "derr", "boundary_pixel_accuracy")


def _batches(rng, sizes=(4, 4, 3), *, mask_last=1):
    """Batches of the given sizes; the last ``mask_last`` rows of the last batch fill it."""
    batches = []
    for size in sizes:
        labels = rng.integers(0, NUM_CLASSES, size=(size, SIZE, SIZE)).astype(np.int32)
        labels[rng.random(labels.shape) < 0.1] = 255
        labels[0, -3:, :] = 255  # Padding at the bottom, as the pipeline pads.
        images = rng.standard_normal((size, SIZE, SIZE, 3)).astype(np.float32)
        batches.append({"image": images, "label": labels, "mask": np.ones((size,), bool)})
    last = batches[-1]
    last["mask"][size - mask_last :] = False
    last["label"][size - mask_last :] = 255
    last["image"][size - mask_last :] = 0.0
    return batches


@pytest.fixture
def model_and_variables():
    model = _Pixel()
    variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    return model, variables


def _logits(model, variables, batches):
    return [np.asarray(model.apply(variables, b["image"]), np.float64) for b in batches]


def test_confusion_and_loss_match_float64(rng, model_and_variables):
    model, variables = model_and_variables
    batches = _batches(rng)
    result = Evaluator(inference_apply_fn(model), num_classes=NUM_CLASSES)(variables, batches)
    confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    losses = []
    for logits, batch in zip(_logits(model, variables, batches), batches, strict=True):
        labels = batch["label"]
        valid = labels != 255
        np.add.at(confusion, (labels[valid], logits.argmax(-1)[valid]), 1)
        z = logits[valid]
        log_norm = np.log(np.sum(np.exp(z - z.max(-1, keepdims=True)), -1)) + z.max(-1)
        losses.extend(log_norm - z[np.arange(len(z)), labels[valid]])
    np.testing.assert_array_equal(result.confusion, confusion)
    np.testing.assert_allclose(result.loss, np.mean(losses), rtol=1e-5)
    union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
    np.testing.assert_allclose(result.iou, np.diag(confusion) / union, rtol=1e-12)
    assert result.mean_iou == pytest.approx(np.mean(np.diag(confusion) / union), rel=1e-12)
    assert result.pixel_accuracy == pytest.approx(np.trace(confusion) / confusion.sum())
    assert result.num_evaluated == 4 + 4 + 2
    assert result.statistics is None and result.boundary is None and result.examples == {}
    assert set(result.scalars()) == {"eval/mean_iou", "eval/pixel_accuracy", "eval/loss"}


def test_spectral_statistics_and_boundary_equal_direct_accumulation(rng, model_and_variables):
    model, variables = model_and_variables
    batches = _batches(rng)
    evaluator = Evaluator(
        inference_apply_fn(model),
        num_classes=NUM_CLASSES,
        spectral_statistics=True,
        with_magnitudes=True,
        boundary_metrics=True,
    )
    result = evaluator(variables, batches)
    stats = SpectralStatistics.create((SIZE, SIZE), NUM_CLASSES, with_magnitudes=True)
    boundary = boundary_metrics.BoundaryStatistics.zeros(NUM_CLASSES)
    for logits, batch in zip(_logits(model, variables, batches), batches, strict=True):
        stats = stats.update(jnp.asarray(logits, jnp.float32), batch["label"])
        real = batch["mask"]
        # The images are padded at the bottom by 3 ignored rows: crop them off.
        boundary = boundary.merge(
            boundary_metrics.boundary_statistics(
                logits.argmax(-1)[real][:1, :-3], batch["label"][real][:1, :-3], num_classes=3
            )
        )
        boundary = boundary.merge(
            boundary_metrics.boundary_statistics(
                logits.argmax(-1)[real][1:], batch["label"][real][1:], num_classes=3
            )
        )
    got = result.statistics
    assert int(got.num_images) == int(stats.num_images) == 10
    np.testing.assert_allclose(got.band_ce, stats.band_ce, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.label_magnitude, stats.label_magnitude, rtol=1e-5)
    np.testing.assert_allclose(result.mean_ce, float(stats.mean_ce()), rtol=1e-5)
    np.testing.assert_allclose(result.band_profile, stats.band_profile(), rtol=1e-5, atol=1e-6)
    assert result.relative_discrepancy_at == {}  # 12 x 12: bands 0..6, none reported.
    for name, want, value in zip(
        boundary._fields, boundary, result.boundary_statistics, strict=True
    ):
        np.testing.assert_array_equal(np.asarray(value), np.asarray(want), err_msg=name)
    assert set(result.boundary) == set(BOUNDARY_SCORE_NAMES)
    assert "eval/biou" in result.scalars() and "eval/spectral_mean_ce" in result.scalars()


def test_compiled_once_per_apply_fn_and_shape(rng, model_and_variables):
    """Two evaluators of one predict function, a short batch padded: one trace."""
    model, variables = model_and_variables
    traces = []

    def apply_fn(variables, images):
        traces.append(images.shape)
        return model.apply(variables, images)

    settings = dict(num_classes=NUM_CLASSES, spectral_statistics=True, boundary_metrics=True)
    first = Evaluator(apply_fn, **settings)(variables, _batches(rng, sizes=(4, 2)))
    second = Evaluator(apply_fn, **settings)(variables, _batches(rng, sizes=(4, 4, 1)))
    assert traces == [(4, SIZE, SIZE, 3)]
    assert first.num_evaluated == 5 and second.num_evaluated == 8
    # An explicit batch size pads every batch to it (a new shape: one more trace).
    Evaluator(apply_fn, batch_size=6, **settings)(variables, _batches(rng, sizes=(4,)))
    assert traces == [(4, SIZE, SIZE, 3), (6, SIZE, SIZE, 3)]


def test_equal_models_share_one_predict_function():
    assert inference_apply_fn(_Pixel()) is inference_apply_fn(_Pixel())
    assert inference_apply_fn(_Pixel(), method="__call__") is not inference_apply_fn(_Pixel())


def test_examples_and_output_sums_over_real_examples(rng, model_and_variables):
    """The first real examples are kept; per-example outputs are summed over real ones."""
    model, variables = model_and_variables

    def apply_fn(variables, images):
        return {
            "logits": model.apply(variables, images),
            "brightness": jnp.mean(images, axis=(1, 2)),  # [B, 3]
        }

    batches = _batches(rng, sizes=(3, 3), mask_last=2)
    batches[0]["mask"][0] = False  # A filling example in the first batch too.
    result = Evaluator(apply_fn, num_classes=NUM_CLASSES, num_examples=4)(variables, batches)
    real_images = np.concatenate([b["image"][b["mask"]] for b in batches])  # 3 of 6
    real_labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    assert result.num_evaluated == 3
    np.testing.assert_array_equal(result.examples["image"], real_images)
    np.testing.assert_array_equal(result.examples["label"], real_labels)
    logits = np.concatenate(_logits(model, variables, batches))
    masks = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(result.examples["prediction"], logits.argmax(-1)[masks])
    np.testing.assert_allclose(
        result.examples["brightness"], real_images.mean(axis=(1, 2)), rtol=1e-6
    )
    few = Evaluator(apply_fn, num_classes=NUM_CLASSES, num_examples=1)(variables, batches)
    np.testing.assert_array_equal(few.examples["label"], real_labels[:1])
    np.testing.assert_allclose(
        result.output_sums["brightness"], real_images.mean(axis=(1, 2)).sum(0), rtol=1e-6
    )


def test_host_reads_each_batch_while_the_next_is_computed(rng, model_and_variables, monkeypatch):
    """The sums of batch k are read only once batch k + 1 is dispatched (or at the end).

    Reads of an array's value go through ``ArrayImpl._value`` (``jax.device_get``,
    ``float``); the spy maps each read to the batch whose step produced the array.
    Reading a batch's sums right after its own step would make the device wait for the
    host between batches.
    """
    model, variables = model_and_variables
    evaluator = Evaluator(
        inference_apply_fn(model), num_classes=NUM_CLASSES, boundary_metrics=True, num_examples=2
    )
    batches = _batches(rng, sizes=(4, 4, 4, 3))
    step, value = evaluator._step, array_lib.ArrayImpl.__dict__["_value"]
    produced_by: dict[int, int] = {}  # id(array) -> batch index
    dispatched = [0]
    reads: list[tuple[int, int]] = []  # (batch read, batches dispatched by then)

    def spied_step(variables, batch, statistics):
        sums, statistics, per_example = step(variables, batch, statistics)
        for leaf in jax.tree.leaves((sums, per_example)):
            produced_by[id(leaf)] = dispatched[0]
        dispatched[0] += 1
        return sums, statistics, per_example

    def spied_value(self):
        if id(self) in produced_by:
            reads.append((produced_by[id(self)], dispatched[0]))
        return value.fget(self)

    monkeypatch.setattr(evaluator, "_step", spied_step)
    monkeypatch.setattr(array_lib.ArrayImpl, "_value", property(spied_value))
    result = evaluator(variables, batches)
    assert result.num_evaluated == 4 + 4 + 4 + 2
    assert {batch for batch, _ in reads} == {0, 1, 2, 3}
    late = [(batch, count) for batch, count in reads if count < min(batch + 2, len(batches))]
    assert not late, f"(batch, batches dispatched) read before the next dispatch: {late}"


@pytest.mark.parametrize("bad_label", [NUM_CLASSES, -1, 254])
def test_labels_outside_the_classes_raise(rng, model_and_variables, bad_label):
    # mmseg counts such a pixel's prediction in the union (a different mIoU); dropping it
    # silently, as the confusion matrix alone would, gave a number nobody else gets.
    model, variables = model_and_variables
    batches = _batches(rng)
    batches[1]["label"][2, 5, 5] = bad_label
    evaluator = Evaluator(inference_apply_fn(model), num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match=r"labels of the evaluation data must lie in \[0, 3\)"):
        evaluator(variables, batches)
    batches[1]["label"][2, 5, 5] = 255
    assert evaluator(variables, batches).num_evaluated == 10


def test_batches_without_mask_are_all_real(rng, model_and_variables):
    model, variables = model_and_variables
    batches = [{k: v for k, v in b.items() if k != "mask"} for b in _batches(rng, sizes=(3,))]
    result = Evaluator(inference_apply_fn(model), num_classes=3, num_examples=5)(variables, batches)
    assert result.num_evaluated == 3 and len(result.examples["prediction"]) == 3


def test_bad_settings():
    with pytest.raises(ValueError, match="num_classes"):
        Evaluator(lambda v, x: x, num_classes=0)
    with pytest.raises(ValueError, match="num_examples"):
        Evaluator(lambda v, x: x, num_classes=3, num_examples=-1)
    with pytest.raises(ValueError, match="batch_size=2"):
        batch = {"image": np.zeros((3, 4, 4, 3), np.float32), "label": np.zeros((3, 4, 4))}
        Evaluator(lambda v, x: x, num_classes=3, batch_size=2)({}, [batch])


class _FourClasses(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Conv(NUM_CLASSES + 1, (1, 1))(x)


def test_a_model_with_another_number_of_classes_is_refused(rng):
    # A 4-class model evaluated with num_classes=3 counted class 3's pixels at [., 0].
    model = _FourClasses()
    variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    evaluator = Evaluator(inference_apply_fn(model), num_classes=NUM_CLASSES)
    with pytest.raises(
        ValueError, match=r"C = num_classes = 3; got logits of shape \(4, 12, 12, 4\)"
    ):
        evaluator(variables, _batches(rng))


def test_batches_of_another_size_are_named(rng, model_and_variables):
    # The error named `logits` (an argument of SpectralStatistics.update), not the batch.
    model, variables = model_and_variables
    batches = _batches(rng)
    batches[2] = {
        "image": batches[2]["image"][:, :10],
        "label": batches[2]["label"][:, :10],
        "mask": batches[2]["mask"],
    }
    evaluator = Evaluator(inference_apply_fn(model), num_classes=3, spectral_statistics=True)
    with pytest.raises(
        ValueError,
        match=r"batch 2 of the evaluation has images of shape \(4, 10, 12, 3\) and labels of "
        r"shape \(4, 10, 12\), but batch 0 had \(4, 12, 12, 3\) and \(4, 12, 12\)",
    ):
        evaluator(variables, batches)
    # Without the statistics every batch is evaluated at its own size: the float64 loop.
    result = Evaluator(inference_apply_fn(model), num_classes=3)(variables, batches)
    want = np.zeros((3, 3), np.int64)
    for batch, logits in zip(batches, _logits(model, variables, batches), strict=True):
        real = batch["mask"]
        labels, predictions = batch["label"][real], logits[real].argmax(-1)
        valid = labels != 255
        np.add.at(want, (labels[valid], predictions[valid]), 1)
    np.testing.assert_array_equal(result.confusion, want)


def test_a_sentinel_at_ignored_pixels_warns_once_evaluated(rng, model_and_variables):
    # The step records the statistics' Parseval error under jit; the host warns.
    model, variables = model_and_variables
    batches = _batches(rng, sizes=(4,))

    def apply_with_sentinel(variables, images):
        logits = model.apply(variables, images)
        fill = jnp.asarray([1e10, 0.0, 0.0], logits.dtype)  # where images carry 100
        return jnp.where(images[..., :1] == 100.0, fill, logits)

    evaluator = Evaluator(apply_with_sentinel, num_classes=3, spectral_statistics=True)
    clean = evaluator(variables, batches)
    assert clean.parseval_error < 1e-5
    batches[0]["image"][batches[0]["label"] == 255] = 100.0
    with pytest.warns(sj.ParsevalWarning, match=r"Evaluator: the spectral statistics' band"):
        result = evaluator(variables, batches)
    assert result.parseval_error > sj.loss_spectrum.PARSEVAL_TOLERANCE
