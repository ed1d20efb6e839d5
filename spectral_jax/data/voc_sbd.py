"""PASCAL VOC 2012 segmentation with the SBD augmented training set (TFDS builder).

The paper's "PASCAL" data set (Sec. 3): 21 classes (background and 20 objects), the
VOC 2012 segmentation set "augmented by the extra annotations from (Hariharan et al.
2011)", the Semantic Boundaries Dataset (SBD). As in DeepLab's ``train_aug``:

- ``train`` = (SBD train ∪ SBD val ∪ VOC 2012 train) minus VOC 2012 val:
  10582 images on the full data;
- ``validation`` = VOC 2012 val: 1449 images.

An image annotated by both VOC and SBD takes VOC's official annotation and VOC's
JPEG (as DeepLab's ``SegmentationClassAug`` copies the VOC labels over the SBD ones);
an SBD-only image takes SBD's ``cls/<id>.mat`` and ``img/<id>.jpg``.

Labels: VOC's ``SegmentationClass/<id>.png`` are palette PNGs whose palette *indices*
are the class indices (0 = background, 1..20 objects) and 255 marks the void border
around objects: the builder reads the indices, never the colours. SBD's
``cls/<id>.mat`` hold a struct ``GTcls`` whose field ``Segmentation`` is the
``[H, W]`` class-index map (values 0..20). Any other value is an error naming the file.

Usage::

  builder = VocSbd(data_dir="~/tensorflow_datasets")
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir="/data/voc"),
  )
  train = tfds.data_source("voc_sbd", split="train", data_dir="~/tensorflow_datasets")
  check_split_sizes(builder, INFO)  # Only for the full data: 10582 / 1449.
"""

from __future__ import annotations

import io

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from etils import epath

from spectral_jax._checks import IGNORE_INDEX
from spectral_jax.data import _builder_utils as utils

NUM_CLASSES = 21
CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
SPLIT_SIZES = (("train", 10582), ("validation", 1449))
# Sizes of the full source lists, used to check the train_aug logic on the full data.
_FULL_SOURCE_SIZES = {"sbd_train": 8498, "sbd_val": 2857, "voc_train": 1464, "voc_val": 1449}

_ALLOWED_LABELS = (*range(NUM_CLASSES), IGNORE_INDEX)

LAYOUT = """\
<manual_dir>/
  VOCdevkit/VOC2012/                      (VOCtrainval_11-May-2012.tar)
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png            palette PNGs, index = class, 255 = void
    ImageSets/Segmentation/train.txt      1464 ids
    ImageSets/Segmentation/val.txt        1449 ids
  benchmark_RELEASE/dataset/              (SBD, benchmark.tgz)
    img/<id>.jpg
    cls/<id>.mat                          struct GTcls, field Segmentation
    train.txt                             8498 ids
    val.txt                               2857 ids"""


class VocSbd(utils.ManualSegmentationBuilder):
    """PASCAL VOC 2012 + SBD (``train_aug``): 21 classes, 10582 train / 1449 validation."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "VOC 2012 val; train = SBD train+val ∪ VOC train − VOC val."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download VOCtrainval_11-May-2012.tar (http://host.robots.ox.ac.uk/pascal/VOC/voc2012/)
and SBD's benchmark.tgz
(http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/),
extract both into manual_dir:
{LAYOUT}"""
    LAYOUT = LAYOUT
    HOMEPAGE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/"
    CITATION = (
        "Everingham et al., The PASCAL Visual Object Classes Challenge: A Retrospective, "
        "IJCV 2015; Hariharan et al., Semantic Contours from Inverse Detectors, ICCV 2011."
    )

    def _find_splits(self, manual_dir):
        return find_sources(manual_dir)

    def _read_label(self, path):
        if path.suffix == ".mat":  # SBD
            return read_sbd_label(path)
        return utils.read_png_array(path, modes=("P", "L"))  # VOC: palette indices.

    def _to_classes(self, stored, *, path):
        # VOC and SBD store class indices already (255 = void): only check them.
        utils.check_label_values(stored, _ALLOWED_LABELS, path=path)
        return stored


def find_sources(manual_dir: epath.Path) -> dict[str, list[tuple[str, epath.Path, epath.Path]]]:
    """Lists ``(id, image file, label file)`` for each split, sorted by id.

    Args:
      manual_dir: the folder laid out as in :data:`LAYOUT`.

    Returns:
      ``{"train": [...], "validation": [...]}``.

    Raises:
      ValueError: naming a missing folder, list or file.
    """
    voc = utils.require_dir(manual_dir / "VOCdevkit" / "VOC2012", layout=LAYOUT)
    sbd = utils.require_dir(manual_dir / "benchmark_RELEASE" / "dataset", layout=LAYOUT)
    for folder in (voc / "JPEGImages", voc / "SegmentationClass", sbd / "img", sbd / "cls"):
        utils.require_dir(folder, layout=LAYOUT)
    lists = {
        "voc_train": utils.read_id_list(
            voc / "ImageSets" / "Segmentation" / "train.txt", layout=LAYOUT
        ),
        "voc_val": utils.read_id_list(
            voc / "ImageSets" / "Segmentation" / "val.txt", layout=LAYOUT
        ),
        "sbd_train": utils.read_id_list(sbd / "train.txt", layout=LAYOUT),
        "sbd_val": utils.read_id_list(sbd / "val.txt", layout=LAYOUT),
    }
    voc_train, voc_val = set(lists["voc_train"]), set(lists["voc_val"])
    sbd_ids = set(lists["sbd_train"]) | set(lists["sbd_val"])
    train_ids = sorted((sbd_ids | voc_train) - voc_val)
    if {name: len(set(ids)) for name, ids in lists.items()} == _FULL_SOURCE_SIZES:
        # On the full data the union must give DeepLab's train_aug list.
        expected = dict(SPLIT_SIZES)["train"]
        if len(train_ids) != expected:
            raise ValueError(
                f"The full VOC and SBD lists in {manual_dir} give {len(train_ids)} training "
                f"ids, expected {expected}."
            )

    def voc_item(image_id):
        return (
            image_id,
            _require(voc / "JPEGImages" / f"{image_id}.jpg", "VOC image"),
            _require(voc / "SegmentationClass" / f"{image_id}.png", "VOC label"),
        )

    def sbd_item(image_id):
        return (
            image_id,
            _require(sbd / "img" / f"{image_id}.jpg", "SBD image"),
            _require(sbd / "cls" / f"{image_id}.mat", "SBD label"),
        )

    return {
        "train": [voc_item(i) if i in voc_train else sbd_item(i) for i in train_ids],
        "validation": [voc_item(i) for i in sorted(voc_val)],
    }


def read_sbd_label(path: epath.Path) -> np.ndarray:
    """Reads SBD's ``GTcls.Segmentation`` class map from a ``cls/<id>.mat`` file.

    Args:
      path: the ``.mat`` file (MATLAB v5, as SBD ships).

    Returns:
      ``uint8 [H, W]`` class indices.

    Raises:
      ValueError: naming the file if it is not a MATLAB file with ``GTcls.Segmentation``
        of rank 2 and integer values in ``[0, 255]``.
    """
    try:
        contents = scipy.io.loadmat(io.BytesIO(path.read_bytes()), variable_names=["GTcls"])
    except (ValueError, TypeError, OSError) as error:
        raise ValueError(f"Cannot read SBD label file {path}: {error}") from error
    struct = contents.get("GTcls")
    if struct is None or struct.dtype.names is None or "Segmentation" not in struct.dtype.names:
        raise ValueError(f"SBD label file {path} has no struct GTcls with field Segmentation.")
    segmentation = np.asarray(struct["Segmentation"].flat[0])
    if segmentation.ndim != 2:
        raise ValueError(
            f"SBD label file {path}: GTcls.Segmentation has shape {segmentation.shape}, "
            "expected [H, W]."
        )
    if not np.issubdtype(segmentation.dtype, np.integer) and not np.all(
        segmentation == np.round(segmentation)
    ):
        raise ValueError(f"SBD label file {path}: GTcls.Segmentation holds non-integer values.")
    if segmentation.size and (segmentation.min() < 0 or segmentation.max() > 255):
        bad = segmentation[(segmentation < 0) | (segmentation > 255)]
        raise ValueError(
            f"Label file {path} holds value(s) {np.unique(bad).tolist()[:10]} outside [0, 255]."
        )
    return segmentation.astype(np.uint8)


def _require(path: epath.Path, what: str) -> epath.Path:
    return utils.require_file(path, what=what, layout=LAYOUT)


INFO = utils.RealDatasetInfo(
    name="voc_sbd",
    builder_class=VocSbd,
    num_classes=NUM_CLASSES,
    ignore_index=IGNORE_INDEX,
    class_names=CLASS_NAMES,
    mean=utils.IMAGENET_MEAN,
    std=utils.IMAGENET_STD,
    split_sizes=SPLIT_SIZES,
)
