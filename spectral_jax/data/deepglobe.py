"""DeepGlobe 2018 land cover classification (TFDS builder).

The paper's "DeepGlobe" data set (Sec. 3): "7 categories, 803 training images, which
are split into 701 and 102 images for training and validation". Only the challenge's
803 training images have public masks; the builder splits them into ``train`` (701)
and ``validation`` (102).

Classes. The 7 colours of the challenge's masks are 7 classes, in the challenge's
order: urban (0,255,255), agriculture (255,255,0), rangeland (255,0,255), forest
(0,255,0), water (0,0,255), barren (255,255,255), unknown (0,0,0). "Unknown" (clouds
and others) is class 6, not ignored, because the paper counts 7 categories (the
challenge's own score leaves it out); the label value 255 (ignore) never occurs.

Colours. The challenge says the mask values "may not be pure 0 and 255" and asks to
binarize each channel at 128: a channel value ``>= 128`` counts as 255 and ``< 128``
as 0 (values of exactly 128 are rare; ``> 128`` would differ only there). The eighth colour a binarized mask can hold, red
(255,0,0), is no class: a mask holding it is an error naming the file (we could not
check the 803 real masks for it).

Split. The paper does not publish its split. Ours is deterministic and independent
of any random-number library: the ``round(n * 102 / 803)`` ids (102 of the 803) with
the smallest SHA-256 digest of the id string (e.g. ``sha256(b"100694").hexdigest()``)
form ``validation``, the others ``train``; both are sorted by id.

Usage::

  builder = DeepglobeLandCover(data_dir="~/tensorflow_datasets")
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir="/data/deepglobe"),
  )
  val = tfds.data_source("deepglobe_land_cover", split="validation", data_dir="~/tensorflow_datasets")
  check_split_sizes(builder, INFO)  # Only for the full data: 701 / 102.
"""

from __future__ import annotations

import hashlib

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from spectral_jax._checks import IGNORE_INDEX
from spectral_jax.data import _builder_utils as utils

# (name, RGB colour) in class order.
CLASS_COLORS = (
    ("urban_land", (0, 255, 255)),
    ("agriculture_land", (255, 255, 0)),
    ("rangeland", (255, 0, 255)),
    ("forest_land", (0, 255, 0)),
    ("water", (0, 0, 255)),
    ("barren_land", (255, 255, 255)),
    ("unknown", (0, 0, 0)),
)
NUM_CLASSES = 7
CLASS_NAMES = tuple(name for name, _ in CLASS_COLORS)
NUM_LABELLED = 803
NUM_VAL = 102
SPLIT_SIZES = (("train", NUM_LABELLED - NUM_VAL), ("validation", NUM_VAL))
BINARIZE_THRESHOLD = 128

LAYOUT = """\
<manual_dir>/
  train/<id>_sat.jpg     803 RGB satellite images (2448x2448)
  train/<id>_mask.png    their RGB-coded masks
  (the challenge's valid/ and test/ folders have no masks and are not read)"""

_SAT_SUFFIX = "_sat.jpg"
_MASK_SUFFIX = "_mask.png"


def _color_code(red, green, blue):
    """Binarized colour -> 3-bit code ``4 R + 2 G + B``."""
    return (
        4 * (red >= BINARIZE_THRESHOLD)
        + 2 * (green >= BINARIZE_THRESHOLD)
        + (blue >= BINARIZE_THRESHOLD)
    )


# 3-bit code -> class; the one code no class has (red) maps to a marker.
_NOT_A_CLASS = 254
_CODE_TO_CLASS = np.full(8, _NOT_A_CLASS, dtype=np.uint8)
for _index, (_, _color) in enumerate(CLASS_COLORS):
    _CODE_TO_CLASS[_color_code(*_color)] = _index


class DeepglobeLandCover(utils.ManualSegmentationBuilder):
    """DeepGlobe land cover: 7 classes, 701 train / 102 validation of the 803 labelled images."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "701/102 split by SHA-256 of the id; masks binarized at 128."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the DeepGlobe land cover training data (the challenge's starting kit, or
Kaggle's "deepglobe-land-cover-classification-dataset") and place its train/ folder
in manual_dir:
{LAYOUT}"""
    LAYOUT = LAYOUT
    HOMEPAGE = "http://deepglobe.org/"
    CITATION = (
        "Demir et al., DeepGlobe 2018: A Challenge to Parse the Earth through Satellite "
        "Images, CVPR Workshops 2018."
    )

    def _find_splits(self, manual_dir):
        return find_sources(manual_dir)

    def _read_label(self, path):
        return utils.read_png_array(path, modes=("RGB",))

    def _to_classes(self, stored, *, path):
        return mask_to_label(stored, path=path)


def mask_to_label(mask: np.ndarray, *, path: epath.Path | str = "<mask>") -> np.ndarray:
    """Maps an RGB-coded mask to class indices, binarizing each channel at 128.

    Args:
      mask: ``uint8 [H, W, 3]`` RGB mask.
      path: the mask's file, named in errors.

    Returns:
      ``uint8 [H, W]`` class indices in ``[0, 7)`` (see :data:`CLASS_COLORS`).

    Raises:
      ValueError: naming ``path`` if ``mask`` is not ``[H, W, 3]`` or a pixel binarizes
        to red (255, 0, 0), the colour of no class.
    """
    if mask.ndim != 3 or mask.shape[-1] != 3:
        raise ValueError(f"Mask {path} has shape {mask.shape}, expected [H, W, 3].")
    code = _color_code(mask[..., 0], mask[..., 1], mask[..., 2])  # [H, W] in [0, 8)
    label = _CODE_TO_CLASS[code]
    bad = label == _NOT_A_CLASS
    if bad.any():
        first = tuple(int(v) for v in mask[bad][0])
        raise ValueError(
            f"Mask {path} has {int(bad.sum())} pixel(s) that binarize (at "
            f"{BINARIZE_THRESHOLD}) to red (255, 0, 0), which is no class, e.g. RGB {first}."
        )
    return label


def split_ids(ids: list[str]) -> dict[str, list[str]]:
    """Splits the labelled ids deterministically into ``train`` and ``validation``.

    The ``round(n * 102 / 803)`` ids with the smallest SHA-256 hex digest of the id's
    UTF-8 bytes form ``validation``; on the full 803 images that is 102 / 701.

    Args:
      ids: the ``n`` distinct image ids.

    Returns:
      ``{"train": sorted ids, "validation": sorted ids}``.
    """
    num_val = round(len(ids) * NUM_VAL / NUM_LABELLED)
    by_digest = sorted(ids, key=lambda i: hashlib.sha256(i.encode("utf-8")).hexdigest())
    val = set(by_digest[:num_val])
    return {
        "train": sorted(i for i in ids if i not in val),
        "validation": sorted(val),
    }


def find_sources(manual_dir: epath.Path) -> dict[str, list[tuple[str, epath.Path, epath.Path]]]:
    """Lists ``(id, image file, mask file)`` for each split.

    Args:
      manual_dir: the folder laid out as in :data:`LAYOUT`.

    Returns:
      ``{"train": [...], "validation": [...]}``, split by :func:`split_ids`.

    Raises:
      ValueError: naming a missing folder, a ``_sat.jpg`` without its ``_mask.png`` or
        the reverse, or an empty folder.
    """
    folder = utils.require_dir(manual_dir / "train", layout=LAYOUT)
    images = {p.name[: -len(_SAT_SUFFIX)]: p for p in folder.glob(f"*{_SAT_SUFFIX}")}
    masks = {p.name[: -len(_MASK_SUFFIX)]: p for p in folder.glob(f"*{_MASK_SUFFIX}")}
    for image_id in sorted(set(images) ^ set(masks)):
        missing = (
            folder / f"{image_id}{_MASK_SUFFIX}"
            if image_id in images
            else folder / f"{image_id}{_SAT_SUFFIX}"
        )
        raise ValueError(f"Expected file {missing} is missing. Expected layout:\n{LAYOUT}")
    if not images:
        raise ValueError(
            f"Folder {folder} holds no *{_SAT_SUFFIX} files. Expected layout:\n{LAYOUT}"
        )
    return {
        split: [(i, images[i], masks[i]) for i in ids]
        for split, ids in split_ids(sorted(images)).items()
    }


INFO = utils.RealDatasetInfo(
    name="deepglobe_land_cover",
    builder_class=DeepglobeLandCover,
    num_classes=NUM_CLASSES,
    ignore_index=IGNORE_INDEX,
    class_names=CLASS_NAMES,
    mean=utils.IMAGENET_MEAN,
    std=utils.IMAGENET_STD,
    split_sizes=SPLIT_SIZES,
)
