r"""Block-wise annotation: the weak label that keeps a label map's low frequencies (Sec. 3.3).

At band limit ``nu_max`` the label map is divided into the blocks of a
``G x G`` grid, ``G = 2 * nu_max + 1`` (the grid that holds the Chebyshev band limit
``nu_max``, :func:`spectral_jax.grid_of_band_limit`), and every pixel of a block takes the
block's majority label. Table 3 of the paper trains on these labels for ``nu_max`` from 1
to 256; at ``nu_max = 256`` on ``513 x 513`` crops every block is one pixel and the
annotation is the pixel-wise ground truth.

Conventions (the paper leaves them open; these are ours):

* **Partition.** Along an axis of length ``n`` pixel ``i`` belongs to block
  ``floor(i * G / n)``, so for ``n >= G`` the blocks have ``floor(n / G)`` or
  ``ceil(n / G)`` pixels, spread evenly, and for ``n <= G`` every pixel is its own block
  (the annotation is the identity).
* **Ignore label.** The majority is taken over the block's valid pixels only: ignored
  pixels (``ignore_index``, e.g. VOC's object borders, the padding of a crop) do not vote.
  A block gets ``ignore_index`` only when none of its pixels is valid.
* **Ties** go to the smallest class index.

.. math::

   \tilde B(t) = \operatorname*{arg\,max}_{c}\
   \#\{t' \in \mathrm{block}(t) : B(t') = c\}.

:func:`blockwise_annotation` is the JAX version (``jit``-able with the band limit and the
number of classes static, since they set the grid and the one-hot width; ``vmap``-able;
labels ``[..., H, W]``). :func:`blockwise_annotation_numpy` computes the same on NumPy
arrays, for the input pipeline's ``label_transform`` (``transform`` below is passed as
``spectral_jax.data.train_batches(source, ..., label_transform=transform)``):

  >>> import functools
  >>> transform = functools.partial(blockwise_annotation_numpy, band_limit=1, num_classes=2)
  >>> labels = np.array([[0, 0, 1, 1, 1, 0, 255, 255, 1]], np.uint8)  # [H, W]; 255 ignored
  >>> transform(labels)  # G = 3 blocks of 3 pixels per row; ignored pixels do not vote
  array([[0, 0, 0, 1, 1, 1, 1, 1, 1]], dtype=uint8)
  >>> blockwise_annotation(labels, 1, num_classes=2).tolist() == transform(labels).tolist()
  True
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import _checks
from spectral_jax._checks import IGNORE_INDEX


def _check_band_limit(band_limit) -> int:
    if (
        isinstance(band_limit, bool)
        or not isinstance(band_limit, int | np.integer)
        or band_limit < 0
    ):
        raise ValueError(f"band_limit must be a non-negative int, got {band_limit!r}.")
    return int(band_limit)


def _check_classes(num_classes, ignore_index) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise ValueError(f"num_classes must be an int, got {num_classes!r}.")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}.")
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index={ignore_index} is a valid class index for num_classes={num_classes}; "
            "it must lie outside [0, num_classes)."
        )


def _check_labels(labels, num_classes: int, ignore_index: int) -> None:
    if jnp.ndim(labels) < 2:
        raise ValueError(f"labels must have shape [..., H, W], got shape {jnp.shape(labels)}.")
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"labels must be an integer array, got dtype {jnp.result_type(labels)}.")
    _checks.check_label_values(labels, num_classes, ignore_index)


def _block_partition(size: int, band_limit: int) -> np.ndarray:
    """Block of every pixel along an axis of ``size`` pixels: ``floor(i * G / size)``.

    Args:
      size: number of pixels ``n`` along the axis.
      band_limit: ``nu_max``; the grid has ``G = 2 * nu_max + 1`` blocks per axis (at most
        ``size``: a finer grid than the pixels leaves every pixel its own block).

    Returns:
      Integer array ``[size]`` of block indices, non-decreasing, from 0 to
      ``min(G, size) - 1``, every index present.

    Raises:
      ValueError: if ``size`` is not positive or ``band_limit`` is negative.
    """
    band_limit = _check_band_limit(band_limit)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}.")
    grid = min(2 * band_limit + 1, int(size))
    return (np.arange(size, dtype=np.int64) * grid) // size


def blockwise_annotation(
    labels: chex.Array,
    band_limit: int,
    *,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> jax.Array:
    """Block-wise annotation of label maps at band limit ``band_limit`` (JAX).

    See the module docstring for the partition, the ignore label and ties.

    Args:
      labels: integer labels ``[..., H, W]`` in ``[0, C)`` or ``ignore_index``.
      band_limit: ``nu_max`` (static): blocks of a ``(2 nu_max + 1)``-sized grid.
      num_classes: ``C`` (static).
      ignore_index: label of pixels that do not vote; blocks without a valid pixel get it.

    Returns:
      ``[..., H, W]`` labels of the dtype of ``labels``, constant on every block.

    Raises:
      ValueError: if ``band_limit`` or ``num_classes`` is not a valid int, ``ignore_index``
        lies in ``[0, C)``, ``labels`` has rank below 2 or a non-integer dtype, or (for
        concrete ``labels``) a label lies outside ``[0, C)`` and is not ``ignore_index``.
        Under ``jit``/``vmap`` such a label cannot be checked and is treated as ignored.
    """
    _check_classes(num_classes, ignore_index)
    band_limit = _check_band_limit(band_limit)
    labels = _checks.as_array(labels, "labels")  # a CPU PyTorch tensor, say
    _check_labels(labels, num_classes, ignore_index)
    labels = jnp.asarray(labels)
    height, width = labels.shape[-2:]
    rows = _block_partition(height, band_limit)
    cols = _block_partition(width, band_limit)
    # Block-membership matrices [Gh, H] and [Gw, W]: summing one-hot labels over a block
    # is two small matrix products, exact in float32 while a block has < 2**24 pixels.
    row_blocks = jnp.asarray(rows[None, :] == np.arange(rows[-1] + 1)[:, None], jnp.float32)
    col_blocks = jnp.asarray(cols[None, :] == np.arange(cols[-1] + 1)[:, None], jnp.float32)
    # one_hot gives a zero row for ignore_index (outside [0, C)), so ignored pixels do not vote.
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # [..., H, W, C]
    counts = jnp.einsum("gh,...hwc,kw->...gkc", row_blocks, one_hot, col_blocks)  # [..., Gh, Gw, C]
    # argmax returns the first maximum: ties go to the smallest class index.
    block_labels = jnp.argmax(counts, axis=-1)  # [..., Gh, Gw]
    block_labels = jnp.where(jnp.sum(counts, axis=-1) > 0, block_labels, ignore_index)
    expanded = block_labels[..., rows, :][..., :, cols]  # [..., H, W]
    return expanded.astype(labels.dtype)


def blockwise_annotation_numpy(
    labels: np.ndarray,
    band_limit: int,
    *,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Block-wise annotation of label maps at band limit ``band_limit`` (NumPy).

    Same result as :func:`blockwise_annotation`, on the host: for the input pipeline's
    ``label_transform`` (bind the settings with ``functools.partial``).

    Args:
      labels: integer labels ``[..., H, W]`` in ``[0, C)`` or ``ignore_index``.
      band_limit: ``nu_max``: blocks of a ``(2 nu_max + 1)``-sized grid.
      num_classes: ``C``.
      ignore_index: label of pixels that do not vote; blocks without a valid pixel get it.

    Returns:
      ``[..., H, W]`` labels of the dtype of ``labels``, constant on every block.

    Raises:
      ValueError: as :func:`blockwise_annotation` (labels are always checked).
    """
    _check_classes(num_classes, ignore_index)
    band_limit = _check_band_limit(band_limit)
    labels = np.asarray(labels)
    _check_labels(labels, num_classes, ignore_index)
    *batch_shape, height, width = labels.shape
    rows = _block_partition(height, band_limit)
    cols = _block_partition(width, band_limit)
    grid_h, grid_w = int(rows[-1]) + 1, int(cols[-1]) + 1
    flat = labels.reshape(-1, height, width).astype(np.int64)  # [B, H, W]
    num_images = flat.shape[0]
    valid = flat != ignore_index
    # One bin per (image, block row, block column, class); ignored pixels are left out.
    block = (np.arange(num_images)[:, None, None] * grid_h + rows[None, :, None]) * grid_w + cols[
        None, None, :
    ]  # [B, H, W]
    bins = block[valid] * num_classes + flat[valid]
    counts = np.bincount(bins, minlength=num_images * grid_h * grid_w * num_classes)
    counts = counts.reshape(num_images, grid_h, grid_w, num_classes)
    block_labels = np.where(counts.sum(-1) > 0, counts.argmax(-1), ignore_index)  # [B, Gh, Gw]
    expanded = block_labels[:, rows[:, None], cols[None, :]]  # [B, H, W]
    return expanded.reshape(*batch_shape, height, width).astype(labels.dtype)
