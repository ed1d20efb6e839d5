"""Tests for spectral_jax.related.boundary_metrics.

References: an independent NumPy/SciPy version of the authors' evaluation
(``scipy.ndimage.laplace`` with ``mode="mirror"`` for ``cv2.Laplacian``,
``scipy.ndimage.binary_dilation`` with a square for ``cv2.dilate``, then the authors'
flow: labels outside the region set to the ignore label, per-class histograms, nanmean);
and hand-made masks whose metrics are derived in the comments. Counts are exact.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from spectral_jax.related import boundary_metrics as bm

IGNORE = 255

# Numeric tests call jitted wrappers: one program per shape, where an eager call compiles
# each operation (about 4x the CPU time). The eager path is compared with the jitted one
# in test_statistics_accumulate_over_batches_and_jit; the errors are raised eagerly.
boundary_statistics = jax.jit(
    bm.boundary_statistics, static_argnames=("num_classes", "dilation", "ignore_index")
)
label_edges = jax.jit(bm.label_edges)


def _reference_edges(labels: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.laplace(y.astype(np.float64), mode="mirror") != 0 for y in labels])


def _reference_dilate(mask: np.ndarray, size: int) -> np.ndarray:
    square = np.ones((size, size), bool)
    return np.stack([ndimage.binary_dilation(m, structure=square, border_value=0) for m in mask])


def _reference_statistics(pred, labels, num_classes, dilation=15):
    """``[4, C]`` intersection, prediction and label areas, as the authors' loop counts."""
    pred_band = _reference_dilate(_reference_edges(pred), dilation)
    gt_band = _reference_dilate(_reference_edges(labels), dilation)
    regions = [pred_band | gt_band, pred_band, gt_band, pred_band & gt_band]
    out = np.zeros((3, 4, num_classes), np.int64)
    for r, region in enumerate(regions):
        gt = labels.copy()
        gt[~region] = IGNORE
        keep = gt != IGNORE
        p, g = pred[keep], gt[keep]
        out[0, r] = np.bincount(g[p == g], minlength=num_classes)[:num_classes]
        out[1, r] = np.bincount(p, minlength=num_classes)[:num_classes]
        out[2, r] = np.bincount(g, minlength=num_classes)[:num_classes]
    return out


def _reference_metrics(counts):
    inter, pred_area, label_area = counts.astype(np.float64)
    union = pred_area + label_area - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
        acc = inter / label_area

    def nanmean(v):
        return np.nan if np.all(np.isnan(v)) else np.nanmean(v)

    return {
        "biou": nanmean(iou[0]),
        "bacc": nanmean(acc[0]),
        "boundary_pixel_accuracy": inter[0].sum() / label_area[0].sum(),
        "ferr": 1 - nanmean(acc[1]),
        "merr": 1 - nanmean(acc[2]),
        "derr": 1 - nanmean(acc[3]),
    }


def _blocky_labels(rng, batch, h, w, num_classes, block=5, noise=0.05):
    """Piecewise-constant maps with a few noisy pixels: edges of every shape."""
    coarse = rng.integers(0, num_classes, size=(batch, -(-h // block), -(-w // block)))
    maps = np.repeat(np.repeat(coarse, block, axis=1), block, axis=2)[:, :h, :w]
    flip = rng.uniform(size=maps.shape) < noise
    maps[flip] = rng.integers(0, num_classes, size=flip.sum())
    return maps.astype(np.int32)


@pytest.mark.parametrize("shape", [(12, 12), (13, 10), (9, 17)])
def test_label_edges_match_scipy_laplace(rng, shape):
    labels = _blocky_labels(rng, 3, *shape, num_classes=4, block=3, noise=0.1)
    labels[0, :2, :] = IGNORE  # an ignored region has edges too
    np.testing.assert_array_equal(label_edges(jnp.asarray(labels)), _reference_edges(labels))


def test_label_edges_hand_cases():
    # A vertical step marks both sides; a 1|2|3 ramp between equal rows has no edge in
    # its middle (neighbours sum to 4 x 2); reflect-101 borders add no edge to a flat map.
    step = np.array([[0, 0, 1, 1]] * 3)
    np.testing.assert_array_equal(
        label_edges(jnp.asarray(step[None]))[0], [[False, True, True, False]] * 3
    )
    ramp = np.array([[1, 2, 3]] * 3)
    edges = np.asarray(label_edges(jnp.asarray(ramp[None]))[0])
    assert not edges[1, 1] and edges[1, 0] and edges[1, 2]
    assert not np.asarray(label_edges(jnp.full((1, 5, 4), 7))).any()


@pytest.mark.parametrize("size", [1, 3, 15])
@pytest.mark.parametrize("shape", [(21, 16), (7, 30)])
def test_dilate_square_matches_scipy(rng, size, shape):
    mask = rng.uniform(size=(2, *shape)) < 0.02
    mask[0, 0, 0] = mask[1, -1, -3] = True  # dilation at the borders
    np.testing.assert_array_equal(
        bm._dilate_square(jnp.asarray(mask), size=size), _reference_dilate(mask, size)
    )


@pytest.mark.parametrize("size", [0, 4, 15.0])
def test_dilate_square_rejects_bad_sizes(size):
    with pytest.raises(ValueError, match="size"):
        bm._dilate_square(jnp.zeros((1, 4, 4), bool), size=size)


@pytest.mark.parametrize(("shape", "dilation"), [((40, 40), 15), ((33, 27), 15), ((24, 31), 5)])
def test_statistics_and_metrics_match_the_reference(rng, shape, dilation):
    num_classes = 5
    labels = _blocky_labels(rng, 3, *shape, num_classes, block=6)
    labels[1, 10:14, :] = IGNORE
    pred = labels.copy()
    wrong = rng.uniform(size=pred.shape) < 0.15
    pred[wrong] = rng.integers(0, num_classes, size=wrong.sum())
    pred[labels == IGNORE] = rng.integers(0, num_classes, size=(labels == IGNORE).sum())
    stats = boundary_statistics(
        jnp.asarray(pred), jnp.asarray(labels), num_classes=num_classes, dilation=dilation
    )
    reference = _reference_statistics(pred, labels, num_classes, dilation)
    np.testing.assert_array_equal(stats.intersection, reference[0])
    np.testing.assert_array_equal(stats.prediction_area, reference[1])
    np.testing.assert_array_equal(stats.label_area, reference[2])
    metrics = bm.boundary_scores(stats)
    for name, value in _reference_metrics(reference).items():
        np.testing.assert_allclose(metrics[name], value, rtol=1e-12, err_msg=name)
    # Host accumulation in int64 gives the same metrics.
    host = bm.BoundaryStatistics(*(np.asarray(a, np.int64) for a in stats))
    assert bm.boundary_scores(host)["biou"] == metrics["biou"]


def test_statistics_accumulate_over_batches_and_jit(rng):
    labels = _blocky_labels(rng, 4, 30, 30, 3)
    pred = _blocky_labels(rng, 4, 30, 30, 3)
    stats_fn = jax.jit(functools.partial(bm.boundary_statistics, num_classes=3))
    whole = stats_fn(jnp.asarray(pred), jnp.asarray(labels))
    total = bm.BoundaryStatistics.zeros(3)
    for i in range(4):
        total = total.merge(stats_fn(jnp.asarray(pred[i : i + 1]), jnp.asarray(labels[i : i + 1])))
    for a, b in zip(whole, total, strict=True):
        np.testing.assert_array_equal(a, b)
    eager = bm.boundary_statistics(jnp.asarray(pred), jnp.asarray(labels), num_classes=3)
    for a, b in zip(whole, eager, strict=True):
        np.testing.assert_array_equal(a, b)


# The canvas of the hand-made cases: every band of a case (8 pixels around its edges)
# lies inside it, so the counts are those of an unbounded background; one canvas for
# every case compiles the statistics once.
CANVAS = (64, 80)


def _square(top, left, side, value=1):
    labels = np.zeros((1, *CANVAS), np.int32)
    labels[0, top : top + side, left : left + side] = value
    return labels


def _metrics(pred, labels, num_classes=2):
    stats = boundary_statistics(jnp.asarray(pred), jnp.asarray(labels), num_classes=num_classes)
    return {k: v for k, v in bm.boundary_scores(stats).items() if np.ndim(v) == 0}


# Hand counts for a side-s square (class 1) on background (class 0), far from the border,
# dilation 15 (radius 7). Its edges: the square's outer ring of pixels and the background
# pixels 4-adjacent to it (not the 4 diagonal corner pixels, whose Laplacian is 0). The
# band is every pixel within Chebyshev distance 7 of those: inside, the pixels at depth
# <= 8, i.e. s**2 - (s - 16)**2 of them; outside, the square grown by 8 minus the 4
# corner pixels at distance (8, 8), i.e. (s + 16)**2 - 4 - s**2.
S = 20
N1 = S**2 - (S - 16) ** 2  # 384 object pixels in the band
N0 = (S + 16) ** 2 - 4 - S**2  # 892 background pixels in the band


def test_perfect_prediction():
    labels = _square(14, 14, S)
    m = _metrics(labels, labels)
    assert m["biou"] == m["bacc"] == 1.0
    assert m["ferr"] == m["merr"] == m["derr"] == 0.0


def test_missed_object():
    # Prediction all background: no predicted edges, so FErr and DErr have no pixels
    # (NaN). In the ground-truth band every object pixel is wrong, every background pixel
    # right: MErr = 1 - (0 + 1) / 2. BIoU on the same band: class 0 has IoU N0 / (N0 + N1)
    # (everything predicted 0), class 1 has 0.
    labels = _square(14, 14, S)
    m = _metrics(np.zeros_like(labels), labels)
    assert np.isnan(m["ferr"]) and np.isnan(m["derr"])
    assert m["merr"] == pytest.approx(0.5)
    assert m["biou"] == pytest.approx(N0 / (N0 + N1) / 2)
    assert m["bacc"] == pytest.approx(0.5)


def test_square_shifted_by_k_pixels():
    # Prediction: the square moved right by k = 2. Errors: k * S object pixels (left strip)
    # and k * S background pixels (right strip), all within 2 of both edges, so in every
    # region. Object pixels in each band are the square minus its core(s) (the 4 x 4
    # pixels at depth > 8; the cores overlap in 4 x 2): G and P hold 400 - 16 = 384,
    # P & G 400 - 24 = 376, P | G 400 - 8 = 392. Background pixels: G and P hold N0 = 892;
    # P & G: rows [-8, 28) x cols [-6, 28) minus 4 missing corners minus the square,
    # 36 * 34 - 4 - 400 = 820; P | G: 36 * 38 - 4 - 400 = 964.
    k = 2
    errors = k * S
    labels = _square(14, 14, S)
    pred = _square(14, 14 + k, S)
    m = _metrics(pred, labels)

    def err(objects, background):
        return 1 - ((objects - errors) / objects + (background - errors) / background) / 2

    assert m["merr"] == pytest.approx(err(384, 892))
    assert m["ferr"] == pytest.approx(err(384, 892))  # the same counts, mirrored
    assert m["derr"] == pytest.approx(err(376, 820))
    assert m["bacc"] == pytest.approx(1 - err(392, 964))
    # BIoU on P | G: class 1: I = 392 - 40, P = L = 392; class 0: I = 964 - 40, P = L = 964.
    iou1 = (392 - errors) / (392 + 392 - (392 - errors))
    iou0 = (964 - errors) / (964 + 964 - (964 - errors))
    assert m["biou"] == pytest.approx((iou0 + iou1) / 2)


def test_merged_hole_is_a_merging_mistake_only():
    # Ground truth: a side-40 square with a 2 x 2 background hole in its middle; the
    # prediction fills the hole (merges). The hole is 19 pixels from the predicted edges,
    # out of P: FErr = DErr = 0 exactly. In G the 4 hole pixels are the only errors, among
    # 4 + (40 + 16)**2 - 4 - 40**2 = 1536 background pixels (the hole's band is object
    # otherwise): MErr = 1 - (1 + (1536 - 4) / 1536) / 2 = 2 / 1536.
    labels = _square(12, 12, 40)
    labels[0, 31:33, 31:33] = 0
    pred = _square(12, 12, 40)
    m = _metrics(pred, labels)
    assert m["ferr"] == 0.0 and m["derr"] == 0.0
    assert m["merr"] == pytest.approx(2 / 1536)


def test_split_object_merged_by_the_prediction():
    # Ground truth: two 20 x 12 objects side by side, split by a 2-column gap; the
    # prediction is one 20 x 26 object (the gap filled): 40 error pixels, all background.
    # G: every object and gap pixel (no core is deeper than 8), and the outside grown by 8
    # minus 4 corners: 36 * 42 - 4 - 520 = 988; background in G: 988 + 40 = 1028, so
    # MErr = 1 - (1 + 988 / 1028) / 2 = 20 / 1028. P: the prediction's band holds the gap
    # pixels within 8 rows of its top or bottom edge (2 * 8 * 2 = 32) and the same 988
    # outside pixels: background 1020, FErr = 16 / 1020. P lies inside G, so DErr = FErr.
    labels = np.zeros((1, *CANVAS), np.int32)
    labels[0, 14:34, 14:26] = 1
    labels[0, 14:34, 28:40] = 1
    pred = _square(14, 14, 20)
    pred[0, 14:34, 14:40] = 1
    m = _metrics(pred, labels)
    assert m["merr"] == pytest.approx(20 / 1028)
    assert m["ferr"] == pytest.approx(16 / 1020)
    assert m["derr"] == pytest.approx(16 / 1020)


def test_spurious_blob_is_a_false_response_only():
    # The prediction adds a 2 x 2 object blob far from the true square. Its band (the blob
    # grown by 8, minus 4 corners: 18**2 - 4 = 320 pixels, 4 of them the blob) is in P
    # only: MErr = DErr = 0, and FErr = 1 - (1 + (N0 + 320 - 4) / (N0 + 320)) / 2.
    labels = _square(14, 14, S)
    pred = labels.copy()
    pred[0, 20:22, 60:62] = 1
    m = _metrics(pred, labels)
    assert m["merr"] == 0.0 and m["derr"] == 0.0
    assert m["ferr"] == pytest.approx(2 / (N0 + 320))


def test_ignored_pixels_count_nowhere():
    labels = _square(14, 14, S)
    pred = np.zeros_like(labels)
    ignored = labels.copy()
    ignored[labels == 1] = IGNORE  # the object is ignored: no object pixel counts
    stats = boundary_statistics(jnp.asarray(pred), jnp.asarray(ignored), num_classes=2)
    np.testing.assert_array_equal(stats.label_area[:, 1], 0)
    np.testing.assert_array_equal(stats.prediction_area[2:, 1], 0)
    # The ignored region's border is a ground-truth edge (as in the authors' code).
    assert int(stats.label_area[2, 0]) == N0


def test_bad_inputs_raise():
    labels = jnp.zeros((1, 8, 8), jnp.int32)
    with pytest.raises(ValueError, match="ignore_index"):
        bm.boundary_statistics(labels, labels, num_classes=3, ignore_index=2)
    with pytest.raises(ValueError, match="labels must lie"):
        bm.boundary_statistics(labels, labels.at[0, 0, 0].set(5), num_classes=3)
    with pytest.raises(ValueError, match="predictions must lie"):
        bm.boundary_statistics(labels.at[0, 0, 0].set(-1), labels, num_classes=3)
    with pytest.raises(ValueError, match="same shape"):
        bm.boundary_statistics(labels, labels[:, :4], num_classes=3)
    with pytest.raises(TypeError, match="integer"):
        bm.boundary_statistics(labels.astype(jnp.float32), labels, num_classes=3)


def test_class_means_skip_classes_without_labelled_pixels_in_a_region():
    # Counts [4 regions, 3 classes]; class 2 has no labelled pixel in regions 1 and 3 and
    # is in neither map in region 0: its ratios there are NaN and must not reach the means.
    intersection = np.array([[4, 6, 0], [2, 3, 0], [5, 0, 1], [1, 2, 0]])
    prediction_area = np.array([[5, 8, 0], [4, 3, 2], [6, 1, 1], [1, 4, 3]])
    label_area = np.array([[6, 7, 0], [3, 5, 0], [5, 2, 4], [2, 2, 0]])
    scores = bm.boundary_scores(bm.BoundaryStatistics(intersection, prediction_area, label_area))
    union = prediction_area + label_area - intersection
    assert scores["biou"] == pytest.approx((4 / 7 + 6 / 9) / 2)
    assert scores["bacc"] == pytest.approx((4 / 6 + 6 / 7) / 2)
    assert scores["ferr"] == pytest.approx(1 - (2 / 3 + 3 / 5) / 2)
    assert scores["merr"] == pytest.approx(1 - (5 / 5 + 0 / 2 + 1 / 4) / 3)
    assert scores["derr"] == pytest.approx(1 - (1 / 2 + 2 / 2) / 2)
    assert np.isnan(scores["boundary_iou_per_class"][2]) and union[0, 2] == 0
    assert all(np.isfinite(scores[k]) for k in ("biou", "bacc", "ferr", "merr", "derr"))
