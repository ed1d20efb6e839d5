r"""Segmentation metrics: the pixel cross-entropy, the confusion matrix and the IoU.

:func:`cross_entropy_loss` is the training loss (:func:`spectral_jax.training.steps.
train_step`) and the evaluation's loss; it lives here, below both.

The confusion matrix ``M`` counts pixels by (true class, predicted class), pixels whose
label is ``ignore_index`` left out. Per class ``c``,

.. math::

   \mathrm{IoU}_c = \frac{M_{cc}}{\sum_k M_{ck} + \sum_k M_{kc} - M_{cc}},

the intersection over the union of the pixels labelled ``c`` and those predicted ``c``.
A class absent from both the labels and the predictions has an empty union: its IoU is
NaN and the mean IoU skips it (``nanmean``), the convention of the PASCAL VOC and
Cityscapes evaluation scripts, which average over the classes that occur. A class that is
predicted but never labelled, or labelled but never predicted, has IoU 0 and counts.

Per-batch matrices are computed in ``int32`` under ``jit`` (:func:`confusion_matrix`) and
summed on the host in ``int64`` (:func:`iou_from_confusion`), which a validation set of
more than ``2**31`` pixels needs.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spectral_jax import _checks
from spectral_jax._checks import IGNORE_INDEX


def cross_entropy_loss(
    logits: chex.Array, labels: chex.Array, *, ignore_index: int = IGNORE_INDEX
) -> tuple[jax.Array, jax.Array]:
    r"""Pixel cross-entropy, the mean over the valid pixels of the whole batch.

    .. math::

       \mathcal{L} = \frac{1}{|V|} \sum_{(b, t) \in V}
         \Big(\log \sum_c e^{z_{b,t,c}} - z_{b,t,y_{b,t}}\Big),

    with ``V`` the pixels whose label is not ``ignore_index`` (0 if there are none).

    A label outside ``[0, C)`` that is not ``ignore_index`` (a ``-1`` meant as PyTorch's
    ignore value, say) would otherwise be read as some class, or give NaN: concrete
    labels raise ``ValueError``; under ``jit`` the loss is NaN (and so is its gradient),
    which the trainer reports with the step
    (:func:`spectral_jax.training.train_and_evaluate`).

    Args:
      logits: ``[B, H, W, C]``.
      labels: ``[B, H, W]`` integers in ``[0, C)`` or ``ignore_index``.
      ignore_index: label of pixels left out; outside ``[0, C)`` and a value the dtype
        of ``labels`` holds.

    Returns:
      ``(loss, num_valid)``: the float32 mean and the float32 count of valid pixels.

    Raises:
      ValueError: an ``ignore_index`` inside ``[0, C)`` or that the labels' dtype cannot
        hold (uint8 labels and 256); concrete labels outside ``[0, C)`` other than
        ``ignore_index``.
      TypeError: non-integer ``labels``.

    Example:
      >>> logits = jnp.zeros((1, 1, 2, 4))  # uniform over 4 classes
      >>> loss, num_valid = cross_entropy_loss(logits, jnp.array([[[1, 255]]]))
      >>> round(float(loss), 4), float(num_valid)  # log 4
      (1.3863, 1.0)
    """
    chex.assert_rank(logits, 4)
    chex.assert_rank(labels, 3)
    chex.assert_equal_shape_prefix([logits, labels], 3)
    num_classes = jnp.shape(logits)[-1]
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise TypeError(f"labels must be an integer array, got dtype {jnp.result_type(labels)}.")
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index={ignore_index} is a valid class index for C = {num_classes}; "
            "it must lie outside [0, C)."
        )
    _checks.check_ignore_index_fits(labels, ignore_index)
    _checks.check_label_values(labels, num_classes, ignore_index)
    logits = jnp.asarray(logits, jnp.float32)
    valid = labels != ignore_index  # [B, H, W], compared in the labels' own dtype
    labels = jnp.asarray(labels, jnp.int32)
    invalid = valid & ((labels < 0) | (labels >= num_classes))  # [B, H, W]
    safe_labels = jnp.where(valid & ~invalid, labels, 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)  # [B, H, W]
    num_valid = jnp.sum(valid, dtype=jnp.float32)
    loss = jnp.sum(jnp.where(valid, losses, 0.0)) / jnp.maximum(num_valid, 1.0)
    # Traced labels outside [0, C): NaN, never a plausible number (the docstring); a
    # product, so that the gradient is NaN too (a select's would be zero).
    loss = loss * jnp.where(jnp.any(invalid), jnp.nan, 1.0)
    return loss, num_valid


def confusion_matrix(
    predictions: chex.Array,
    labels: chex.Array,
    *,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> jax.Array:
    """Pixel counts by (true class, predicted class).

    Args:
      predictions: ``[B, H, W]`` integer predicted classes in ``[0, C)``. A prediction
        outside (a model with more classes than ``num_classes``) would land in another
        cell of the matrix: concrete predictions raise ``ValueError``; under ``jit``
        every entry of the matrix is -1, which :func:`iou_from_confusion`,
        :func:`mean_iou` and :func:`pixel_accuracy` refuse.
      labels: ``[B, H, W]`` integer labels in ``[0, C)`` or ``ignore_index``; any other
        value is treated as ignored too.
      num_classes: ``C`` (static).
      ignore_index: label of pixels left out; a value the labels' dtype holds.

    Returns:
      ``[C, C]`` int32 matrix, rows true classes, columns predicted classes.

    Raises:
      ValueError: if ``num_classes`` is not positive; for concrete predictions outside
        ``[0, C)`` at labelled pixels; for an ``ignore_index`` the labels' dtype cannot
        hold.

    Example:
      >>> confusion_matrix(jnp.array([[[0, 1]]]), jnp.array([[[0, 0]]]), num_classes=2)
      Array([[1, 1],
             [0, 0]], dtype=int32)
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}.")
    chex.assert_rank([predictions, labels], 3)
    chex.assert_equal_shape([predictions, labels])
    _checks.check_ignore_index_fits(labels, ignore_index)
    labels = jnp.asarray(labels, jnp.int32)
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)  # [B, H, W]
    if not _checks.is_traced(predictions) and not _checks.is_traced(labels):
        values = np.asarray(predictions)
        bad = np.asarray(valid) & ((values < 0) | (values >= num_classes))
        if bad.any():
            raise ValueError(
                f"predictions must lie in [0, {num_classes}) (num_classes={num_classes}); "
                f"found {int(bad.sum())} labelled pixel(s) predicted as classes such as "
                f"{int(values[bad][0])}: does the model have more classes than num_classes?"
            )
    predictions = jnp.asarray(predictions, jnp.int32)
    out_of_range = valid & ((predictions < 0) | (predictions >= num_classes))  # [B, H, W]
    index = jnp.where(valid, labels * num_classes + predictions, 0)  # [B, H, W]
    counts = jnp.zeros((num_classes * num_classes,), jnp.int32)
    counts = counts.at[index.reshape(-1)].add(valid.reshape(-1).astype(jnp.int32))
    # Traced predictions outside [0, C): -1 everywhere, never a plausible matrix.
    counts = jnp.where(jnp.any(out_of_range), -1, counts)
    return counts.reshape(num_classes, num_classes)


def _check_counts(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` as int64, refused when it holds negative counts (see confusion_matrix)."""
    matrix = np.asarray(matrix, np.int64)
    if (matrix < 0).any():
        raise ValueError(
            "matrix holds negative counts: confusion_matrix marks with -1 a batch whose "
            "predictions lie outside [0, num_classes) under jit (a model with more classes "
            "than num_classes?)."
        )
    return matrix


def iou_from_confusion(matrix: np.ndarray) -> np.ndarray:
    """``[C]`` IoU per class from a ``[C, C]`` confusion matrix (NaN: class unseen).

    Args:
      matrix: ``[C, C]`` counts, rows true classes, columns predicted classes.

    Returns:
      ``[C]`` float64 IoU; NaN for the classes absent from both labels and predictions.

    Raises:
      ValueError: if ``matrix`` is not square or holds negative counts.
    """
    matrix = _check_counts(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square [C, C], got shape {matrix.shape}.")
    intersection = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - np.diag(matrix)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, intersection / np.maximum(union, 1), np.nan)


def mean_iou(matrix: np.ndarray) -> float:
    """Mean IoU over the classes present in the labels or the predictions (NaN if none)."""
    iou = iou_from_confusion(matrix)
    if np.all(np.isnan(iou)):
        return float("nan")
    return float(np.nanmean(iou))


def pixel_accuracy(matrix: np.ndarray) -> float:
    """Fraction of the valid pixels predicted correctly (NaN without valid pixels).

    Raises:
      ValueError: if ``matrix`` holds negative counts (:func:`confusion_matrix`).
    """
    matrix = _check_counts(matrix)
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total > 0 else float("nan")
