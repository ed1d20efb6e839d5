"""Boundary metrics of padded evaluation crops, counted on the unpadded images.

The evaluation pipeline pads every image at the bottom and right with the ignore label;
:func:`valid_region_boundary_statistics` counts the boundary metrics of Chen, Gu, Fu
(2024; :mod:`spectral_jax.related.boundary_metrics`) as if the images had not been
padded. :data:`BOUNDARY_SCORES` are the scores an evaluation reports.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from spectral_jax._checks import IGNORE_INDEX
from spectral_jax.related import boundary_metrics as boundary_lib

#: The boundary metrics (Chen, Gu, Fu 2024) that an evaluation reports.
BOUNDARY_SCORES = ("biou", "bacc", "ferr", "merr", "derr", "boundary_pixel_accuracy")


def _valid_extent(labels: jax.Array, ignore_index: int) -> tuple[jax.Array, jax.Array]:
    """``[B]`` heights and widths of the region up to the last row / column with a label."""
    valid = labels != ignore_index  # [B, H, W]
    rows = jnp.arange(labels.shape[1])
    cols = jnp.arange(labels.shape[2])
    height = jnp.max(jnp.where(jnp.any(valid, axis=2), rows + 1, 0), axis=1)  # [B]
    width = jnp.max(jnp.where(jnp.any(valid, axis=1), cols + 1, 0), axis=1)  # [B]
    return height, width


def _reflect_index(size: int, extent: jax.Array) -> jax.Array:
    """``[B, size]`` indices ``i`` inside, ``2 (n - 1) - i`` beyond ``n = extent``."""
    index = jnp.arange(size)[None, :]  # [1, size]
    last = jnp.maximum(extent[:, None] - 1, 0)  # [B, 1]
    return jnp.clip(jnp.where(index <= last, index, 2 * last - index), 0, last)


def valid_region_boundary_statistics(
    predictions: chex.Array,
    labels: chex.Array,
    *,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    dilation: int = 15,
) -> boundary_lib.BoundaryStatistics:
    """Boundary-metric counts of padded evaluation crops, on the unpadded images only.

    The evaluation pipeline pads every image at the bottom and right with the ignore
    label. :func:`spectral_jax.related.boundary_metrics.boundary_statistics` would take the border
    of that padding for an edge of the ground truth and count the valid pixels within
    ``dilation // 2`` of it as boundary pixels. Here each image's valid region is taken
    to end at its last row and last column holding a non-ignored label; beyond it both
    maps are filled by reflection without repeating the edge pixel (the border mode of
    :func:`spectral_jax.related.boundary_metrics.label_edges`), so the edges inside the region are
    those of the unpadded image, and the reflected edges, lying farther away than the
    edges they mirror, add no band pixel. Only pixels inside the region are counted: the
    result equals ``boundary_statistics`` of the unpadded images (an image whose last
    rows or columns are entirely ignored is cropped there, which changes nothing but the
    band of edges next to that ignored strip).

    Args:
      predictions: ``[B, H, W]`` integer predicted classes in ``[0, C)``.
      labels: ``[B, H, W]`` integer labels in ``[0, C)`` or ``ignore_index``.
      num_classes: static ``C``.
      ignore_index: the label of padding and of ignored pixels.
      dilation: static odd side of the band's square (15).

    Returns:
      :class:`spectral_jax.related.boundary_metrics.BoundaryStatistics` with ``[4, C]`` counts.
    """
    chex.assert_rank([predictions, labels], 3)
    chex.assert_equal_shape([predictions, labels])
    labels = jnp.asarray(labels, jnp.int32)
    predictions = jnp.asarray(predictions, jnp.int32)
    batch, h, w = labels.shape
    height, width = _valid_extent(labels, ignore_index)
    row_index = _reflect_index(h, height)[:, :, None]  # [B, H, 1]
    col_index = _reflect_index(w, width)[:, None, :]  # [B, 1, W]
    batch_index = jnp.arange(batch)[:, None, None]

    def fill(x):
        return x[batch_index, row_index, col_index]  # [B, H, W]

    regions = boundary_lib.boundary_regions(
        fill(predictions), fill(labels), dilation=dilation
    )  # [4, B, H, W]
    inside = (jnp.arange(h)[None, :, None] < height[:, None, None]) & (
        jnp.arange(w)[None, None, :] < width[:, None, None]
    )  # [B, H, W]
    label_ok = (labels >= 0) & (labels < num_classes) & (labels != ignore_index) & inside
    counted = regions & label_ok  # [4, B, H, W]
    prediction_ok = (predictions >= 0) & (predictions < num_classes)
    num_regions = len(boundary_lib.REGIONS)
    offsets = (jnp.arange(num_regions) * num_classes)[:, None, None, None]
    length = num_regions * num_classes

    def count(classes, weights):
        ids = (offsets + jnp.clip(classes, 0, num_classes - 1)).reshape(-1)
        flat = jnp.broadcast_to(weights, regions.shape).reshape(-1).astype(jnp.int32)
        return jnp.bincount(ids, weights=flat, length=length).reshape(num_regions, -1)

    return boundary_lib.BoundaryStatistics(
        intersection=count(labels, counted & (predictions == labels)),
        prediction_area=count(predictions, counted & prediction_ok),
        label_area=count(labels, counted),
    )
