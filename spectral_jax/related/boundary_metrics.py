"""Boundary metrics of semantic segmentation: BIoU, BAcc, FErr, MErr, DErr.

As *When Semantic Segmentation Meets Frequency Aliasing* (Chen, Gu, Fu, ICLR 2024)
evaluates them in its code (``mmseg_custom/core/evaluation/metrics.py`` of
github.com/Linwei-Chen/Seg-Aliasing), in JAX, batched and jittable.

Edges. The 1-pixel edges of a label map ``y [H, W]`` are the pixels where its 4-neighbour
Laplacian is non-zero,

.. math::

   (\\Delta y)[i, j] = y[i-1, j] + y[i+1, j] + y[i, j-1] + y[i, j+1] - 4 y[i, j] \\ne 0,

with the border reflected without repeating the edge pixel (``y[-1, j] = y[1, j]``:
OpenCV's ``BORDER_REFLECT_101``, NumPy's ``"reflect"``, SciPy's ``"mirror"``), i.e.
``cv2.Laplacian(y, cv2.CV_64F)`` with its default 1-aperture kernel
``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]``. This marks the pixels on both sides of a change of
label, but not every one: a pixel whose neighbours' labels sum to four times its own
(``1 | 2 | 3`` in a row between equal labels above and below) is no edge. The label values
are used as given (the authors cast them to ``uint8``, which agrees for labels in
``[0, 255]``); the ignore label is a label like any other here, so the border of an
ignored region is an edge of the ground truth, as in the authors' code.

Bands. Each edge map is dilated by a ``dilation x dilation`` square (15 by default;
``cv2.dilate`` with ``np.ones((15, 15))``): a pixel is in the band when an edge pixel lies
within Chebyshev distance ``dilation // 2``; pixels outside the image add nothing. With
``P`` the prediction's band and ``G`` the ground truth's, the four regions are

* ``"boundary"``: ``P | G``, for BIoU and BAcc;
* ``"false_response"``: ``P``, for FErr (errors near predicted edges that are not there);
* ``"merging"``: ``G``, for MErr (true edges the prediction misses, objects merged);
* ``"displacement"``: ``P & G``, for DErr (edges in both, but displaced).

Counts. In region ``R``, over the pixels whose label is not ``ignore_index``, for each
class ``c``: ``intersection[c]`` (label ``c`` predicted ``c``), ``prediction_area[c]``
(predicted ``c``) and ``label_area[c]`` (label ``c``), summed over the images of the batch
(and, by :meth:`BoundaryStatistics.merge` or on the host in int64, over a data set), the
way a confusion matrix is accumulated. From the totals (:func:`boundary_scores`), with
``nanmean`` over the classes whose denominator is non-zero, as mmseg's
``total_area_to_metrics`` does:

.. math::

   \\mathrm{BIoU} = \\operatorname{mean}_c \\frac{I_c}{P_c + L_c - I_c}\\Big|_{P|G}, \\quad
   \\mathrm{BAcc} = \\operatorname{mean}_c \\frac{I_c}{L_c}\\Big|_{P|G}, \\quad
   \\mathrm{FErr} = 1 - \\operatorname{mean}_c \\frac{I_c}{L_c}\\Big|_{P},

and ``MErr``, ``DErr`` as ``FErr`` on ``G`` and ``P & G``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import _checks
from spectral_jax._checks import IGNORE_INDEX

REGIONS: tuple[str, ...] = ("boundary", "false_response", "merging", "displacement")


class BoundaryStatistics(NamedTuple):
    """Sufficient statistics of the boundary metrics, additive over images.

    Per-batch counts are int32 under ``jit`` (one class of a 513 x 513 batch of 8 holds at
    most about 2.1e6 pixels); over a data set, sum them on the host in int64, as the
    training loop does with its confusion matrix:
    ``total = BoundaryStatistics(*(t + np.asarray(s, np.int64) for t, s in zip(total, batch)))``.

    Attributes:
      intersection: ``[4, C]`` pixels of label ``c`` predicted ``c``, per region of
        :data:`REGIONS`.
      prediction_area: ``[4, C]`` pixels predicted ``c`` (label not ignored).
      label_area: ``[4, C]`` pixels of label ``c``.
    """

    intersection: jax.Array | np.ndarray
    prediction_area: jax.Array | np.ndarray
    label_area: jax.Array | np.ndarray

    @classmethod
    def zeros(cls, num_classes: int, dtype=jnp.int32) -> BoundaryStatistics:
        """Empty statistics to accumulate into."""
        zeros = jnp.zeros((len(REGIONS), num_classes), dtype)
        return cls(zeros, zeros, zeros)

    def merge(self, other: BoundaryStatistics) -> BoundaryStatistics:
        """The statistics of both sets of images (element-wise sum)."""
        return jax.tree.map(jnp.add, self, other)


def label_edges(labels: chex.Array) -> jax.Array:
    """1-pixel edges of label maps: the 4-neighbour Laplacian is non-zero (module docstring).

    Args:
      labels: integer maps ``[B, H, W]``.

    Returns:
      Boolean ``[B, H, W]``.

    Example:
      >>> labels = jnp.array([[[0, 0, 1, 1]]]).repeat(3, axis=1)  # [B, H, W] = [1, 3, 4]
      >>> label_edges(labels)[0, 1].tolist()
      [False, True, True, False]
    """
    chex.assert_rank(labels, 3)
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise TypeError(f"labels must be an integer array, got dtype {jnp.result_type(labels)}.")
    y = labels.astype(jnp.int32)
    padded = jnp.pad(y, ((0, 0), (1, 1), (1, 1)), mode="reflect")  # reflect-101
    laplacian = (
        padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]
    ) - 4 * y
    return laplacian != 0


def _dilate_square(mask: chex.Array, *, size: int = 15) -> jax.Array:
    """Binary dilation by a ``size x size`` square, centred; outside pixels add nothing.

    The square is separable, so this is a running maximum over ``size`` rows and then
    over ``size`` columns.

    Args:
      mask: boolean ``[B, H, W]``.
      size: static odd side of the square (15 as the authors).

    Returns:
      Boolean ``[B, H, W]``: pixels within Chebyshev distance ``size // 2`` of a ``True``.

    Raises:
      ValueError: for an even or non-positive ``size``.
    """
    chex.assert_rank(mask, 3)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"size must be a positive odd int, got {size!r}.")
    radius = size // 2
    m = mask.astype(jnp.int32)
    zero = jnp.array(0, jnp.int32)
    m = jax.lax.reduce_window(
        m, zero, jax.lax.max, (1, size, 1), (1, 1, 1), ((0, 0), (radius, radius), (0, 0))
    )
    m = jax.lax.reduce_window(
        m, zero, jax.lax.max, (1, 1, size), (1, 1, 1), ((0, 0), (0, 0), (radius, radius))
    )
    return m > 0


def boundary_regions(
    predictions: chex.Array, labels: chex.Array, *, dilation: int = 15
) -> jax.Array:
    """The four regions of :data:`REGIONS`, from the dilated edges of both maps.

    Args:
      predictions: integer ``[B, H, W]``.
      labels: integer ``[B, H, W]`` (ground truth, ignore label included).
      dilation: static odd side of the dilation square.

    Returns:
      Boolean ``[4, B, H, W]``: ``P | G``, ``P``, ``G``, ``P & G``.
    """
    predicted = _dilate_square(label_edges(predictions), size=dilation)
    truth = _dilate_square(label_edges(labels), size=dilation)
    return jnp.stack([predicted | truth, predicted, truth, predicted & truth])


def _check_inputs(predictions, labels, num_classes: int, ignore_index: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index={ignore_index} is a valid class index for num_classes="
            f"{num_classes}; it must lie outside [0, num_classes)."
        )
    for name, value in (("predictions", predictions), ("labels", labels)):
        if jnp.ndim(value) != 3:
            raise ValueError(f"{name} must have shape [B, H, W], got shape {jnp.shape(value)}.")
        if not jnp.issubdtype(jnp.result_type(value), jnp.integer):
            raise TypeError(f"{name} must be an integer array, got {jnp.result_type(value)}.")
    if jnp.shape(predictions) != jnp.shape(labels):
        raise ValueError(
            f"predictions and labels must have the same shape [B, H, W], got "
            f"{jnp.shape(predictions)} and {jnp.shape(labels)}."
        )
    _checks.check_label_values(labels, num_classes, ignore_index)
    if not _checks.is_traced(predictions):
        values = np.asarray(predictions)
        bad = (values < 0) | (values >= num_classes)
        if bad.any():
            raise ValueError(
                f"predictions must lie in [0, {num_classes}); found values such as "
                f"{int(values[bad][0])}."
            )


def boundary_statistics(
    predictions: chex.Array,
    labels: chex.Array,
    *,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    dilation: int = 15,
) -> BoundaryStatistics:
    """Per-class counts of the boundary metrics for a batch (module docstring).

    Jittable with ``num_classes``, ``ignore_index`` and ``dilation`` static. Out-of-range
    values raise eagerly; under ``jit`` they are left out of the counts of their class (a
    prediction) or of every class (a label), as ``torch.histc`` in the authors' code.

    Args:
      predictions: predicted classes ``[B, H, W]`` (e.g. ``argmax`` of the logits).
      labels: ground truth ``[B, H, W]`` in ``[0, C)`` or ``ignore_index``.
      num_classes: ``C``.
      ignore_index: the label of pixels that no count includes.
      dilation: odd side of the square that widens the edges (15).

    Returns:
      :class:`BoundaryStatistics` with ``[4, C]`` int32 counts (int64 with x64 enabled).

    Raises:
      ValueError: for bad shapes, settings or (eagerly) values.
    """
    _check_inputs(predictions, labels, num_classes, ignore_index)
    regions = boundary_regions(predictions, labels, dilation=dilation)  # [4, B, H, W]
    labels = labels.astype(jnp.int32)
    predictions = predictions.astype(jnp.int32)
    label_ok = (labels >= 0) & (labels < num_classes)  # [B, H, W], False for ignored
    prediction_ok = (predictions >= 0) & (predictions < num_classes)
    counted = regions & (labels != ignore_index)  # [4, B, H, W]
    offsets = (jnp.arange(len(REGIONS)) * num_classes)[:, None, None, None]  # [4, 1, 1, 1]
    # jax.config's options are attributes added at run time, undeclared in its typing.
    count_dtype = jnp.int64 if jax.config.jax_enable_x64 else jnp.int32  # type: ignore[attr-defined]
    length = len(REGIONS) * num_classes

    def count(classes, weights):
        ids = (offsets + jnp.clip(classes, 0, num_classes - 1)).reshape(-1)
        flat = jnp.broadcast_to(weights, regions.shape).reshape(-1).astype(count_dtype)
        return jnp.bincount(ids, weights=flat, length=length).reshape(len(REGIONS), -1)

    return BoundaryStatistics(
        intersection=count(labels, counted & label_ok & (predictions == labels)),
        prediction_area=count(predictions, counted & prediction_ok),
        label_area=count(labels, counted & label_ok),
    )


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``numerator / denominator`` in float64, NaN where the denominator is 0."""
    out = np.full(np.shape(numerator), np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _class_mean(values: np.ndarray) -> float:
    """Mean over the non-NaN entries (``np.nanmean`` without its warning); NaN if none."""
    present = ~np.isnan(values)
    return float(values[present].mean()) if present.any() else float("nan")


def boundary_scores(statistics: BoundaryStatistics) -> dict[str, Any]:
    """BIoU, BAcc, FErr, MErr and DErr from accumulated :class:`BoundaryStatistics`.

    Runs on the host in NumPy float64 (exact for counts below ``2**53``), so counts summed
    in int64 over a large data set keep every digit; call it once, after accumulating.

    Args:
      statistics: counts ``[4, C]`` summed over a data set (JAX or NumPy arrays).

    Returns:
      Floats ``"biou"``, ``"bacc"``, ``"boundary_pixel_accuracy"`` (all boundary pixels
      together, the authors' ``aAcc`` on ``P | G``), ``"ferr"``, ``"merr"``, ``"derr"``,
      and per-class ``[C]`` float64 arrays ``"boundary_iou_per_class"`` and
      ``"boundary_accuracy_per_class"`` (NaN for absent classes). A metric whose region
      holds no labelled pixel of any class is NaN.
    """
    intersection, prediction_area, label_area = (
        np.asarray(a, np.float64)
        for a in (statistics.intersection, statistics.prediction_area, statistics.label_area)
    )
    union = prediction_area + label_area - intersection
    iou = _ratio(intersection, union)  # [4, C]
    accuracy = _ratio(intersection, label_area)  # [4, C]
    total = label_area[0].sum()
    return {
        "biou": _class_mean(iou[0]),
        "bacc": _class_mean(accuracy[0]),
        "boundary_pixel_accuracy": float(intersection[0].sum() / total) if total else float("nan"),
        "ferr": 1 - _class_mean(accuracy[1]),
        "merr": 1 - _class_mean(accuracy[2]),
        "derr": 1 - _class_mean(accuracy[3]),
        "boundary_iou_per_class": iou[0],
        "boundary_accuracy_per_class": accuracy[0],
    }
