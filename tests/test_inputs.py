"""Tests of spectral_jax.data.inputs: a config's pipeline, padding and first examples."""

from __future__ import annotations

import itertools

import ml_collections
import numpy as np
import pytest

from spectral_jax.blockwise import blockwise_annotation_numpy
from spectral_jax.data import dataset_info
from spectral_jax.data.inputs import (
    blockwise_label_transform,
    input_pipeline_from_sources,
    pad_batch,
    take_examples,
)
from spectral_jax.data.pipeline import SegmentationDatasetInfo


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


@pytest.mark.parametrize("shard_count", [2, 4])
def test_the_processes_rows_make_up_the_single_process_batches(shard_count):
    """A run's pipeline (``input_pipeline_from_sources``, block-wise labels on): the rows
    of the ``shard_count`` processes, concatenated in process order, are the batches of
    one process, for training (resumed at step 3 too) and for evaluation (every example
    once, ``mask`` True on the real ones; a process may hold filling rows only)."""
    rng = np.random.default_rng(3)
    sizes = ((20, 24), (18, 18), (24, 20))
    source = [
        {
            "image": rng.integers(0, 256, (*sizes[i % 3], 3)).astype(np.uint8),
            "label": rng.integers(0, 3, sizes[i % 3]).astype(np.uint8),
        }
        for i in range(5)
    ]
    info = SegmentationDatasetInfo("test", ("a", "b", "c"))
    config = ml_collections.ConfigDict(
        dict(
            crop_size=16,
            eval_crop_size=24,
            scale_range=(0.75, 1.25),
            flip=True,
            seed=5,
            worker_count=0,
            block_band_limit=4,
        )
    )
    pipeline = input_pipeline_from_sources(config, info, source, source)
    for start_step in (0, 3):
        whole = list(itertools.islice(pipeline.train_batches(start_step, 8, 0, 1), 3))
        parts = [
            list(itertools.islice(pipeline.train_batches(start_step, 8, s, shard_count), 3))
            for s in range(shard_count)
        ]
        for step, batch in enumerate(whole):
            for key in ("image", "label"):
                joined = np.concatenate([part[step][key] for part in parts])
                np.testing.assert_array_equal(joined, batch[key])
    whole = list(pipeline.eval_batches(4, 0, 1))
    parts = [list(pipeline.eval_batches(4, s, shard_count)) for s in range(shard_count)]
    assert len(whole) == 2 and all(len(part) == 2 for part in parts)
    for step, batch in enumerate(whole):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(
                np.concatenate([part[step][key] for part in parts]), batch[key]
            )
    assert int(sum(batch["mask"].sum() for batch in whole)) == len(source)
    assert not parts[-1][-1]["mask"].any()  # The last process: filling rows only.


def test_config_ignore_index_labels_the_padding_and_replaces_the_data_sets():
    # One 10 x 12 example (labels 0..2, the data set's ignore label 255 at one pixel)
    # evaluated in crops of 16: the padding takes config.ignore_index, which the
    # pipeline reports; a value inside [0, C) is refused.
    label = np.tile(np.arange(12) % 3, (10, 1)).astype(np.uint8)
    label[0, 0] = 255
    source = [{"image": np.zeros((10, 12, 3), np.uint8), "label": label}]
    info = SegmentationDatasetInfo("test", ("a", "b", "c"))
    config = ml_collections.ConfigDict(
        dict(
            crop_size=16,
            eval_crop_size=16,
            scale_range=(1.0, 1.0),
            flip=False,
            seed=0,
            worker_count=0,
            block_band_limit=None,
            ignore_index=-1,
        )
    )
    pipeline = input_pipeline_from_sources(config, info, source, source)
    assert pipeline.ignore_index == -1
    (batch,) = pipeline.eval_batches(1, 0, 1)
    want = np.full((16, 16), -1)
    want[:10, :12] = label
    np.testing.assert_array_equal(batch["label"][0], want)
    config.ignore_index = None
    assert input_pipeline_from_sources(config, info, source, source).ignore_index == 255
    config.ignore_index = 2
    with pytest.raises(ValueError, match=r"config.ignore_index=2 is a class of test \(C = 3\)"):
        input_pipeline_from_sources(config, info, source, source)
