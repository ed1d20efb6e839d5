"""Tiny fake copies of the real data sets' folders, in the real file formats.

Each ``write_*_tree`` writes a handful of small images (odd and even sizes) with known
contents under ``root`` and returns what it wrote: for every example, its split, the
file name the builder must report, the image pixels and the *raw* label as stored in
the source file (VOC/SBD class indices, Cityscapes label ids, DeepGlobe RGB mask). The
tests map the raw labels with their own tables. The ``write_*`` file helpers are also
used to plant bad files.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import PIL.Image
import scipy.io
import scipy.sparse


@dataclasses.dataclass(frozen=True)
class FakeExample:
    """One image and its raw label as written.

    Attributes:
      split: the split the builder must put it in.
      file_name: the image path relative to the tree's root.
      image: ``uint8 [H, W, 3]`` pixels before encoding.
      image_file: absolute path of the image file (for an exact PIL decode of a JPEG).
      raw_label: ``uint8 [H, W]`` stored label values, or ``[H, W, 3]`` for RGB masks.
      label_source: ``"voc"``, ``"sbd"``, ``"cityscapes"`` or ``"deepglobe"``.
    """

    split: str
    file_name: str
    image: np.ndarray
    image_file: pathlib.Path
    raw_label: np.ndarray
    label_source: str


# Odd and even heights and widths.
SIZES = ((17, 23), (16, 22), (17, 22), (16, 23))


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """``uint8 [H, W, 3]``: gradients plus mild noise, so that JPEG stays close."""
    y = np.linspace(0.0, 1.0, height)[:, None, None]
    x = np.linspace(0.0, 1.0, width)[None, :, None]
    phase = rng.uniform(0.0, 1.0, size=(1, 1, 3))
    base = 60.0 + 120.0 * (0.5 * y + 0.5 * x * phase) + 40.0 * phase
    noise = rng.integers(-3, 4, size=(height, width, 3))
    return np.clip(np.round(base + noise), 0, 255).astype(np.uint8)


def voc_palette() -> list[int]:
    """The 256-colour VOC palette (bit-interleaved class index), flat ``[768]``."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [red, green, blue]
    return palette


def write_jpeg(path: pathlib.Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(image).save(path, format="JPEG", quality=95, subsampling=0)


def write_png(path: pathlib.Path, image: np.ndarray) -> None:
    """Writes ``[H, W]`` as 8-bit gray (mode L) or ``[H, W, 3]`` as RGB."""
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(image).save(path, format="PNG")


def write_palette_png(path: pathlib.Path, indices: np.ndarray) -> None:
    """Writes ``uint8 [H, W]`` palette indices with the VOC palette (mode P)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = PIL.Image.fromarray(indices)
    image.putpalette(voc_palette())  # Turns mode L into mode P, indices unchanged.
    assert image.mode == "P"
    image.save(path, format="PNG")


def write_sbd_mat(path: pathlib.Path, segmentation: np.ndarray) -> None:
    """Writes an SBD ``cls/<id>.mat``: struct ``GTcls`` with ``Segmentation`` etc."""
    path.parent.mkdir(parents=True, exist_ok=True)
    boundaries = np.empty((20, 1), dtype=object)
    for category in range(20):
        boundaries[category, 0] = scipy.sparse.csc_matrix(segmentation == category + 1)
    present = np.unique(segmentation[(segmentation > 0) & (segmentation < 255)])
    scipy.io.savemat(
        path,
        {
            "GTcls": {
                "Boundaries": boundaries,
                "Segmentation": segmentation.astype(np.uint8),
                "CategoriesPresent": present.astype(np.uint8).reshape(-1, 1),
            }
        },
    )


def _write_list(path: pathlib.Path, ids) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def _voc_label(rng: np.random.Generator, height: int, width: int, *, border: bool):
    label = rng.integers(0, 21, size=(height, width), dtype=np.uint8)
    if border:  # VOC's void border: 255 on a ring of pixels.
        label[2, :] = 255
        label[:, 3] = 255
    return label


# The overlap cases of train_aug = (SBD train ∪ SBD val ∪ VOC train) - VOC val.
VOC_TRAIN = ("2007_000032", "2007_000039", "2008_000002")
VOC_VAL = ("2007_000033", "2007_000042")
SBD_TRAIN = ("2008_000002", "2007_000033", "2008_000003", "2009_000001")  # one of each overlap
SBD_VAL = ("2007_000042", "2008_000005")


def write_voc_sbd_tree(root: pathlib.Path, rng: np.random.Generator) -> dict[str, FakeExample]:
    """Writes ``VOCdevkit/VOC2012`` and ``benchmark_RELEASE/dataset`` under ``root``.

    ``2008_000002`` is in VOC train and SBD train with *different* labels (VOC's must
    win); ``2007_000033`` (SBD train) and ``2007_000042`` (SBD val) are VOC val images
    and must stay out of ``train``.

    Returns:
      ``{id: FakeExample}`` of the expected elements of both splits.
    """
    voc = root / "VOCdevkit" / "VOC2012"
    sbd = root / "benchmark_RELEASE" / "dataset"
    _write_list(voc / "ImageSets" / "Segmentation" / "train.txt", VOC_TRAIN)
    _write_list(voc / "ImageSets" / "Segmentation" / "val.txt", VOC_VAL)
    _write_list(sbd / "train.txt", SBD_TRAIN)
    _write_list(sbd / "val.txt", SBD_VAL)
    expected = {}
    all_ids = sorted(set(VOC_TRAIN) | set(VOC_VAL) | set(SBD_TRAIN) | set(SBD_VAL))
    for number, image_id in enumerate(all_ids):
        height, width = SIZES[number % len(SIZES)]
        in_voc = image_id in VOC_TRAIN or image_id in VOC_VAL
        in_sbd = image_id in SBD_TRAIN or image_id in SBD_VAL
        split = "validation" if image_id in VOC_VAL else "train"
        if in_sbd:
            image = smooth_image(rng, height, width)
            write_jpeg(sbd / "img" / f"{image_id}.jpg", image)
            label = _voc_label(rng, height, width, border=False)
            write_sbd_mat(sbd / "cls" / f"{image_id}.mat", label)
            expected[image_id] = FakeExample(
                split,
                f"benchmark_RELEASE/dataset/img/{image_id}.jpg",
                image,
                sbd / "img" / f"{image_id}.jpg",
                label,
                "sbd",
            )
        if in_voc:
            image = smooth_image(rng, height, width)
            write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", image)
            label = _voc_label(rng, height, width, border=True)
            write_palette_png(voc / "SegmentationClass" / f"{image_id}.png", label)
            expected[image_id] = FakeExample(  # VOC's annotation wins over SBD's.
                split,
                f"VOCdevkit/VOC2012/JPEGImages/{image_id}.jpg",
                image,
                voc / "JPEGImages" / f"{image_id}.jpg",
                label,
                "voc",
            )
    return expected


# Folder name -> cities; the "val" folder is the "validation" split.
CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}


def write_cityscapes_tree(root: pathlib.Path, rng: np.random.Generator) -> dict[str, FakeExample]:
    """Writes ``leftImg8bit/{train,val}`` and ``gtFine/{train,val}`` under ``root``.

    Every label id 0..33 occurs in the train split. Each ``gtFine`` folder also holds
    the other gtFine files (color, instanceIds, polygons) that the builder must skip.

    Returns:
      ``{"<city>/<city>_<seq>_<frame>": FakeExample}``.
    """
    expected = {}
    number = 0
    for folder, cities in CITIES.items():
        for city in cities:
            for frame in (19, 20):
                height, width = SIZES[number % len(SIZES)]
                stem = f"{city}_{number:06d}_{frame:06d}"
                image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
                label_ids = rng.integers(0, 34, size=(height, width), dtype=np.uint8)
                label_ids.flat[:34] = np.arange(34, dtype=np.uint8)
                image_file = root / "leftImg8bit" / folder / city / f"{stem}_leftImg8bit.png"
                write_png(image_file, image)
                label_dir = root / "gtFine" / folder / city
                write_png(label_dir / f"{stem}_gtFine_labelIds.png", label_ids)
                write_png(label_dir / f"{stem}_gtFine_instanceIds.png", label_ids)
                write_png(label_dir / f"{stem}_gtFine_color.png", image)
                (label_dir / f"{stem}_gtFine_polygons.json").write_text("{}")
                expected[f"{city}/{stem}"] = FakeExample(
                    "validation" if folder == "val" else "train",
                    f"leftImg8bit/{folder}/{city}/{stem}_leftImg8bit.png",
                    image,
                    image_file,
                    label_ids,
                    "cityscapes",
                )
                number += 1
    return expected


# DeepGlobe ids are random integers of varying length.
DEEPGLOBE_IDS = tuple(
    "100694 10452 119 207743 21717 3344 51911 6399 998002 4211 55 870123 31337 2718 16180 90001".split()
)
# Channel values that binarize to 255 and to 0 at the threshold 128, edges included.
HIGH_VALUES = np.array([128, 129, 200, 254, 255], dtype=np.uint8)
LOW_VALUES = np.array([0, 1, 60, 126, 127], dtype=np.uint8)


def write_deepglobe_tree(
    root: pathlib.Path, rng: np.random.Generator, *, ids=DEEPGLOBE_IDS
) -> dict[str, FakeExample]:
    """Writes ``train/<id>_sat.jpg`` and ``train/<id>_mask.png`` under ``root``.

    Masks are RGB with every channel perturbed away from 0/255 but on the right side
    of 128, as compressed masks are.

    Returns:
      ``{id: FakeExample}`` with ``split`` left ``""`` (the test computes the split
      independently) and ``raw_label`` the ``uint8 [H, W, 3]`` mask as written.
    """
    folder = root / "train"
    expected = {}
    for number, image_id in enumerate(ids):
        height, width = SIZES[number % len(SIZES)]
        image = smooth_image(rng, height, width)
        write_jpeg(folder / f"{image_id}_sat.jpg", image)
        bits = rng.integers(0, 2, size=(height, width, 3)).astype(bool)
        bits[..., 0] &= ~(~bits[..., 1] & ~bits[..., 2])  # No red: (1, 0, 0) -> (0, 0, 0).
        mask = np.where(
            bits,
            rng.choice(HIGH_VALUES, size=bits.shape),
            rng.choice(LOW_VALUES, size=bits.shape),
        ).astype(np.uint8)
        write_png(folder / f"{image_id}_mask.png", mask)
        expected[image_id] = FakeExample(
            "",
            f"train/{image_id}_sat.jpg",
            image,
            folder / f"{image_id}_sat.jpg",
            mask,
            "deepglobe",
        )
    return expected
