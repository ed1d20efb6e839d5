"""Tests of spectral_jax.evaluation.boundary: boundary metrics of padded evaluation crops."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from spectral_jax.evaluation.boundary import valid_region_boundary_statistics
from spectral_jax.related import boundary_metrics


def _pad_bottom_right(x, height, width, value):
    out = np.full((height, width), value, x.dtype)
    out[: x.shape[0], : x.shape[1]] = x
    return out


@pytest.mark.parametrize(("size", "pads"), [((24, 24), [(0, 0), (5, 3)]), ((31, 28), [(9, 1)])])
def test_valid_region_boundary_statistics_match_unpadded_images(rng, size, pads):
    """Counts of padded maps equal the library's counts of each unpadded image."""
    height, width = size
    predictions, labels, reference = [], [], boundary_metrics.BoundaryStatistics.zeros(4)
    for pad_rows, pad_cols in pads:
        h, w = height - pad_rows, width - pad_cols
        label = rng.integers(0, 4, size=(h // 4 + 1, w // 4 + 1)).repeat(4, 0).repeat(4, 1)
        label = label[:h, :w].astype(np.int32)
        label[rng.random((h, w)) < 0.05] = 255  # Ignored pixels inside the image.
        prediction = np.where(rng.random((h, w)) < 0.2, rng.integers(0, 4, (h, w)), label)
        prediction = np.where(prediction == 255, 0, prediction).astype(np.int32)
        prediction[-1, -1] = 3  # Non-ignored label in the last row and column below.
        label[-1, -1] = 2
        reference = reference.merge(
            boundary_metrics.boundary_statistics(prediction[None], label[None], num_classes=4)
        )
        # The padding: ignore label, and predictions that differ from the image's.
        labels.append(_pad_bottom_right(label, height, width, 255))
        predictions.append(_pad_bottom_right(prediction, height, width, 1))
    got = jax.jit(valid_region_boundary_statistics, static_argnames=("num_classes",))(
        np.stack(predictions), np.stack(labels), num_classes=4
    )
    for name, want, value in zip(reference._fields, reference, got, strict=True):
        np.testing.assert_array_equal(np.asarray(value), np.asarray(want), err_msg=name)


def test_valid_region_differs_from_counting_the_padding_border():
    """The plain statistics of a padded map count the padding's border as an edge."""
    label = np.zeros((20, 20), np.int32)
    label[:, 10:] = 1
    padded = _pad_bottom_right(label, 32, 32, 255)[None]
    prediction = _pad_bottom_right(label, 32, 32, 0)[None]
    plain = boundary_metrics.boundary_statistics(prediction, padded, num_classes=2)
    valid = valid_region_boundary_statistics(prediction, padded, num_classes=2)
    want = boundary_metrics.boundary_statistics(label[None], label[None], num_classes=2)
    np.testing.assert_array_equal(np.asarray(valid.label_area), np.asarray(want.label_area))
    assert int(np.sum(plain.label_area[0])) > int(np.sum(want.label_area[0]))
