"""Cityscapes pixel-level semantic labelling, fine annotations (TFDS builder).

The paper's "Cityscapes" data set (Sec. 3): the 19 evaluation classes of the
Cityscapes benchmark, 2975 ``train`` and 500 ``validation`` images (2048x1024), read from the
downloaded ``train`` and ``val`` folders. The
``gtFine/<split>/<city>/*_gtFine_labelIds.png`` files hold the 34 label ids 0..33 of
Cityscapes' label table; they are mapped to the 19 train ids of the official table
(``cityscapesscripts/helpers/labels.py``), and every id without a train id (unlabeled,
ego vehicle, rectification border, out of roi, static, dynamic, ground, parking, rail
track, guard rail, bridge, tunnel, polegroup, caravan, trailer) becomes 255 = ignore.
A label id outside 0..33 is an error naming the file. The test split (no public
labels) and the coarse annotations are not read.

The builder's TFDS name is ``cityscapes_fine``: TFDS ships its own ``cityscapes``
builder, and two builders of one name cannot both be registered.

Usage::

  builder = CityscapesFine(data_dir="~/tensorflow_datasets")
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir="/data/cityscapes"),
  )
  val = tfds.data_source("cityscapes_fine", split="validation", data_dir="~/tensorflow_datasets")
  check_split_sizes(builder, INFO)  # Only for the full data: 2975 / 500.
"""

from __future__ import annotations

import tensorflow_datasets as tfds
from etils import epath

from spectral_jax._checks import IGNORE_INDEX
from spectral_jax.data import _builder_utils as utils

# (label id, name, train id) of the official label table; 255 = not evaluated.
LABEL_TABLE = (
    (0, "unlabeled", 255),
    (1, "ego vehicle", 255),
    (2, "rectification border", 255),
    (3, "out of roi", 255),
    (4, "static", 255),
    (5, "dynamic", 255),
    (6, "ground", 255),
    (7, "road", 0),
    (8, "sidewalk", 1),
    (9, "parking", 255),
    (10, "rail track", 255),
    (11, "building", 2),
    (12, "wall", 3),
    (13, "fence", 4),
    (14, "guard rail", 255),
    (15, "bridge", 255),
    (16, "tunnel", 255),
    (17, "pole", 5),
    (18, "polegroup", 255),
    (19, "traffic light", 6),
    (20, "traffic sign", 7),
    (21, "vegetation", 8),
    (22, "terrain", 9),
    (23, "sky", 10),
    (24, "person", 11),
    (25, "rider", 12),
    (26, "car", 13),
    (27, "truck", 14),
    (28, "bus", 15),
    (29, "caravan", 255),
    (30, "trailer", 255),
    (31, "train", 16),
    (32, "motorcycle", 17),
    (33, "bicycle", 18),
)
LABEL_ID_TO_TRAIN_ID = {label_id: train_id for label_id, _, train_id in LABEL_TABLE}
NUM_CLASSES = 19
CLASS_NAMES = tuple(
    name
    for _, name, train_id in sorted(LABEL_TABLE, key=lambda row: row[2])
    if train_id != IGNORE_INDEX
)
SPLIT_SIZES = (("train", 2975), ("validation", 500))

LAYOUT = """\
<manual_dir>/
  leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png  (leftImg8bit_trainvaltest.zip)
  gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png    (gtFine_trainvaltest.zip)"""

_IMAGE_SUFFIX = "_leftImg8bit.png"
_LABEL_SUFFIX = "_gtFine_labelIds.png"


class CityscapesFine(utils.ManualSegmentationBuilder):
    """Cityscapes gtFine: 19 train-id classes, 2975 train / 500 validation."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "gtFine train/val, label ids mapped to the 19 train ids."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Log in at https://www.cityscapes-dataset.com/downloads/, download
leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip and extract both into manual_dir:
{LAYOUT}"""
    LAYOUT = LAYOUT
    HOMEPAGE = "https://www.cityscapes-dataset.com/"
    CITATION = (
        "Cordts et al., The Cityscapes Dataset for Semantic Urban Scene Understanding, CVPR 2016."
    )

    def _find_splits(self, manual_dir):
        return {
            split: find_sources(manual_dir, folder)
            for split, folder in (("train", "train"), ("validation", "val"))
        }

    def _read_label(self, path):
        return utils.read_png_array(path, modes=("L", "P"))  # Label ids 0..33.

    def _to_classes(self, stored, *, path):
        return utils.remap_labels(stored, LABEL_ID_TO_TRAIN_ID, path=path)


def find_sources(manual_dir: epath.Path, folder: str) -> list[tuple[str, epath.Path, epath.Path]]:
    """Lists ``(key, image file, label file)`` of one split, sorted by city and frame.

    Args:
      manual_dir: the folder laid out as in :data:`LAYOUT`.
      folder: ``"train"`` or ``"val"``, the split's folder name.

    Returns:
      One entry per ``*_leftImg8bit.png``; the key is ``<city>/<city>_<seq>_<frame>``.

    Raises:
      ValueError: naming a missing folder or label file, or an empty split.
    """
    image_root = utils.require_dir(manual_dir / "leftImg8bit" / folder, layout=LAYOUT)
    label_root = utils.require_dir(manual_dir / "gtFine" / folder, layout=LAYOUT)
    items = []
    for image_path in sorted(image_root.glob(f"*/*{_IMAGE_SUFFIX}")):
        city = image_path.parent.name
        stem = image_path.name[: -len(_IMAGE_SUFFIX)]
        label_path = utils.require_file(
            label_root / city / f"{stem}{_LABEL_SUFFIX}", what="label file", layout=LAYOUT
        )
        items.append((f"{city}/{stem}", image_path, label_path))
    if not items:
        raise ValueError(
            f"Folder {image_root} holds no <city>/*{_IMAGE_SUFFIX} files. "
            f"Expected layout:\n{LAYOUT}"
        )
    return items


INFO = utils.RealDatasetInfo(
    name="cityscapes",
    builder_class=CityscapesFine,
    num_classes=NUM_CLASSES,
    ignore_index=IGNORE_INDEX,
    class_names=CLASS_NAMES,
    mean=utils.IMAGENET_MEAN,
    std=utils.IMAGENET_STD,
    split_sizes=SPLIT_SIZES,
)
