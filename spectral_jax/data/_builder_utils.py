"""Helpers shared by the builders of the real data sets (private).

The PASCAL VOC + SBD, Cityscapes and DeepGlobe builders read files that the user
downloaded by hand (TFDS's ``manual_dir``) and write ``array_record`` files that
``tfds.data_source`` reads without TensorFlow. Every element has the same features:

- ``image``: ``uint8 [H, W, 3]`` RGB, stored as the source file's own JPEG or PNG bytes
  (so that reading back gives exactly the pixels a PIL decode of the source gives);
- ``label``: ``uint8 [H, W]`` class indices, ``255`` = ignore, stored zlib-compressed;
- ``file_name``: the image's path relative to ``manual_dir`` (``bytes`` when read back
  through ``tfds.data_source``, as TFDS returns text features).

Bad data raise ``ValueError`` naming the offending file: a missing folder or file, an
image and label of different sizes, a label value outside the class set, an image or
label PIL cannot decode.
"""

from __future__ import annotations

import abc
import dataclasses
import io
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import ClassVar

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from etils import epath

from spectral_jax._checks import IGNORE_INDEX

# ImageNet's RGB statistics on the [0, 1] scale, as the pipeline normalises
# (``(image / 255 - mean) / std``); the backbones are pre-trained on ImageNet-1k.
# Defined here, below the builders, so that the pipeline can import the builder modules.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# One example's files, as a builder's ``find_sources`` lists them: (key, image, label).
Source = tuple[str, epath.Path, epath.Path]


@dataclasses.dataclass(frozen=True)
class RealDatasetInfo:
    """One real segmentation data set: its builder, classes, normalisation and sizes.

    ``pipeline.SegmentationDatasetInfo(name, class_names, ignore_index, mean, std)``
    holds the fields the pipeline reads; this adds the builder and the split sizes.

    Attributes:
      name: the data set's name in the registry of ``spectral_jax.data``.
      builder_class: the TFDS builder; ``builder_class.name`` is its TFDS name.
      num_classes: C, the number of classes; labels lie in ``[0, C)`` or are
        ``ignore_index``.
      ignore_index: the label value of pixels left out of the loss and the metrics.
      class_names: ``C`` names, in label order.
      mean: per-channel RGB mean on the ``[0, 1]`` scale (``(image / 255 - mean) / std``).
      std: per-channel RGB standard deviation on the ``[0, 1]`` scale.
      split_sizes: ``(split, number of examples)`` pairs of the full data set, checked
        by :func:`check_split_sizes`.
    """

    name: str
    builder_class: type[tfds.core.GeneratorBasedBuilder]
    num_classes: int
    ignore_index: int
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    split_sizes: tuple[tuple[str, int], ...]

    def __post_init__(self):
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(self.class_names)} names for num_classes={self.num_classes}."
            )
        if 0 <= self.ignore_index < self.num_classes:
            raise ValueError(
                f"ignore_index={self.ignore_index} is a class index for C={self.num_classes}."
            )


def check_split_sizes(builder: tfds.core.DatasetBuilder, info: RealDatasetInfo) -> dict[str, int]:
    """Checks that a prepared builder holds the full data set's split sizes.

    The builders accept any subset of the data (tests build tiny fake trees), so the
    sizes are checked only when asked, after ``download_and_prepare``.

    Args:
      builder: a prepared builder of ``info.builder_class``.
      info: the data set's :class:`RealDatasetInfo`.

    Returns:
      The split sizes found, ``{split: number of examples}``.

    Raises:
      ValueError: if a split is missing or its size differs from ``info.split_sizes``.
    """
    found = {name: split.num_examples for name, split in builder.info.splits.items()}
    wrong = [
        f"{split}: expected {size}, found {found.get(split, 'no such split')}"
        for split, size in info.split_sizes
        if found.get(split) != size
    ]
    if wrong:
        raise ValueError(
            f"{builder.name} in {builder.data_dir} is not the full {info.name} data set: "
            + "; ".join(wrong)
            + "."
        )
    return found


def segmentation_features() -> tfds.features.FeaturesDict:
    """The features of every real builder: image ``[H, W, 3]``, label ``[H, W]``, name."""
    return tfds.features.FeaturesDict(
        {
            # Only the dtype and channel count matter: the bytes are the source file's.
            "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8),
            "label": tfds.features.Tensor(
                shape=(None, None), dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB
            ),
            "file_name": tfds.features.Text(),
        }
    )


def resolve_manual_dir(dl_manager: tfds.download.DownloadManager, *, layout: str) -> epath.Path:
    """Returns the manual directory, or raises ``ValueError`` saying what to put there.

    Args:
      dl_manager: the builder's download manager.
      layout: the expected layout, quoted in the error.

    Raises:
      ValueError: if the manual directory is missing or empty.
    """
    try:
        return epath.Path(dl_manager.manual_dir)
    except AssertionError as error:  # TFDS asserts that the folder exists and is not empty.
        raise ValueError(
            f"manual_dir is missing or empty ({error.args[0].splitlines()[0]}). "
            f"Expected layout:\n{layout}"
        ) from error


def require_dir(path: epath.Path, *, layout: str) -> epath.Path:
    """Returns ``path`` if it is a folder; otherwise raises ``ValueError`` naming it."""
    if not path.is_dir():
        raise ValueError(f"Expected folder {path} is missing. Expected layout:\n{layout}")
    return path


def require_file(path: epath.Path, *, what: str, layout: str) -> epath.Path:
    """Returns ``path`` if it is a file; otherwise raises ``ValueError`` naming it."""
    if not path.is_file():
        raise ValueError(f"Expected {what} {path} is missing. Expected layout:\n{layout}")
    return path


def read_id_list(path: epath.Path, *, layout: str) -> list[str]:
    """Reads a list of image ids, one a line (blank lines skipped)."""
    require_file(path, what="id list", layout=layout)
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_image(path: epath.Path) -> tuple[bytes, tuple[int, int]]:
    """Reads an RGB image file for the ``image`` feature.

    The source bytes are kept when the file decodes to RGB (JPEG stays bit-exact JPEG);
    any other mode (grayscale, CMYK, RGBA) is converted to RGB and stored as PNG.

    Args:
      path: a JPEG or PNG file.

    Returns:
      ``(encoded bytes, (H, W))``.

    Raises:
      ValueError: naming the file if PIL cannot decode it.
    """
    data = path.read_bytes()
    try:
        with PIL.Image.open(io.BytesIO(data)) as image:
            image.load()  # Decode fully now, so a broken file fails here, named.
            if image.mode != "RGB":
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, format="PNG")
                data = buffer.getvalue()
            return data, (image.height, image.width)
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise ValueError(f"Cannot decode image {path}: {error}") from error


def read_png_array(path: epath.Path, *, modes: Sequence[str]) -> np.ndarray:
    """Reads a label PNG as stored, without any colour conversion.

    Args:
      path: the PNG file.
      modes: the PIL modes accepted (``"P"``: palette indices; ``"L"``: 8-bit gray;
        ``"RGB"``).

    Returns:
      ``uint8 [H, W]`` for ``"P"``/``"L"``, ``uint8 [H, W, 3]`` for ``"RGB"``: for a
      palette PNG, the palette indices (VOC stores the class index as the index).

    Raises:
      ValueError: naming the file if it cannot be decoded or its mode is not in ``modes``.
    """
    try:
        with PIL.Image.open(io.BytesIO(path.read_bytes())) as image:
            if image.mode not in modes:
                raise ValueError(
                    f"Label file {path} has PIL mode {image.mode!r}; expected one of "
                    f"{tuple(modes)}."
                )
            return np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, PIL.Image.DecompressionBombError) as error:
        raise ValueError(f"Cannot decode label file {path}: {error}") from error


def check_same_size(
    image_path: epath.Path, image_size: tuple[int, int], label_path: epath.Path, label: np.ndarray
) -> None:
    """Raises ``ValueError`` naming both files if image ``(H, W)`` != label ``[H, W]``."""
    if tuple(image_size) != tuple(label.shape[:2]):
        raise ValueError(
            f"Image {image_path} is {image_size[0]}x{image_size[1]} (HxW) but its label "
            f"{label_path} is {label.shape[0]}x{label.shape[1]}."
        )


def check_label_values(label: np.ndarray, allowed: Iterable[int], *, path: epath.Path) -> None:
    """Raises ``ValueError`` naming ``path`` if ``label`` holds a value not in ``allowed``."""
    allowed = np.asarray(sorted(allowed))
    bad = ~np.isin(label, allowed)
    if bad.any():
        values = np.unique(label[bad])
        raise ValueError(
            f"Label file {path} holds value(s) {values.tolist()[:10]} in {int(bad.sum())} "
            f"pixel(s); allowed values are {_ranges(allowed)}."
        )


def remap_labels(label: np.ndarray, table: Mapping[int, int], *, path: epath.Path) -> np.ndarray:
    """Maps source label values to class indices with a lookup table.

    Args:
      label: ``uint8 [H, W]`` source values.
      table: source value -> class index or ``IGNORE_INDEX``; every source value must
        be a key.
      path: the label file, named in errors.

    Returns:
      ``uint8 [H, W]`` class indices.

    Raises:
      ValueError: naming ``path`` if a value is not a key of ``table``.
    """
    check_label_values(label, table.keys(), path=path)
    lookup = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for source, target in table.items():
        lookup[source] = target
    return lookup[label]


# TFDS's registration hook takes skip_registration; untyped TFDS leaves it to object's.
class ManualSegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):  # type: ignore[call-arg]
    """Base of the real builders: files in ``manual_dir`` -> :func:`segmentation_features`.

    A subclass sets TFDS's ``VERSION``, ``RELEASE_NOTES`` and
    ``MANUAL_DOWNLOAD_INSTRUCTIONS``, and :attr:`LAYOUT`, :attr:`HOMEPAGE` and
    :attr:`CITATION`; it implements the data-set-specific steps :meth:`_find_splits`
    (which files form which split), :meth:`_read_label` (a label file as stored) and
    :meth:`_to_classes` (stored values -> class indices). The description is the first
    paragraph of the subclass's module docstring.

    Each example is read and checked in this order, so that the first problem met is
    the one reported: image file, label file, image and label sizes, label values.
    Examples keep the order :meth:`_find_splits` gives (``disable_shuffling``).

    The base is abstract and not registered with TFDS; each subclass is, under its
    class name in snake case.
    """

    LAYOUT: ClassVar[str]  # The expected layout of manual_dir, quoted in errors.
    HOMEPAGE: ClassVar[str]
    CITATION: ClassVar[str]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            # No docstring under `python -OO`.
            description=(sys.modules[type(self).__module__].__doc__ or "").split("\n\n")[0],
            features=segmentation_features(),
            supervised_keys=("image", "label"),
            # Keep the sorted order of the ids: source[split][i] is the i-th id.
            disable_shuffling=True,
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = resolve_manual_dir(dl_manager, layout=self.LAYOUT)
        return {
            split: self._generate_examples(sources, manual_dir)
            for split, sources in self._find_splits(manual_dir).items()
        }

    def _generate_examples(
        self, sources: Iterable[Source], manual_dir: epath.Path
    ) -> Iterator[tuple[str, dict]]:
        for key, image_path, label_path in sources:
            image, image_size = read_image(image_path)
            stored = self._read_label(label_path)
            check_same_size(image_path, image_size, label_path, stored)
            yield (
                key,
                {
                    "image": image,
                    "label": self._to_classes(stored, path=label_path),
                    "file_name": str(image_path.relative_to(manual_dir)),
                },
            )

    @abc.abstractmethod
    def _find_splits(self, manual_dir: epath.Path) -> dict[str, list[Source]]:
        """Lists each split's examples, ``{split: [(key, image file, label file), ...]}``.

        Raises:
          ValueError: naming a missing folder or file (with :attr:`LAYOUT`).
        """

    @abc.abstractmethod
    def _read_label(self, path: epath.Path) -> np.ndarray:
        """Reads a label file as stored: ``uint8 [H, W]`` or ``[H, W, 3]``.

        Raises:
          ValueError: naming ``path`` if it cannot be read.
        """

    @abc.abstractmethod
    def _to_classes(self, stored: np.ndarray, *, path: epath.Path) -> np.ndarray:
        """Maps a stored label to ``uint8 [H, W]`` class indices or ``IGNORE_INDEX``.

        Raises:
          ValueError: naming ``path`` if a stored value is no class and not ignored.
        """


def _ranges(values: np.ndarray) -> str:
    """``[0, 1, 2, 5, 255]`` -> ``"0-2, 5, 255"``."""
    parts = []
    start = previous = None
    for value in (int(v) for v in values):
        if previous is not None and value == previous + 1:
            previous = value
            continue
        if start is not None:
            parts.append(f"{start}" if start == previous else f"{start}-{previous}")
        start = previous = value
    if start is not None:
        parts.append(f"{start}" if start == previous else f"{start}-{previous}")
    return ", ".join(parts)
