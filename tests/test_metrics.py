"""Tests of spectral_jax.evaluation.metrics against float64 NumPy and loop references."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.evaluation import metrics


def _reference_confusion(predictions, labels, num_classes, ignore_index):
    matrix = np.zeros((num_classes, num_classes), np.int64)
    for p, t in zip(predictions.ravel(), labels.ravel(), strict=True):
        if t != ignore_index:
            matrix[t, p] += 1
    return matrix


def _reference_iou(matrix):
    """Loop over classes: NaN when the class is in neither labels nor predictions."""
    out = []
    for c in range(matrix.shape[0]):
        tp = matrix[c, c]
        labelled = matrix[c, :].sum()
        predicted = matrix[:, c].sum()
        out.append(np.nan if labelled + predicted == 0 else tp / (labelled + predicted - tp))
    return np.array(out)


@pytest.mark.parametrize("shape", [(1, 5, 7), (3, 8, 8), (2, 9, 4)])
@pytest.mark.parametrize("num_classes", [1, 4, 21])
@pytest.mark.parametrize("label_dtype", [np.int32, np.uint8])
def test_confusion_matrix_matches_loop(rng, shape, num_classes, label_dtype):
    labels = rng.integers(0, num_classes, size=shape)
    labels[rng.random(shape) < 0.2] = 255
    predictions = rng.integers(0, num_classes, size=shape)
    got = jax.jit(metrics.confusion_matrix, static_argnames=("num_classes", "ignore_index"))(
        predictions, labels.astype(label_dtype), num_classes=num_classes, ignore_index=255
    )
    want = _reference_confusion(predictions, labels, num_classes, 255)
    np.testing.assert_array_equal(np.asarray(got), want)
    assert got.dtype == np.int32


def test_confusion_matrix_other_ignore_index(rng):
    labels = rng.integers(-1, 3, size=(2, 6, 6))
    predictions = rng.integers(0, 3, size=(2, 6, 6))
    got = metrics.confusion_matrix(predictions, labels, num_classes=3, ignore_index=-1)
    np.testing.assert_array_equal(np.asarray(got), _reference_confusion(predictions, labels, 3, -1))


@pytest.mark.parametrize("num_classes", [4, 6])
def test_iou_with_absent_classes(rng, num_classes):
    # Classes 3.. are in neither labels nor predictions; class 1 is predicted but
    # never labelled (IoU 0, counted); class 0 is labelled but never predicted (IoU 0).
    labels = rng.choice([0, 2], size=(2, 7, 5))
    predictions = rng.choice([1, 2], size=(2, 7, 5))
    matrix = np.asarray(metrics.confusion_matrix(predictions, labels, num_classes=num_classes))
    iou = metrics.iou_from_confusion(matrix)
    np.testing.assert_allclose(iou, _reference_iou(matrix), rtol=1e-12)
    assert np.all(np.isnan(iou[3:]))
    assert iou[0] == 0.0 and iou[1] == 0.0
    present = [c for c in range(num_classes) if not np.isnan(_reference_iou(matrix)[c])]
    want_mean = np.mean([_reference_iou(matrix)[c] for c in present])
    assert metrics.mean_iou(matrix) == pytest.approx(want_mean, rel=1e-12)


def test_iou_closed_form():
    # 2x2 image: labels [[0, 0], [1, 1]], predictions [[0, 1], [1, 1]].
    matrix = np.asarray(
        metrics.confusion_matrix(
            np.array([[[0, 1], [1, 1]]]), np.array([[[0, 0], [1, 1]]]), num_classes=2
        )
    )
    np.testing.assert_array_equal(matrix, [[1, 1], [0, 2]])
    np.testing.assert_allclose(metrics.iou_from_confusion(matrix), [1 / 2, 2 / 3])
    assert metrics.mean_iou(matrix) == pytest.approx(7 / 12)
    assert metrics.pixel_accuracy(matrix) == pytest.approx(3 / 4)


def test_empty_matrix_gives_nan():
    matrix = np.zeros((3, 3), np.int64)
    assert np.all(np.isnan(metrics.iou_from_confusion(matrix)))
    assert np.isnan(metrics.mean_iou(matrix))
    assert np.isnan(metrics.pixel_accuracy(matrix))


def test_large_counts_do_not_overflow():
    matrix = np.array([[2**31 + 5, 7], [3, 2**31]], np.int64)
    want = np.array([(2**31 + 5) / (2**31 + 15), 2**31 / (2**31 + 10)])
    np.testing.assert_allclose(metrics.iou_from_confusion(matrix), want, rtol=1e-15)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        metrics.confusion_matrix(np.zeros((1, 2, 2), int), np.zeros((1, 2, 2), int), num_classes=0)
    with pytest.raises(ValueError, match="matrix"):
        metrics.iou_from_confusion(np.zeros((2, 3)))


# ---------------------------------------------------------------------------------------
# The pixel cross-entropy.


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
    loss, num_valid = jax.jit(metrics.cross_entropy_loss)(logits, labels)
    want = _reference_ce(np.asarray(logits, np.float32), labels)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(num_valid) == np.sum(labels != 255)


def test_cross_entropy_all_ignored_is_zero(rng):
    loss, num_valid = metrics.cross_entropy_loss(
        rng.standard_normal((2, 3, 3, 4)), np.full((2, 3, 3), 255)
    )
    assert float(loss) == 0.0 and float(num_valid) == 0.0


# ---------------------------------------------------------------------------------------
# Inputs that used to give plausible, wrong numbers.


@pytest.mark.parametrize("bad_label", [-1, -2, 4])
def test_cross_entropy_refuses_labels_outside_the_classes(rng, bad_label):
    # -1 and -2 (PyTorch's habit of negative ignore values) were read as classes C-1 and
    # C-2; label C gave NaN.
    logits = rng.standard_normal((2, 3, 3, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=(2, 3, 3))
    labels[1, 2, 0] = bad_label
    with pytest.raises(ValueError, match=rf"labels must lie in \[0, 4\).*{bad_label}"):
        metrics.cross_entropy_loss(logits, labels)
    loss, num_valid = jax.jit(metrics.cross_entropy_loss)(logits, labels)
    assert np.isnan(float(loss)) and float(num_valid) == 18
    grads = jax.grad(lambda z: jax.jit(metrics.cross_entropy_loss)(z, labels)[0])(logits)
    assert np.isnan(np.asarray(grads)).all()
    # Marked with the ignore index it is left out, as the float64 reference does.
    loss, _ = metrics.cross_entropy_loss(logits, labels, ignore_index=bad_label)
    np.testing.assert_allclose(float(loss), _reference_ce(logits, labels, bad_label), rtol=1e-6)


def test_cross_entropy_refuses_an_ignore_index_inside_the_classes(rng):
    with pytest.raises(ValueError, match=r"ignore_index=2 is a valid class index for C = 4"):
        metrics.cross_entropy_loss(np.zeros((1, 2, 2, 4)), np.zeros((1, 2, 2), int), ignore_index=2)


@pytest.mark.parametrize("ignore_index", [256, -1])
def test_an_ignore_index_the_label_dtype_cannot_hold_is_refused(rng, ignore_index):
    # uint8 labels compared with 256 wrapped it to 0: class-0 pixels were ignored.
    labels = rng.integers(0, 3, size=(2, 4, 4)).astype(np.uint8)
    logits = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
    match = rf"ignore_index={ignore_index} does not fit the uint8 labels"
    with pytest.raises(ValueError, match=match):
        metrics.cross_entropy_loss(logits, labels, ignore_index=ignore_index)
    with pytest.raises(ValueError, match=match):
        metrics.confusion_matrix(labels, labels, num_classes=3, ignore_index=ignore_index)
    # As int32 the same labels have no ignored pixel: the float64 reference.
    loss, _ = metrics.cross_entropy_loss(logits, labels.astype(np.int32), ignore_index=ignore_index)
    np.testing.assert_allclose(float(loss), _reference_ce(logits, labels, -7), rtol=1e-6)


def test_confusion_matrix_refuses_predictions_outside_the_classes(rng):
    # confusion_matrix(pred=5, label=1, num_classes=3) counted a true positive at [2, 2].
    labels = np.array([[[1, 0, 255]]])
    predictions = np.array([[[5, 0, 7]]])  # 7 sits at an ignored pixel: not counted
    with pytest.raises(ValueError, match=r"predictions must lie in \[0, 3\).*such as 5"):
        metrics.confusion_matrix(predictions, labels, num_classes=3)
    jitted = jax.jit(metrics.confusion_matrix, static_argnames=("num_classes", "ignore_index"))
    matrix = np.asarray(jitted(predictions, labels, num_classes=3))
    np.testing.assert_array_equal(matrix, -np.ones((3, 3)))
    for read in (metrics.iou_from_confusion, metrics.mean_iou, metrics.pixel_accuracy):
        with pytest.raises(ValueError, match="negative counts"):
            read(matrix)
    # Predictions inside [0, C) at labelled pixels are counted as the loop counts them.
    predictions = np.array([[[2, 0, 7]]])
    np.testing.assert_array_equal(
        np.asarray(jitted(predictions, labels, num_classes=3)),
        _reference_confusion(predictions, labels, 3, 255),
    )
