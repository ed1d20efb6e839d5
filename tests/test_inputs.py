"""Tests of spectral_jax.data.inputs: a config's pipeline, padding and first examples."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from spectral_jax.blockwise import blockwise_annotation_numpy
from spectral_jax.data import dataset_info
from spectral_jax.data.inputs import blockwise_label_transform, pad_batch, take_examples


def _batches(sizes, masks=None):
    start = 0
    for index, size in enumerate(sizes):
        labels = np.arange(start, start + size)[:, None, None] * np.ones((1, 2, 2), int)
        batch = {"image": labels[..., None] * np.ones((1, 1, 1, 3)), "label": labels}
        if masks is not None:
            batch["mask"] = np.asarray(masks[index])
        start += size
        yield batch


def test_pad_batch_adds_ignored_examples():
    (batch,) = _batches([2])
    padded = pad_batch({**batch, "extra": 1}, 4, ignore_index=255)
    assert set(padded) == {"image", "label", "mask"}
    assert padded["image"].dtype == np.float32 and padded["label"].dtype == np.int32
    np.testing.assert_array_equal(padded["label"][:, 0, 0], [0, 1, 255, 255])
    np.testing.assert_array_equal(padded["image"][2:], 0.0)
    np.testing.assert_array_equal(padded["mask"], [True, True, False, False])
    with pytest.raises(ValueError, match="batch_size=1"):
        pad_batch(batch, 1, ignore_index=255)


def test_take_examples_skips_filling_examples_and_stops_early():
    masks = [[False, True, True], [True, False, False], [True, True, True]]
    read = []

    def batches():
        for batch in _batches([3, 3, 3], masks):
            read.append(batch)
            yield batch

    images, labels = take_examples(batches(), 3)
    np.testing.assert_array_equal(labels[:, 0, 0], [1, 2, 3])
    assert images.shape == (3, 2, 2, 3) and len(read) == 2
    images, labels = take_examples(_batches([2]), 5)  # A shorter split: all it has.
    assert len(labels) == 2
    with pytest.raises(ValueError, match="num_examples"):
        take_examples(_batches([2]), 0)


def test_blockwise_label_transform_of_a_config():
    config = ml_collections.ConfigDict({"block_band_limit": None})
    info = dataset_info("synthetic_scenes/pascal_like")
    assert blockwise_label_transform(config, info) is None
    config.block_band_limit = 4
    transform = blockwise_label_transform(config, info)
    label = np.random.default_rng(0).integers(0, 21, size=(16, 16))
    want = blockwise_annotation_numpy(label, band_limit=4, num_classes=21, ignore_index=255)
    np.testing.assert_array_equal(transform(label), want)
