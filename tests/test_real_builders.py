"""Tests of the VOC+SBD, Cityscapes and DeepGlobe builders on tiny fake trees.

Each builder is built with ``download_and_prepare(file_format="array_record")`` from a
tree written by ``tests/helpers/fake_trees.py`` and read back with ``tfds.data_source`` (no
TensorFlow). Split membership, label maps and pixels are compared with what was
written, the label maps through tables written here independently of the builders'.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import pathlib
import re
import sys

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds
from etils import epath

from spectral_jax.data import _builder_utils, cityscapes, deepglobe, voc_sbd
from tests.helpers import fake_trees

SPLITS = ("train", "validation")


def build(info, manual_dir: pathlib.Path, data_dir: pathlib.Path):
    builder = info.builder_class(data_dir=str(data_dir))
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)),
    )
    return builder


def read_all(builder, data_dir: pathlib.Path) -> dict[str, list[dict]]:
    """Every element of both splits, read by name through ``tfds.data_source``."""
    elements = {}
    for split in SPLITS:
        source = tfds.data_source(builder.name, split=split, data_dir=str(data_dir))
        elements[split] = [source[index] for index in range(len(source))]
    return elements


def by_file_name(elements: dict[str, list[dict]]) -> dict[str, tuple[str, dict]]:
    return {
        element["file_name"].decode(): (split, element)
        for split, split_elements in elements.items()
        for element in split_elements
    }


def decode_file(path: pathlib.Path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def check_element_format(element: dict) -> None:
    image, label = element["image"], element["label"]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    assert label.dtype == np.uint8 and label.shape == image.shape[:2]


def check_image(element: dict, example: fake_trees.FakeExample) -> None:
    """Exact against a PIL decode of the file; PNG exact and JPEG close to the pixels."""
    np.testing.assert_array_equal(element["image"], decode_file(example.image_file))
    if example.image_file.suffix == ".png":
        np.testing.assert_array_equal(element["image"], example.image)
    else:  # JPEG at quality 95, 4:4:4, of smooth images.
        error = np.abs(element["image"].astype(np.int64) - example.image.astype(np.int64))
        assert error.mean() < 2.0 and error.max() <= 16


# ---------------------------------------------------------------------------------------
# Prepared fake data sets, built once per module.


@pytest.fixture(scope="module")
def voc_built(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    expected = fake_trees.write_voc_sbd_tree(root / "manual", np.random.default_rng(1))
    builder = build(voc_sbd.INFO, root / "manual", root / "data")
    return builder, expected, read_all(builder, root / "data")


@pytest.fixture(scope="module")
def cityscapes_built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    expected = fake_trees.write_cityscapes_tree(root / "manual", np.random.default_rng(2))
    builder = build(cityscapes.INFO, root / "manual", root / "data")
    return builder, expected, read_all(builder, root / "data")


@pytest.fixture(scope="module")
def deepglobe_built(tmp_path_factory):
    root = tmp_path_factory.mktemp("deepglobe")
    expected = fake_trees.write_deepglobe_tree(root / "manual", np.random.default_rng(3))
    builder = build(deepglobe.INFO, root / "manual", root / "data")
    return builder, expected, read_all(builder, root / "data")


# ---------------------------------------------------------------------------------------
# PASCAL VOC + SBD.


def test_voc_sbd_splits_follow_train_aug_rule(voc_built):
    builder, expected, elements = voc_built
    voc_train, voc_val = set(fake_trees.VOC_TRAIN), set(fake_trees.VOC_VAL)
    sbd = set(fake_trees.SBD_TRAIN) | set(fake_trees.SBD_VAL)
    train_ids = sorted((voc_train | sbd) - voc_val)
    # The fake tree has each overlap case; the rule keeps 6 of 9 ids for train.
    kept = "2007_000032 2007_000039 2008_000002 2008_000003 2008_000005 2009_000001"
    assert train_ids == kept.split()
    names = {split: [e["file_name"].decode() for e in elements[split]] for split in SPLITS}
    # VOC-annotated ids (2008_000002 is also in SBD) come from VOC, the rest from SBD.
    assert names["train"] == [
        f"VOCdevkit/VOC2012/JPEGImages/{i}.jpg"
        if i in voc_train
        else f"benchmark_RELEASE/dataset/img/{i}.jpg"
        for i in train_ids
    ]
    assert names["validation"] == [f"VOCdevkit/VOC2012/JPEGImages/{i}.jpg" for i in sorted(voc_val)]
    assert {s: builder.info.splits[s].num_examples for s in SPLITS} == {
        "train": 6,
        "validation": 2,
    }


def test_voc_sbd_labels_and_images_match_the_files(voc_built):
    _, expected, elements = voc_built
    found = by_file_name(elements)
    assert len(found) == len(expected)
    for example in expected.values():
        split, element = found[example.file_name]
        assert split == example.split
        check_element_format(element)
        # VOC and SBD store class indices: the label is the stored map, 255 kept.
        np.testing.assert_array_equal(element["label"], example.raw_label)
        check_image(element, example)
    # The id in both VOC train and SBD train has VOC's label, which has a void border.
    assert (found["VOCdevkit/VOC2012/JPEGImages/2008_000002.jpg"][1]["label"] == 255).any()


def test_voc_sbd_info():
    info = voc_sbd.INFO
    assert info.num_classes == 21 and info.ignore_index == 255
    assert info.class_names[0] == "background" and info.class_names[15] == "person"
    assert dict(info.split_sizes) == {"train": 10582, "validation": 1449}
    np.testing.assert_allclose(info.mean, [0.485, 0.456, 0.406])  # [0, 1] scale
    np.testing.assert_allclose(info.std, [0.229, 0.224, 0.225])


@pytest.mark.parametrize("module", [voc_sbd, cityscapes, deepglobe])
def test_info_without_module_docstring(module, monkeypatch, tmp_path):
    # `python -OO` strips docstrings; the description is the docstring's first paragraph.
    described = module.INFO.builder_class(data_dir=str(tmp_path / "described")).info
    assert described.description == module.__doc__.split("\n\n")[0]
    monkeypatch.setattr(module, "__doc__", None)
    builder = module.INFO.builder_class(data_dir=str(tmp_path / "stripped"))
    assert builder.info.description == ""


def test_check_split_sizes(voc_built):
    builder, _, _ = voc_built
    with pytest.raises(ValueError, match="train: expected 10582, found 6"):
        _builder_utils.check_split_sizes(builder, voc_sbd.INFO)
    fake_info = dataclasses.replace(voc_sbd.INFO, split_sizes=(("train", 6), ("validation", 2)))
    assert _builder_utils.check_split_sizes(builder, fake_info) == {"train": 6, "validation": 2}


def _write_full_size_lists(root: pathlib.Path, *, train_in_sbd: int) -> None:
    """Id lists of the real sizes: SBD 8498 + 2857, VOC train 1464, VOC val 1449.

    All VOC val ids are SBD ids and ``train_in_sbd`` VOC train ids are too; the real
    lists give 10582 = 11355 - 1449 + (1464 - train_in_sbd) for ``train_in_sbd = 788``.
    """
    sbd_ids = [f"2008_{i:06d}" for i in range(8498 + 2857)]
    voc_val = sbd_ids[:1449]
    voc_train = sbd_ids[1449 : 1449 + train_in_sbd] + [
        f"2007_{i:06d}" for i in range(1464 - train_in_sbd)
    ]
    voc = root / "VOCdevkit" / "VOC2012"
    sbd = root / "benchmark_RELEASE" / "dataset"
    for folder in (voc / "JPEGImages", voc / "SegmentationClass", sbd / "img", sbd / "cls"):
        folder.mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    for path, ids in (
        (voc / "ImageSets" / "Segmentation" / "train.txt", voc_train),
        (voc / "ImageSets" / "Segmentation" / "val.txt", voc_val),
        (sbd / "train.txt", sbd_ids[:8498]),
        (sbd / "val.txt", sbd_ids[8498:]),
    ):
        path.write_text("\n".join(ids) + "\n")


def test_voc_sbd_full_lists_must_give_10582(tmp_path):
    _write_full_size_lists(tmp_path / "bad", train_in_sbd=700)
    with pytest.raises(ValueError, match="give 10670 training ids, expected 10582"):
        voc_sbd.find_sources(epath.Path(tmp_path / "bad"))
    # With the real overlap the count check passes; the first missing file stops it.
    _write_full_size_lists(tmp_path / "good", train_in_sbd=788)
    with pytest.raises(ValueError, match=r"Expected VOC image .*/2007_000000\.jpg is missing"):
        voc_sbd.find_sources(epath.Path(tmp_path / "good"))


# ---------------------------------------------------------------------------------------
# Cityscapes.

# The official table, written as train id -> label ids; all other ids are ignored.
CITYSCAPES_TRAIN_CLASSES = {
    "road": (0, 7),
    "sidewalk": (1, 8),
    "building": (2, 11),
    "wall": (3, 12),
    "fence": (4, 13),
    "pole": (5, 17),
    "traffic light": (6, 19),
    "traffic sign": (7, 20),
    "vegetation": (8, 21),
    "terrain": (9, 22),
    "sky": (10, 23),
    "person": (11, 24),
    "rider": (12, 25),
    "car": (13, 26),
    "truck": (14, 27),
    "bus": (15, 28),
    "train": (16, 31),
    "motorcycle": (17, 32),
    "bicycle": (18, 33),
}


def reference_train_ids(label_ids: np.ndarray) -> np.ndarray:
    train_ids = np.full(label_ids.shape, 255, dtype=np.uint8)
    for train_id, label_id in CITYSCAPES_TRAIN_CLASSES.values():
        train_ids[label_ids == label_id] = train_id
    return train_ids


def test_cityscapes_splits_labels_and_images(cityscapes_built):
    builder, expected, elements = cityscapes_built
    found = by_file_name(elements)
    assert sorted(found) == sorted(e.file_name for e in expected.values())
    assert {s: builder.info.splits[s].num_examples for s in SPLITS} == {
        "train": 4,
        "validation": 2,
    }
    for example in expected.values():
        split, element = found[example.file_name]
        assert split == example.split
        check_element_format(element)
        np.testing.assert_array_equal(element["label"], reference_train_ids(example.raw_label))
        check_image(element, example)
    # Every label id 0..33 was written, so every train id and the ignore value occur.
    train_labels = np.concatenate([e["label"].ravel() for e in elements["train"]])
    assert set(np.unique(train_labels).tolist()) == set(range(19)) | {255}


def test_cityscapes_info():
    info = cityscapes.INFO
    assert info.num_classes == 19 and info.ignore_index == 255
    assert info.class_names == tuple(CITYSCAPES_TRAIN_CLASSES)
    assert dict(info.split_sizes) == {"train": 2975, "validation": 500}
    assert cityscapes.CityscapesFine.name == "cityscapes_fine"


# ---------------------------------------------------------------------------------------
# DeepGlobe.

DEEPGLOBE_COLORS = {  # RGB -> class, in the challenge's order.
    (0, 255, 255): 0,
    (255, 255, 0): 1,
    (255, 0, 255): 2,
    (0, 255, 0): 3,
    (0, 0, 255): 4,
    (255, 255, 255): 5,
    (0, 0, 0): 6,
}


def reference_deepglobe_label(mask: np.ndarray) -> np.ndarray:
    binary = np.where(mask > 127, 255, 0)
    label = np.full(mask.shape[:2], 254, dtype=np.uint8)
    for color, index in DEEPGLOBE_COLORS.items():
        label[np.all(binary == color, axis=-1)] = index
    assert (label != 254).all()
    return label


def reference_deepglobe_validation(ids) -> list[str]:
    count = round(len(ids) * 102 / 803)
    return sorted(
        sorted(ids, key=lambda i: int(hashlib.sha256(i.encode()).hexdigest(), 16))[:count]
    )


def test_deepglobe_splits_labels_and_images(deepglobe_built):
    builder, expected, elements = deepglobe_built
    ids = list(expected)
    validation = reference_deepglobe_validation(ids)
    assert len(validation) == 2  # round(16 * 102 / 803)
    names = {split: [e["file_name"].decode() for e in elements[split]] for split in SPLITS}
    assert names["validation"] == [f"train/{i}_sat.jpg" for i in validation]
    assert names["train"] == [f"train/{i}_sat.jpg" for i in sorted(set(ids) - set(validation))]
    found = by_file_name(elements)
    for example in expected.values():
        _, element = found[example.file_name]
        check_element_format(element)
        np.testing.assert_array_equal(
            element["label"], reference_deepglobe_label(example.raw_label)
        )
        check_image(element, example)
    labels = np.concatenate([e["label"].ravel() for split in SPLITS for e in elements[split]])
    assert set(np.unique(labels).tolist()) == set(range(7))


@pytest.mark.parametrize("num_ids", [803, 57, 8])
def test_deepglobe_split_ids_sizes(num_ids):
    ids = [str(1000 + 37 * i) for i in range(num_ids)]
    split = deepglobe.split_ids(ids)
    assert split["validation"] == reference_deepglobe_validation(ids)
    assert split["train"] == sorted(set(ids) - set(split["validation"]))
    if num_ids == 803:
        assert (len(split["train"]), len(split["validation"])) == (701, 102)


def test_deepglobe_mask_to_label_thresholds_at_128():
    channel = np.array([0, 127, 128, 255], dtype=np.uint8)
    red, green, blue = np.meshgrid(channel, channel, channel, indexing="ij")
    mask = np.stack([red, green, blue], axis=-1).reshape(1, -1, 3)  # every combination
    is_red = (mask[0, :, 0] >= 128) & (mask[0, :, 1] < 128) & (mask[0, :, 2] < 128)
    label = deepglobe.mask_to_label(mask[:, ~is_red])
    np.testing.assert_array_equal(label, reference_deepglobe_label(mask[:, ~is_red]))
    with pytest.raises(ValueError, match=r"some/file_mask\.png.*red \(255, 0, 0\)"):
        deepglobe.mask_to_label(mask, path="some/file_mask.png")


def test_deepglobe_info():
    info = deepglobe.INFO
    assert info.num_classes == 7 and info.ignore_index == 255
    assert info.class_names[-1] == "unknown" and len(info.class_names) == 7
    assert dict(info.split_sizes) == {"train": 701, "validation": 102}


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA"])
def test_read_image_converts_other_modes_to_rgb(mode, tmp_path, rng):
    pixels = fake_trees.smooth_image(rng, 17, 22)
    image = PIL.Image.fromarray(pixels).convert(mode)
    path = tmp_path / ("image.png" if mode == "RGBA" else "image.jpg")
    image.save(path)
    data, size = _builder_utils.read_image(epath.Path(path))
    assert size == (17, 22)
    with PIL.Image.open(path) as source:
        expected = np.asarray(source.convert("RGB"))
    with PIL.Image.open(io.BytesIO(data)) as stored:
        assert stored.mode == "RGB" and stored.format == "PNG"
        np.testing.assert_array_equal(np.asarray(stored), expected)


WRITERS = {
    "voc_sbd": (voc_sbd, fake_trees.write_voc_sbd_tree),
    "cityscapes": (cityscapes, fake_trees.write_cityscapes_tree),
    "deepglobe_land_cover": (deepglobe, fake_trees.write_deepglobe_tree),
}


@pytest.mark.parametrize("explicit_manual_dir", [False, True])
@pytest.mark.parametrize("name", ["voc_sbd", "cityscapes", "deepglobe_land_cover"])
def test_pipeline_registry_reads_the_builders(name, explicit_manual_dir, tmp_path, rng):
    from spectral_jax.data import pipeline

    module, writer = WRITERS[name]
    # Without manual_dir, load_split builds from TFDS's default <data_dir>/downloads/manual.
    manual_dir = tmp_path / "elsewhere" if explicit_manual_dir else None
    expected = writer(manual_dir or tmp_path / "data" / "downloads" / "manual", rng)
    info = pipeline.dataset_info(name)
    assert info.class_names == module.INFO.class_names
    assert info.num_classes == module.INFO.num_classes
    assert info.ignore_index == module.INFO.ignore_index == 255
    np.testing.assert_allclose(info.mean, module.INFO.mean)
    np.testing.assert_allclose(info.std, module.INFO.std)
    source = pipeline.load_split(
        name,
        "validation",
        data_dir=str(tmp_path / "data"),
        manual_dir=None if manual_dir is None else str(manual_dir),
    )
    names = sorted(source[i]["file_name"].decode() for i in range(len(source)))
    if name == "deepglobe_land_cover":
        assert names == [f"train/{i}_sat.jpg" for i in reference_deepglobe_validation(expected)]
    else:
        assert names == sorted(e.file_name for e in expected.values() if e.split == "validation")


def test_no_tensorflow_needed(voc_built, cityscapes_built, deepglobe_built):
    """The builds and reads above ran without TensorFlow."""
    assert importlib.util.find_spec("tensorflow") is None
    assert "tensorflow" not in sys.modules


# ---------------------------------------------------------------------------------------
# Bad data: every error names the file or folder at fault.


def _size_of(path):
    with PIL.Image.open(path) as image:
        return image.height, image.width


def _voc_tree(root):
    fake_trees.write_voc_sbd_tree(root, np.random.default_rng(4))
    return root


def _voc_bad_png_value(root):
    path = _voc_tree(root) / "VOCdevkit/VOC2012/SegmentationClass/2007_000039.png"
    label = np.zeros(_size_of(path), dtype=np.uint8)
    label[3, 4] = 30
    fake_trees.write_palette_png(path, label)
    return path, r"value\(s\) \[30\] in 1 pixel\(s\); allowed values are 0-20, 255\."


def _voc_bad_mat_value(root):
    path = _voc_tree(root) / "benchmark_RELEASE/dataset/cls/2008_000003.mat"
    label = np.zeros(_size_of(root / "benchmark_RELEASE/dataset/img/2008_000003.jpg"), np.uint8)
    label[0, 0] = 21
    fake_trees.write_sbd_mat(path, label)
    return path, r"value\(s\) \[21\]"


def _voc_mat_without_gtcls(root):
    import scipy.io

    path = _voc_tree(root) / "benchmark_RELEASE/dataset/cls/2008_000003.mat"
    scipy.io.savemat(path, {"GTinst": {"Segmentation": np.zeros((17, 22), np.uint8)}})
    return path, "no struct GTcls"


def _voc_size_mismatch(root):
    path = _voc_tree(root) / "VOCdevkit/VOC2012/SegmentationClass/2007_000033.png"
    fake_trees.write_palette_png(path, np.zeros((5, 22), dtype=np.uint8))
    return path, "is 5x22"


def _voc_rgb_label(root):
    path = _voc_tree(root) / "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png"
    fake_trees.write_png(path, np.zeros((17, 23, 3), dtype=np.uint8))
    return path, "mode 'RGB'"


def _voc_missing_sbd(root):
    path = _voc_tree(root) / "benchmark_RELEASE"
    for file in sorted(path.rglob("*"), reverse=True):
        file.rmdir() if file.is_dir() else file.unlink()
    path.rmdir()
    return path / "dataset", "Expected folder .* is missing.*benchmark_RELEASE/dataset/"


def _voc_missing_label_file(root):
    path = _voc_tree(root) / "benchmark_RELEASE/dataset/cls/2009_000001.mat"
    path.unlink()
    return path, "Expected SBD label .* is missing"


def _voc_truncated_jpeg(root):
    path = _voc_tree(root) / "benchmark_RELEASE/dataset/img/2008_000005.jpg"
    path.write_bytes(path.read_bytes()[:100])
    return path, "Cannot decode image"


def _cityscapes_tree(root):
    fake_trees.write_cityscapes_tree(root, np.random.default_rng(5))
    return root


def _cityscapes_bad_label_id(root):
    path = (
        _cityscapes_tree(root) / "gtFine/val/frankfurt/frankfurt_000005_000020_gtFine_labelIds.png"
    )
    label_ids = np.full(_size_of(path), 7, dtype=np.uint8)
    label_ids[1, 1] = 34
    fake_trees.write_png(path, label_ids)
    return path, r"value\(s\) \[34\]"


def _cityscapes_missing_label(root):
    path = _cityscapes_tree(root) / "gtFine/train/bochum/bochum_000002_000019_gtFine_labelIds.png"
    path.unlink()
    return path, "Expected label file .* is missing"


def _cityscapes_size_mismatch(root):
    path = _cityscapes_tree(root) / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    fake_trees.write_png(path, np.zeros((17, 24), dtype=np.uint8))
    return path, "is 17x24"


def _cityscapes_truncated_label(root):
    path = (
        _cityscapes_tree(root) / "gtFine/val/frankfurt/frankfurt_000004_000019_gtFine_labelIds.png"
    )
    path.write_bytes(path.read_bytes()[:60])
    return path, "Cannot decode label file"


def _cityscapes_missing_split(root):
    path = _cityscapes_tree(root) / "gtFine" / "val"
    for file in sorted(path.rglob("*"), reverse=True):
        file.rmdir() if file.is_dir() else file.unlink()
    path.rmdir()
    return path, "Expected folder .* is missing.*gtFine/\\{train,val\\}"


def _deepglobe_tree(root):
    fake_trees.write_deepglobe_tree(root, np.random.default_rng(6))
    return root


def _deepglobe_red_pixel(root):
    path = _deepglobe_tree(root) / "train/3344_mask.png"
    mask = np.zeros((16, 22, 3), dtype=np.uint8)
    mask[4, 5] = (200, 100, 30)
    fake_trees.write_png(path, mask)
    return path, r"binarize .* to red"


def _deepglobe_missing_mask(root):
    path = _deepglobe_tree(root) / "train/119_mask.png"
    path.unlink()
    return path, "Expected file .* is missing"


def _deepglobe_size_mismatch(root):
    path = _deepglobe_tree(root) / "train/55_mask.png"
    fake_trees.write_png(path, np.zeros((16, 21, 3), dtype=np.uint8))
    return path, "is 16x21"


def _deepglobe_gray_mask(root):
    path = _deepglobe_tree(root) / "train/2718_mask.png"
    fake_trees.write_png(path, np.zeros((17, 23), dtype=np.uint8))
    return path, "mode 'L'"


BAD_TREES = {
    "voc_png_value_30": (voc_sbd, _voc_bad_png_value),
    "sbd_mat_value_21": (voc_sbd, _voc_bad_mat_value),
    "sbd_mat_without_gtcls": (voc_sbd, _voc_mat_without_gtcls),
    "voc_size_mismatch": (voc_sbd, _voc_size_mismatch),
    "voc_rgb_label": (voc_sbd, _voc_rgb_label),
    "voc_missing_sbd_folder": (voc_sbd, _voc_missing_sbd),
    "voc_missing_label_file": (voc_sbd, _voc_missing_label_file),
    "voc_truncated_jpeg": (voc_sbd, _voc_truncated_jpeg),
    "cityscapes_label_id_34": (cityscapes, _cityscapes_bad_label_id),
    "cityscapes_missing_label": (cityscapes, _cityscapes_missing_label),
    "cityscapes_size_mismatch": (cityscapes, _cityscapes_size_mismatch),
    "cityscapes_missing_split": (cityscapes, _cityscapes_missing_split),
    "cityscapes_truncated_label": (cityscapes, _cityscapes_truncated_label),
    "deepglobe_red_pixel": (deepglobe, _deepglobe_red_pixel),
    "deepglobe_missing_mask": (deepglobe, _deepglobe_missing_mask),
    "deepglobe_size_mismatch": (deepglobe, _deepglobe_size_mismatch),
    "deepglobe_gray_mask": (deepglobe, _deepglobe_gray_mask),
}


@pytest.mark.parametrize("case", list(BAD_TREES))
def test_bad_data_error_names_the_file(case, tmp_path):
    module, corrupt = BAD_TREES[case]
    path, detail = corrupt(tmp_path / "manual")
    with pytest.raises(ValueError) as error:
        build(module.INFO, tmp_path / "manual", tmp_path / "data")
    message = str(error.value)
    assert str(path) in message
    assert re.search(detail, message, flags=re.DOTALL), message


@pytest.mark.parametrize("module", [voc_sbd, cityscapes, deepglobe])
@pytest.mark.parametrize("create", [False, True], ids=["missing", "empty"])
def test_missing_or_empty_manual_dir(module, create, tmp_path):
    manual_dir = tmp_path / "nothing_here"
    if create:
        manual_dir.mkdir()
    with pytest.raises(ValueError) as error:
        build(module.INFO, manual_dir, tmp_path / "data")
    message = str(error.value)
    assert "manual_dir" in message and str(manual_dir) in message
    assert module.LAYOUT in message
