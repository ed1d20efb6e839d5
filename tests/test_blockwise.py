"""Block-wise annotation against a brute-force loop over blocks and pixels."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax import blockwise


def _reference(labels: np.ndarray, band_limit: int, num_classes: int, ignore: int) -> np.ndarray:
    """Loops: block of pixel i is floor(i * G / n); majority over valid pixels, first max."""
    height, width = labels.shape
    grid = 2 * band_limit + 1
    out = np.empty_like(labels)
    block_of = lambda i, n: (i * min(grid, n)) // n  # noqa: E731
    for bh in range(min(grid, height)):
        rows = [i for i in range(height) if block_of(i, height) == bh]
        for bw in range(min(grid, width)):
            cols = [j for j in range(width) if block_of(j, width) == bw]
            votes = [0] * num_classes
            for i in rows:
                for j in cols:
                    if labels[i, j] != ignore:
                        votes[int(labels[i, j])] += 1
            best = ignore
            if sum(votes) > 0:
                best = max(range(num_classes), key=lambda c: (votes[c], -c))
            for i in rows:
                for j in cols:
                    out[i, j] = best
    return out


def _random_labels(rng, shape, num_classes, ignore_fraction, ignore=255, dtype=np.uint8):
    labels = rng.integers(0, num_classes, shape)
    # Piecewise-constant patches make majorities meaningful; then sprinkle ignore pixels.
    labels = np.where(rng.random(shape) < 0.5, labels, np.roll(labels, 1, axis=-1))
    labels = np.where(rng.random(shape) < ignore_fraction, ignore, labels)
    return labels.astype(dtype)


SHAPES = [(17, 17), (16, 20), (33, 31), (7, 9)]
BAND_LIMITS = [0, 1, 2, 5]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("band_limit", BAND_LIMITS)
@pytest.mark.parametrize("ignore_fraction", [0.0, 0.3, 0.9])
def test_numpy_matches_loop_reference(rng, shape, band_limit, ignore_fraction):
    labels = _random_labels(rng, shape, 4, ignore_fraction)
    expected = _reference(labels, band_limit, 4, 255)
    got = blockwise.blockwise_annotation_numpy(labels, band_limit, num_classes=4)
    assert got.dtype == labels.dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("band_limit", BAND_LIMITS)
@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_jax_matches_loop_reference(rng, shape, band_limit, dtype):
    labels = _random_labels(rng, shape, 5, 0.3, dtype=dtype)
    expected = _reference(labels, band_limit, 5, 255)
    got = blockwise.blockwise_annotation(jnp.asarray(labels), band_limit, num_classes=5)
    assert got.dtype == jnp.dtype(dtype)
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_jit_and_vmap_over_a_batch(rng):
    labels = _random_labels(rng, (3, 2, 19, 22), 6, 0.2)  # [..., H, W] with two batch axes
    expected = np.stack([[_reference(image, 3, 6, 255) for image in group] for group in labels])

    @jax.jit
    @chex.assert_max_traces(n=1)
    def fn(labels):
        return blockwise.blockwise_annotation(labels, 3, num_classes=6)

    np.testing.assert_array_equal(np.asarray(fn(labels)), expected)
    np.testing.assert_array_equal(np.asarray(fn(labels + 0)), expected)  # no retrace
    vmapped = jax.vmap(
        jax.vmap(functools.partial(blockwise.blockwise_annotation, band_limit=3, num_classes=6))
    )
    np.testing.assert_array_equal(np.asarray(vmapped(labels)), expected)
    np.testing.assert_array_equal(
        blockwise.blockwise_annotation_numpy(labels, 3, num_classes=6), expected
    )


def test_band_limit_256_at_513_is_identity(rng):
    labels = _random_labels(rng, (513, 513), 21, 0.1)
    np.testing.assert_array_equal(
        blockwise.blockwise_annotation_numpy(labels, 256, num_classes=21), labels
    )
    np.testing.assert_array_equal(
        np.asarray(blockwise.blockwise_annotation(labels, 256, num_classes=21)), labels
    )


def test_ties_go_to_the_smallest_class_and_empty_blocks_are_ignored():
    # Band limit 0: a single block. Two votes each for classes 1 and 3 -> 1.
    labels = np.array([[3, 1, 255], [1, 3, 255]], np.uint8)
    assert np.all(blockwise.blockwise_annotation_numpy(labels, 0, num_classes=4) == 1)
    # Band limit 1 on 3 x 3: one pixel per block; the ignored pixel stays ignored.
    labels = np.array([[0, 1, 2], [255, 1, 0], [2, 2, 2]], np.uint8)
    np.testing.assert_array_equal(
        np.asarray(blockwise.blockwise_annotation(labels, 1, num_classes=3)), labels
    )
    # Ignored pixels do not vote: one valid 2 beats three ignored pixels.
    labels = np.array([[255, 255], [255, 2]], np.uint8)
    assert np.all(blockwise.blockwise_annotation_numpy(labels, 0, num_classes=3) == 2)


@pytest.mark.parametrize("size", [1, 5, 33, 513, 1000])
@pytest.mark.parametrize("band_limit", [0, 1, 16, 256])
def test_block_partition_is_balanced(size, band_limit):
    blocks = blockwise._block_partition(size, band_limit)
    grid = min(2 * band_limit + 1, size)
    counts = np.bincount(blocks)
    assert len(counts) == grid and np.all(np.diff(blocks) >= 0)
    assert counts.min() == size // grid and counts.max() == -(-size // grid)


@pytest.mark.parametrize(
    "fn", [blockwise.blockwise_annotation, blockwise.blockwise_annotation_numpy]
)
def test_bad_inputs_raise(fn):
    labels = np.zeros((4, 4), np.uint8)
    with pytest.raises(ValueError, match="labels must lie in"):
        fn(np.full((4, 4), 7, np.uint8), 1, num_classes=4)
    with pytest.raises(ValueError, match="band_limit"):
        fn(labels, -1, num_classes=4)
    with pytest.raises(ValueError, match="band_limit"):
        fn(labels, 1.5, num_classes=4)
    with pytest.raises(ValueError, match="ignore_index"):
        fn(labels, 1, num_classes=4, ignore_index=2)
    with pytest.raises(ValueError, match="integer"):
        fn(labels.astype(np.float32), 1, num_classes=4)
    with pytest.raises(ValueError, match=r"\[\.\.\., H, W\]"):
        fn(np.zeros((4,), np.uint8), 1, num_classes=4)
