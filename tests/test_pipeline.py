"""Input pipeline: determinism, resuming, sharding, augmentation and exact evaluation."""

from __future__ import annotations

import functools
import itertools
import pickle

import numpy as np
import pytest

from spectral_jax import blockwise, data
from spectral_jax.data import pipeline, synthetic

MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


class CountingSource:
    """A list of examples that records which indices were read."""

    def __init__(self, examples):
        self.examples = examples
        self.reads: list[int] = []

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, index):
        self.reads.append(int(index))
        return self.examples[index]


def _examples(rng, count, sizes=((21, 26), (30, 17), (25, 25)), num_classes=5):
    examples = []
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        label = rng.integers(0, num_classes, (h, w)).astype(np.uint8)
        label[rng.random((h, w)) < 0.1] = 255
        image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        examples.append({"image": image, "label": label})
    return examples


def _normalised(image):
    return (image.astype(np.float64) / 255 - np.array(MEAN)) / np.array(STD)


def _train(source, **kwargs):
    settings = dict(batch_size=4, crop_size=24, seed=3, mean=MEAN, std=STD)
    settings.update(kwargs)
    return data.train_batches(source, **settings)


def test_stream_is_deterministic_and_seeded(rng):
    source = CountingSource(_examples(rng, 7))
    a = list(itertools.islice(_train(source), 5))
    b = list(itertools.islice(_train(source), 5))
    c = list(itertools.islice(_train(source, seed=4), 5))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert not all(np.array_equal(x["image"], z["image"]) for x, z in zip(a, c, strict=True))
    assert a[0]["image"].shape == (4, 24, 24, 3) and a[0]["image"].dtype == np.float32
    assert a[0]["label"].shape == (4, 24, 24) and a[0]["label"].dtype == np.int32


@pytest.mark.parametrize("start_step", [1, 3, 7])
def test_start_step_resumes_without_reading_earlier_batches(rng, start_step):
    examples = _examples(rng, 7)
    full = list(itertools.islice(_train(CountingSource(examples)), start_step + 3))
    source = CountingSource(examples)
    resumed = list(itertools.islice(_train(source, start_step=start_step), 3))
    for x, y in zip(full[start_step:], resumed, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    # Exactly the 3 resumed batches' examples were read, nothing of the first batches,
    # each once (the stream keeps what it decoded: DecodedExampleCache).
    fn = _batch_fn(examples)
    expected = np.concatenate([fn.example_indices(s) for s in range(start_step, start_step + 3)])
    first_reads = [int(i) for k, i in enumerate(expected) if i not in expected[:k]]
    assert source.reads == first_reads


def test_decoded_example_cache_reads_each_example_once_within_its_budget(rng):
    examples = _examples(rng, 7)
    sizes = [e["image"].nbytes + e["label"].nbytes for e in examples]
    # Room for the first three examples read, not the fourth.
    source = CountingSource(examples)
    cache = pipeline.DecodedExampleCache(source, max_bytes=sum(sizes[:3]))
    for index in [0, 1, 2, 0, 1, 2, 3, 3, 0]:
        example = cache[index]
        np.testing.assert_array_equal(example["image"], examples[index]["image"])
        np.testing.assert_array_equal(example["label"], examples[index]["label"])
    assert source.reads == [0, 1, 2, 3, 3]
    assert len(cache) == 7
    # Kept arrays are read-only views; the source's own arrays stay writable.
    assert not cache[0]["image"].flags.writeable
    assert examples[0]["image"].flags.writeable
    # A pickled cache (grain's workers) carries the source, not the decoded examples.
    clone = pickle.loads(pickle.dumps(cache))
    clone[0]
    assert clone._source.reads[-1] == 0 and len(clone._examples) == 1
    with pytest.raises(ValueError, match="max_bytes"):
        pipeline.DecodedExampleCache(source, max_bytes=-1)
    # The training stream is the same whether an example comes from the cache or not.
    cached = list(itertools.islice(_train(CountingSource(examples)), 6))
    uncached = [_batch_fn(CountingSource(examples))(step) for step in range(6)]
    for x, y in zip(cached, uncached, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def _batch_fn(examples, **kwargs):
    settings = dict(
        source=examples,
        num_examples=len(examples),
        batch_size=4,
        crop_size=24,
        seed=3,
        scale_range=(0.5, 2.0),
        flip=True,
        mean=MEAN,
        std=STD,
        ignore_index=255,
        label_transform=None,
        shard_index=0,
        shard_count=1,
    )
    settings.update(kwargs)
    return pipeline.TrainBatchFn(**settings)


@pytest.mark.parametrize("num_examples,batch_size", [(8, 4), (7, 3), (5, 6)])
def test_every_epoch_is_a_fresh_permutation(rng, num_examples, batch_size):
    examples = _examples(rng, num_examples)
    fn = _batch_fn(examples, batch_size=batch_size)
    steps = 4 * num_examples  # 4 * batch_size epochs' worth of positions
    order = np.concatenate([fn.example_indices(s) for s in range(steps)])
    epochs = order[: (len(order) // num_examples) * num_examples].reshape(-1, num_examples)
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(num_examples))
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled between epochs


@pytest.mark.parametrize("shard_count", [2, 4])
def test_shards_split_each_global_batch(rng, shard_count):
    examples = _examples(rng, 9)
    whole = list(itertools.islice(_train(examples, batch_size=8), 3))
    shards = [
        list(
            itertools.islice(
                _train(examples, batch_size=8, shard_index=s, shard_count=shard_count), 3
            )
        )
        for s in range(shard_count)
    ]
    for step in range(3):
        for key in ("image", "label"):
            joined = np.concatenate([shards[s][step][key] for s in range(shard_count)])
            np.testing.assert_array_equal(joined, whole[step][key])
        assert shards[0][step]["image"].shape[0] == 8 // shard_count


def test_identity_augmentation_pads_bottom_right(rng):
    examples = _examples(rng, 3)
    batch = next(_train(examples, batch_size=3, crop_size=32, scale_range=(1, 1), flip=False))
    fn = _batch_fn(examples, batch_size=3, crop_size=32)
    for row, index in enumerate(fn.example_indices(0)):
        image, label = examples[index]["image"], examples[index]["label"]
        h, w = label.shape
        expected_image = np.zeros((32, 32, 3))
        expected_image[:h, :w] = _normalised(image)
        expected_label = np.full((32, 32), 255)
        expected_label[:h, :w] = label
        np.testing.assert_allclose(batch["image"][row], expected_image, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(batch["label"][row], expected_label)


def test_flips_are_horizontal_and_about_half(rng):
    examples = _examples(rng, 4, sizes=((16, 16),))
    flipped = 0
    for batch in itertools.islice(_train(examples, crop_size=16, scale_range=(1, 1)), 16):
        for image, label in zip(batch["image"], batch["label"], strict=True):
            match = [
                i
                for i, ex in enumerate(examples)
                if np.array_equal(label, ex["label"]) or np.array_equal(label, ex["label"][:, ::-1])
            ]
            assert len(match) == 1
            reference = examples[match[0]]
            is_flipped = not np.array_equal(label, reference["label"])
            expected = _normalised(
                reference["image"][:, ::-1] if is_flipped else reference["image"]
            )
            np.testing.assert_allclose(image, expected, atol=1e-5)
            flipped += is_flipped
    assert 16 <= flipped <= 48  # of 64, binomial(64, 1/2) within +-4 sigma


def test_random_crops_are_windows_of_the_image(rng):
    examples = _examples(rng, 3, sizes=((30, 28),))
    for batch in itertools.islice(
        _train(examples, crop_size=12, scale_range=(1, 1), flip=False), 4
    ):
        for image, label in zip(batch["image"], batch["label"], strict=True):
            found = [
                (ex, top, left)
                for ex in examples
                for top in range(30 - 12 + 1)
                for left in range(28 - 12 + 1)
                if np.array_equal(label, ex["label"][top : top + 12, left : left + 12])
            ]
            assert len(found) == 1
            ex, top, left = found[0]
            np.testing.assert_allclose(
                image, _normalised(ex["image"][top : top + 12, left : left + 12]), atol=1e-5
            )


@pytest.mark.parametrize("factor", [2, 3])
def test_integer_upscaling_repeats_label_pixels(rng, factor):
    examples = _examples(rng, 2, sizes=((9, 7),))
    size = 9 * factor
    batch = next(
        _train(examples, batch_size=2, crop_size=size, scale_range=(factor, factor), flip=False)
    )
    fn = _batch_fn(examples, batch_size=2)
    for row, index in enumerate(fn.example_indices(0)):
        label = examples[index]["label"]
        expected = np.full((size, size), 255)
        expected[:, : 7 * factor] = np.repeat(np.repeat(label, factor, 0), factor, 1)
        np.testing.assert_array_equal(batch["label"][row], expected)


def test_label_transform_sees_the_augmented_label(rng):
    examples = _examples(rng, 5)
    transform = functools.partial(blockwise.blockwise_annotation_numpy, band_limit=2, num_classes=5)
    plain = list(itertools.islice(_train(examples), 3))
    weak = list(itertools.islice(_train(examples, label_transform=transform), 3))
    for x, y in zip(plain, weak, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(y["label"], np.stack([transform(lb) for lb in x["label"]]))
        assert not np.array_equal(x["label"], y["label"])


@pytest.mark.parametrize("num_epochs,expected", [(1, 1), (2, 3), (3, 5)])
def test_num_epochs_stops_after_whole_batches(rng, num_epochs, expected):
    examples = _examples(rng, 7)
    batches = list(_train(examples, num_epochs=num_epochs, progress=True))
    assert len(batches) == expected == (num_epochs * 7) // 4


@pytest.mark.parametrize("batch_size,crop_size", [(2, None), (3, 32), (4, None)])
def test_eval_sees_every_example_once(rng, batch_size, crop_size):
    examples = _examples(rng, 7)
    batches = list(
        data.eval_batches(examples, batch_size=batch_size, crop_size=crop_size, mean=MEAN, std=STD)
    )
    assert len(batches) == -(-7 // batch_size)
    rows = [(b, r) for b, batch in enumerate(batches) for r in range(batch_size)]
    masks = np.concatenate([batch["mask"] for batch in batches])
    assert masks.sum() == 7 and np.all(masks[:7]) and not np.any(masks[7:])
    valid_pixels = sum(int(np.sum(b["label"] != 255)) for b in batches)
    assert valid_pixels == sum(int(np.sum(ex["label"] != 255)) for ex in examples)
    for index, (b, r) in enumerate(rows):
        image, label = batches[b]["image"][r], batches[b]["label"][r]
        if index >= 7:
            assert np.all(label == 255) and np.all(image == 0)
            continue
        h, w = examples[index]["label"].shape
        if crop_size is not None:
            assert label.shape == (crop_size, crop_size)
        np.testing.assert_array_equal(label[:h, :w], examples[index]["label"])
        np.testing.assert_allclose(image[:h, :w], _normalised(examples[index]["image"]), atol=1e-5)
        assert np.all(label[h:] == 255) and np.all(label[:, w:] == 255)
        assert np.all(image[h:] == 0) and np.all(image[:, w:] == 0)


def test_eval_shards_and_too_small_crops(rng):
    examples = _examples(rng, 5)
    whole = list(data.eval_batches(examples, batch_size=4, crop_size=30, mean=MEAN, std=STD))
    halves = [
        list(
            data.eval_batches(
                examples,
                batch_size=4,
                crop_size=30,
                mean=MEAN,
                std=STD,
                shard_index=s,
                shard_count=2,
            )
        )
        for s in range(2)
    ]
    for step, batch in enumerate(whole):
        for key in ("image", "label", "mask"):
            joined = np.concatenate([halves[0][step][key], halves[1][step][key]])
            np.testing.assert_array_equal(joined, batch[key])
    with pytest.raises(ValueError, match="crop_size"):
        list(data.eval_batches(examples, batch_size=2, crop_size=20, mean=MEAN, std=STD))


def test_bad_arguments_raise(rng):
    examples = _examples(rng, 3)
    with pytest.raises(ValueError, match="divisible"):
        _train(examples, batch_size=3, shard_count=2)
    with pytest.raises(ValueError, match="shard_index"):
        _train(examples, shard_index=2, shard_count=2)
    with pytest.raises(ValueError, match="scale_range"):
        _train(examples, scale_range=(0, 1))
    with pytest.raises(ValueError, match="at least one"):
        _train([])
    with pytest.raises(ValueError, match="name"):
        data.dataset_info("imagenet")
    with pytest.raises(ValueError, match="preset"):
        data.dataset_info("synthetic_scenes")


def test_dataset_info():
    for name, count in [("voc_sbd", 21), ("cityscapes", 19), ("deepglobe_land_cover", 7)]:
        info = data.dataset_info(name)
        assert info.num_classes == count and info.ignore_index == 255
        assert info.mean == data.IMAGENET_MEAN and info.std == data.IMAGENET_STD
    info = data.dataset_info("synthetic_scenes/cityscapes_like")
    assert info.class_names == synthetic.CITYSCAPES_CLASSES
    # Normalising the images with it gives zero mean, unit std per channel.
    config = synthetic.preset("cityscapes_like")
    images = np.stack([synthetic.generate_example(config, "train", i)["image"] for i in range(32)])
    normalised = _normalised_with(images, info.mean, info.std).reshape(-1, 3)
    np.testing.assert_allclose(normalised.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(normalised.std(0), 1, atol=1e-9)


def _normalised_with(images, mean, std):
    return (images.astype(np.float64) / 255 - np.array(mean)) / np.array(std)


def test_load_split_builds_and_reads_the_embedded_set(tmp_path):
    config = synthetic.SyntheticScenesConfig(
        name="pascal_tiny", scene="pascal_like", image_size=33, num_train=6, num_validation=2
    )
    with pytest.raises(ValueError, match="not prepared"):
        data.load_split(
            "synthetic_scenes",
            "train",
            data_dir=str(tmp_path),
            build=False,
            builder_kwargs={"config": config},
        )
    source = data.load_split(
        "synthetic_scenes", "train", data_dir=str(tmp_path), builder_kwargs={"config": config}
    )
    assert len(source) == 6
    np.testing.assert_array_equal(
        source[4]["label"], synthetic.generate_example(config, "train", 4)["label"]
    )
    batch = next(_train(source, batch_size=2, crop_size=33))
    assert batch["image"].shape == (2, 33, 33, 3)
    valid = batch["label"] != 255
    assert valid.any() and np.all(batch["label"][valid] < 21)


@pytest.mark.slow
def test_grain_workers_give_the_same_stream(rng):
    examples = _examples(rng, 7)
    plain = list(itertools.islice(_train(examples, start_step=2), 3))
    workers = list(itertools.islice(_train(examples, start_step=2, worker_count=2), 3))
    for x, y in zip(plain, workers, strict=True):
        assert type(y["image"]) is np.ndarray
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
