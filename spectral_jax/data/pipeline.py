"""Sources and input pipeline: random-access TFDS splits to augmented NumPy batches.

**Sources.** :func:`load_split` opens a split as a random-access source
(``tfds.data_source`` over ArrayRecord files: ``len(source)``, ``source[i]``), building it
first when missing. :func:`dataset_info` gives the classes and the normalisation.

**Training stream.** :func:`train_batches` is a pure function of ``(seed, step)``: batch
``k`` holds the examples at stream positions ``p = k B .. k B + B - 1``; position ``p``
is example ``perm_e[p mod N]`` of epoch ``e = p // N`` (``perm_e`` drawn from
``default_rng((seed, 0, e))``) and is augmented with ``default_rng((seed, 1, p))``. So

* the stream is the same on every machine and for any sharding: host ``s`` of ``S`` gets
  rows ``[s B/S, (s+1) B/S)`` of every global batch;
* ``start_step=k`` yields exactly batches ``k, k+1, ...`` without touching the first ``k``
  (a training loop restores it from its checkpointed step);
* epochs follow each other without a gap (a batch may straddle two epochs), and
  ``num_epochs=n`` stops after ``floor(n N / B)`` batches.

Augmentation (DeepLab's): scale by ``s ~ U(scale_range)`` (bilinear image, nearest
label), pad to at least ``crop_size`` at the bottom and right (image: the mean colour,
i.e. 0 after normalisation; label: ``ignore_index``), take a uniformly random
``crop_size`` window, flip horizontally with probability 1/2, then normalise
``(image / 255 - mean) / std`` and apply ``label_transform`` (e.g. block-wise annotation,
:func:`spectral_jax.blockwise.blockwise_annotation_numpy`) to the label crop.

**Evaluation stream.** :func:`eval_batches` yields every example once, in order, padded
at the bottom and right to a common size (label: ``ignore_index``); the last batch is
filled with all-ignore examples (``mask`` False), so that summed IoU terms over the
batches give the split's exact mIoU.

Why no grain in the default path: the stream is an explicit function of the step, so
resuming needs no iterator state, and with ``worker_count=0`` (tests, notebooks) the
pipeline is a plain generator with no absl flags or ``__main__`` guard to worry about.
``worker_count > 0`` maps the same batch function over the steps with
``grain.MapDataset(...).to_iter_dataset().mp_prefetch(...)`` (worker processes, batch
order kept); grain is then needed, and the caller needs a ``__main__`` guard (absl flags
that nobody parsed are marked parsed, with their defaults).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
import tqdm
from absl import flags

from spectral_jax import parallel
from spectral_jax._checks import IGNORE_INDEX as IGNORE_INDEX
from spectral_jax.data import cityscapes, deepglobe, synthetic, voc_sbd
from spectral_jax.data._builder_utils import IMAGENET_MEAN as IMAGENET_MEAN
from spectral_jax.data._builder_utils import IMAGENET_STD as IMAGENET_STD

Batch = dict[str, np.ndarray]
LabelTransform = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------------------
# Data set descriptions and sources.


@dataclasses.dataclass(frozen=True)
class SegmentationDatasetInfo:
    """What a model and a metric need to know about a segmentation data set.

    Attributes:
      name: the TFDS name (``"synthetic_scenes/pascal_like"``, ``"voc_sbd"``, ...).
      class_names: ``C`` class names, index = label value.
      ignore_index: label of pixels that are not scored.
      mean, std: per-channel RGB normalisation on the ``[0, 1]`` scale
        (``(image / 255 - mean) / std``).
    """

    name: str
    class_names: tuple[str, ...]
    ignore_index: int = IGNORE_INDEX
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# The module of each builder (importing it registered the builder with TFDS).
_BUILDER_MODULES = {
    "synthetic_scenes": synthetic,
    "voc_sbd": voc_sbd,
    "cityscapes": cityscapes,
    "deepglobe_land_cover": deepglobe,
}


def _split_name(name: str) -> tuple[str, str | None]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a data set name such as 'voc_sbd', got {name!r}.")
    base, _, config = name.partition("/")
    if base not in _BUILDER_MODULES:
        raise ValueError(f"name must start with one of {tuple(_BUILDER_MODULES)}, got {name!r}.")
    return base, (config or None)


@functools.cache
def _synthetic_normalisation(
    config_name: str,
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std of the first 32 training images of a synthetic preset."""
    config = synthetic.preset(config_name)
    count = min(32, config.num_train)
    pixels = np.stack(
        [synthetic.generate_example(config, "train", i)["image"] for i in range(count)]
    )
    pixels = pixels.reshape(-1, 3).astype(np.float64) / 255.0

    def rgb(values: np.ndarray) -> tuple[float, float, float]:
        red, green, blue = (float(x) for x in values)
        return red, green, blue

    return rgb(pixels.mean(0)), rgb(pixels.std(0))


def _real_info(base: str):
    """The ``INFO`` (:class:`spectral_jax.data._builder_utils.RealDatasetInfo`) of a real set."""
    return _BUILDER_MODULES[base].INFO


def dataset_info(name: str) -> SegmentationDatasetInfo:
    """Classes, ignore label and normalisation of a data set.

    Synthetic presets are normalised with the mean and std of their first 32 training
    images (computed from the generator, no build needed); the real data sets as their
    builder modules' ``INFO`` says (ImageNet's statistics, as their ImageNet-pretrained
    backbones expect).

    Args:
      name: ``"synthetic_scenes/<preset>"``, ``"voc_sbd"``, ``"cityscapes"`` or
        ``"deepglobe_land_cover"`` (a ``/config`` suffix on a real set is accepted).

    Raises:
      ValueError: for an unknown name or preset.
    """
    base, config = _split_name(name)
    if base == "synthetic_scenes":
        if config is None:
            raise ValueError(
                f"name must name a preset, e.g. 'synthetic_scenes/pascal_like', got {name!r}."
            )
        mean, std = _synthetic_normalisation(config)
        return SegmentationDatasetInfo(
            name=name, class_names=synthetic.preset(config).class_names, mean=mean, std=std
        )
    info = _real_info(base)
    return SegmentationDatasetInfo(
        name=name,
        class_names=tuple(info.class_names),
        ignore_index=int(info.ignore_index),
        mean=tuple(info.mean),
        std=tuple(info.std),
    )


def load_split(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    build: bool = True,
    builder_kwargs: dict[str, Any] | None = None,
    manual_dir: str | None = None,
):
    """Random-access source of a split: ``tfds.data_source`` over ArrayRecord files.

    Elements are ``{"image": uint8 [H, W, 3], "label": uint8 [H, W]}``.

    Args:
      name: TFDS name with config, e.g. ``"synthetic_scenes/pascal_like"`` or ``"voc_sbd"``.
      split: split name (``"train"``, ``"validation"``, TFDS slicing such as ``"train[:10]"``).
      data_dir: TFDS data directory (default: TFDS's, ``$TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``).
      build: build the data set (``download_and_prepare(file_format="array_record")``)
        when it is missing. With several processes (``jax.distributed``) process 0
        builds it while the others wait (:func:`spectral_jax.parallel.create_once`):
        every process must then call this function.
      builder_kwargs: passed to ``tfds.builder`` (e.g. ``config=SyntheticScenesConfig(...)``,
        which replaces the ``/config`` part of ``name``).
      manual_dir: where a real data set's downloaded files are (see the builder module's
        ``LAYOUT``); default TFDS's ``<data_dir>/downloads/manual``.

    Returns:
      A random-access source: ``len(source)``, ``source[i]``.

    Raises:
      ValueError: for an unknown name, or a data set that is missing while ``build=False``.
    """
    base, config = _split_name(name)
    # A real set's TFDS name may differ from ours (TFDS ships a builder called
    # "cityscapes"; ours is "cityscapes_fine").
    module = _BUILDER_MODULES[base]
    tfds_name = module.INFO.builder_class.name if hasattr(module, "INFO") else base
    kwargs = dict(builder_kwargs or {})
    if config is not None and "config" not in kwargs:
        tfds_name = f"{tfds_name}/{config}"
    builder = tfds.builder(tfds_name, data_dir=data_dir, **kwargs)
    if not build:
        if not builder.is_prepared():
            raise ValueError(
                f"data set {name!r} is not prepared in {builder.data_dir}; pass build=True "
                "or prepare it first."
            )
        return builder.as_data_source(split=split)

    def prepare():
        download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        builder.download_and_prepare(file_format="array_record", download_config=download_config)

    # Several processes: process 0 builds a missing data set while the others wait.
    parallel.create_once(f"load_split: prepare {tfds_name}", builder.is_prepared, prepare)
    # A fresh builder: another process may have prepared the data set after this one
    # was created.
    builder = tfds.builder(tfds_name, data_dir=data_dir, **kwargs)
    return builder.as_data_source(split=split)


#: Decoded bytes a :class:`DecodedExampleCache` keeps per source by default: all of a small
#: split (the embedded scenes' 300 training examples are 20 MB), a bounded share of a
#: large one (PASCAL VOC's 10,582 decoded training images are about 8 GB).
DECODED_CACHE_BYTES = 512 * 2**20


class DecodedExampleCache:
    """A random-access source that keeps the examples it has decoded, up to a byte budget.

    A TFDS data source decodes the PNGs of an example at every read, which costs more
    than the augmentation itself for the embedded 129 x 129 scenes (a training run reads
    each example ``steps * B / N`` times). The cache returns the same arrays, marked
    read-only, for every later read; examples past the budget are decoded at each read as
    before. The stream is unchanged: the cache only decides where an example comes from.
    Pickled (for grain's worker processes) without its contents.

    Args:
      source: a random-access source (``len(source)``, ``source[i]`` a dict of arrays).
      max_bytes: the decoded bytes to keep (``>= 0``).
    """

    def __init__(self, source, max_bytes: int = DECODED_CACHE_BYTES):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}.")
        self._source = source
        self._max_bytes = int(max_bytes)
        self._examples: dict[int, dict[str, Any]] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        cached = self._examples.get(index)
        if cached is not None:
            return cached
        example = self._source[index]
        size = sum(np.asarray(value).nbytes for value in example.values())
        if self._bytes + size <= self._max_bytes:
            example = {key: _read_only(value) for key, value in example.items()}
            self._examples[index] = example
            self._bytes += size
        return example

    def __getstate__(self) -> dict[str, Any]:
        return {
            "_source": self._source,
            "_max_bytes": self._max_bytes,
            "_examples": {},
            "_bytes": 0,
        }


def _read_only(value: Any) -> Any:
    """A read-only view of an array (the source's own array keeps its flags)."""
    if not isinstance(value, np.ndarray):
        return value
    view = value.view()
    view.flags.writeable = False
    return view


# ---------------------------------------------------------------------------------------
# Per-example processing.


def _normalise(image: np.ndarray, mean, std) -> np.ndarray:
    scale = 1.0 / (255.0 * np.asarray(std, np.float32))
    shift = np.asarray(mean, np.float32) / np.asarray(std, np.float32)
    return image.astype(np.float32) * scale - shift  # (image / 255 - mean) / std


def _check_example(example, position) -> tuple[np.ndarray, np.ndarray]:
    image, label = np.asarray(example["image"]), np.asarray(example["label"])
    if image.ndim != 3 or image.shape[-1] != 3 or label.shape != image.shape[:2]:
        raise ValueError(
            f"example {position} must hold image [H, W, 3] and label [H, W], got shapes "
            f"{image.shape} and {label.shape}."
        )
    return image, label


def _augment_example(
    image: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
    *,
    crop_size: int,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """Random scale, padded random crop, random flip and normalisation of one example.

    Draws, in this order: the scale, the crop's top and left offsets, the flip coin (all
    four always, so the stream does not depend on the settings' branches).

    Args:
      image: uint8 ``[H, W, 3]``.
      label: integer ``[H, W]``.
      rng: the example's generator.
      crop_size: side of the output crop.
      scale_range: ``(low, high)`` of the uniform scale factor.
      flip: whether to flip (horizontally, with probability 1/2).
      mean, std: normalisation on the ``[0, 1]`` scale.
      ignore_index: label of the padding.

    Returns:
      ``(image, label)``: float32 ``[crop, crop, 3]`` and int32 ``[crop, crop]``.
    """
    low, high = scale_range
    factor = rng.uniform(low, high)
    height, width = label.shape
    new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
    if (new_h, new_w) != (height, width):
        image = np.asarray(
            PIL.Image.fromarray(image).resize((new_w, new_h), PIL.Image.Resampling.BILINEAR)
        )
        label = np.asarray(
            PIL.Image.fromarray(label.astype(np.uint8)).resize(
                (new_w, new_h), PIL.Image.Resampling.NEAREST
            )
        )
    # Offsets of the crop window in the bottom/right-padded map.
    top = int(rng.integers(0, max(new_h, crop_size) - crop_size + 1))
    left = int(rng.integers(0, max(new_w, crop_size) - crop_size + 1))
    flipped = bool(rng.random() < 0.5) and flip
    out_image = np.zeros((crop_size, crop_size, 3), np.float32)  # the mean colour
    out_label = np.full((crop_size, crop_size), ignore_index, np.int32)
    rows, cols = min(new_h - top, crop_size), min(new_w - left, crop_size)
    window = (slice(top, top + rows), slice(left, left + cols))
    out_image[:rows, :cols] = _normalise(image[window], mean, std)
    out_label[:rows, :cols] = label[window]
    if flipped:
        out_image, out_label = out_image[:, ::-1], out_label[:, ::-1]
    return out_image, out_label


# ---------------------------------------------------------------------------------------
# Training stream.


def _check_shards(batch_size: int, shard_index: int, shard_count: int) -> int:
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ValueError(
            f"shard_index must lie in [0, shard_count) with shard_count >= 1, got "
            f"shard_index={shard_index}, shard_count={shard_count}."
        )
    if batch_size % shard_count:
        raise ValueError(f"batch_size={batch_size} must be divisible by shard_count={shard_count}.")
    return batch_size // shard_count


@dataclasses.dataclass(frozen=True)
class TrainBatchFn:
    """Batch ``step`` of the training stream (picklable, for worker processes)."""

    source: Any
    num_examples: int
    batch_size: int
    crop_size: int
    seed: int
    scale_range: tuple[float, float]
    flip: bool
    mean: tuple[float, ...]
    std: tuple[float, ...]
    ignore_index: int
    label_transform: LabelTransform | None
    shard_index: int
    shard_count: int

    def permutation(self, epoch: int) -> np.ndarray:
        """``[N]`` order of the examples in ``epoch``."""
        return _permutation(self.seed, epoch, self.num_examples)

    def positions(self, step: int) -> np.ndarray:
        """Stream positions of this host's rows of global batch ``step``."""
        local = self.batch_size // self.shard_count
        first = step * self.batch_size + self.shard_index * local
        return np.arange(first, first + local, dtype=np.int64)

    def example_indices(self, step: int) -> np.ndarray:
        """Source indices of this host's rows of batch ``step``."""
        positions = self.positions(step)
        epochs, offsets = np.divmod(positions, self.num_examples)
        return np.array(
            [self.permutation(int(e))[o] for e, o in zip(epochs, offsets, strict=True)], np.int64
        )

    def __call__(self, step: int) -> Batch:
        images, labels = [], []
        for position, index in zip(self.positions(step), self.example_indices(step), strict=True):
            image, label = _check_example(self.source[int(index)], int(index))
            rng = np.random.default_rng((self.seed, 1, int(position)))
            image, label = _augment_example(
                image,
                label,
                rng,
                crop_size=self.crop_size,
                scale_range=self.scale_range,
                flip=self.flip,
                mean=self.mean,
                std=self.std,
                ignore_index=self.ignore_index,
            )
            if self.label_transform is not None:
                label = np.asarray(self.label_transform(label), np.int32)
                if label.shape != (self.crop_size, self.crop_size):
                    raise ValueError(
                        "label_transform must keep the label's shape "
                        f"{(self.crop_size, self.crop_size)}, got {label.shape}."
                    )
            images.append(image)
            labels.append(label)
        return {"image": np.stack(images), "label": np.stack(labels)}


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    return np.random.default_rng((seed, 0, epoch)).permutation(num_examples)


def _progress(iterator: Iterator[Batch], total: int | None, desc: str) -> Iterator[Batch]:
    yield from tqdm.tqdm(iterator, total=total, desc=desc, unit="batch")


def _grain_iterator(batch_fn: Callable[[int], Batch], steps: range, worker_count: int):
    import grain  # An optional extra (spectral_jax[data]), needed for worker_count > 0 only.

    # grain's workers read absl flags; outside an absl app (a script, a notebook) nobody
    # parsed them, so take their defaults.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()

    dataset = grain.MapDataset.range(steps.start, steps.stop).map(batch_fn)
    iterator = iter(
        dataset.to_iter_dataset().mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count)
        )
    )
    # The workers' batches arrive in shared memory; plain copies free it at once (instead
    # of at interpreter exit, where grain's finaliser fails noisily).
    for batch in iterator:
        yield {key: np.array(value) for key, value in batch.items()}


def train_batches(
    source,
    *,
    batch_size: int,
    crop_size: int,
    seed: int,
    start_step: int = 0,
    scale_range: tuple[float, float] = (0.5, 2.0),
    flip: bool = True,
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int = IGNORE_INDEX,
    label_transform: LabelTransform | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    worker_count: int = 0,
    num_epochs: int | None = None,
    progress: bool = False,
) -> Iterator[Batch]:
    """Augmented training batches, shuffled per epoch, deterministic in ``(seed, step)``.

    See the module docstring for the stream, the augmentation and the sharding.

    Args:
      source: random-access source of ``{"image", "label"}`` examples (:func:`load_split`).
      batch_size: global batch size ``B`` (over all shards).
      crop_size: side of the square crops.
      seed: non-negative seed of the shuffles and the augmentation.
      start_step: first batch to yield (the training loop's restored step).
      scale_range: ``(low, high)`` of the random scale factor.
      flip: random horizontal flips.
      mean, std: normalisation on the ``[0, 1]`` scale (:func:`dataset_info`).
      ignore_index: label of the crop padding.
      label_transform: NumPy function ``[crop, crop] -> [crop, crop]`` applied to each
        augmented label (e.g. block-wise annotation). Must be picklable for workers.
      shard_index, shard_count: this host's share: rows ``[s B/S, (s+1) B/S)``.
      worker_count: 0 computes batches in this process; ``> 0`` uses that many grain
        worker processes (needs grain and a ``__main__`` guard in the caller).
      num_epochs: stop after ``floor(num_epochs * N / B)`` batches (None: never stop).
      progress: show a progress bar (tqdm).

    Yields:
      ``{"image": float32 [B/S, crop, crop, 3], "label": int32 [B/S, crop, crop]}``.

    Raises:
      ValueError: for an empty source, bad sizes, seed, shards or ranges.
    """
    num_examples = len(source)
    if num_examples < 1:
        raise ValueError("source must hold at least one example.")
    _check_shards(batch_size, shard_index, shard_count)
    if crop_size < 1:
        raise ValueError(f"crop_size must be positive, got {crop_size}.")
    if seed < 0 or start_step < 0 or worker_count < 0:
        raise ValueError(
            f"seed, start_step and worker_count must be non-negative, got {seed}, "
            f"{start_step}, {worker_count}."
        )
    if not 0 < scale_range[0] <= scale_range[1]:
        raise ValueError(
            f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}."
        )
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"mean and std must be 3 values, std positive; got {mean}, {std}.")
    batch_fn = TrainBatchFn(
        source=DecodedExampleCache(source),
        num_examples=num_examples,
        batch_size=batch_size,
        crop_size=int(crop_size),
        seed=int(seed),
        scale_range=(float(scale_range[0]), float(scale_range[1])),
        flip=bool(flip),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        ignore_index=int(ignore_index),
        label_transform=label_transform,
        shard_index=int(shard_index),
        shard_count=int(shard_count),
    )
    total = None if num_epochs is None else (int(num_epochs) * num_examples) // batch_size
    if worker_count > 0:
        # grain needs a finite range; 2**62 steps is "forever".
        steps = range(start_step, total if total is not None else 2**62)
        batches = _grain_iterator(batch_fn, steps, worker_count)
    else:
        steps_iter = itertools.count(start_step) if total is None else range(start_step, total)
        batches = map(batch_fn, steps_iter)
    if progress:
        remaining = None if total is None else max(total - start_step, 0)
        batches = _progress(batches, remaining, "train batches")
    return batches


# ---------------------------------------------------------------------------------------
# Evaluation stream.


def eval_batches(
    source,
    *,
    batch_size: int,
    crop_size: int | None,
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int = IGNORE_INDEX,
    label_transform: LabelTransform | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    progress: bool = False,
) -> Iterator[Batch]:
    """Every example exactly once, in order, padded to a common size.

    Images are normalised and padded at the bottom and right with 0 (the mean colour);
    labels with ``ignore_index``. The last batch is completed with all-ignore examples.

    Args:
      source: random-access source of ``{"image", "label"}`` examples.
      batch_size: global batch size ``B``.
      crop_size: pad every example to ``crop_size x crop_size`` (one compiled shape); an
        example larger than that raises. None: pad each batch to its largest example
        (one shape when the split's images share a size, as the synthetic ones do).
      mean, std: normalisation on the ``[0, 1]`` scale.
      ignore_index: label of the padding.
      label_transform: NumPy function applied to each (unpadded) label.
      shard_index, shard_count: this host's rows ``[s B/S, (s+1) B/S)`` of each batch.
      progress: show a progress bar (tqdm).

    Yields:
      ``{"image": float32 [B/S, h, w, 3], "label": int32 [B/S, h, w],
      "mask": bool [B/S]}``; ``mask`` is False on the filling examples.

    Raises:
      ValueError: for an empty source, bad sizes or shards, or an example larger than
        ``crop_size``.
    """
    num_examples = len(source)
    if num_examples < 1:
        raise ValueError("source must hold at least one example.")
    local = _check_shards(batch_size, shard_index, shard_count)
    if crop_size is not None and crop_size < 1:
        raise ValueError(f"crop_size must be positive or None, got {crop_size}.")
    num_batches = -(-num_examples // batch_size)

    def batches() -> Iterator[Batch]:
        for step in range(num_batches):
            first = step * batch_size + shard_index * local
            indices = [i for i in range(first, first + local) if i < num_examples]
            examples = [_check_example(source[i], i) for i in indices]
            if label_transform is not None:
                examples = [(im, np.asarray(label_transform(lb))) for im, lb in examples]
            if crop_size is not None:
                height = width = crop_size
                for index, (im, _) in zip(indices, examples, strict=True):
                    if im.shape[0] > crop_size or im.shape[1] > crop_size:
                        raise ValueError(
                            f"example {index} of shape {im.shape} is larger than "
                            f"crop_size={crop_size}; evaluation must see every pixel."
                        )
            else:
                sizes = [im.shape[:2] for im, _ in examples] or [(1, 1)]
                height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
            images = np.zeros((local, height, width, 3), np.float32)
            labels = np.full((local, height, width), ignore_index, np.int32)
            mask = np.zeros((local,), bool)
            for row, (image, label) in enumerate(examples):
                h, w = label.shape
                images[row, :h, :w] = _normalise(image, mean, std)
                labels[row, :h, :w] = label
                mask[row] = True
            yield {"image": images, "label": labels, "mask": mask}

    iterator = batches()
    return _progress(iterator, num_batches, "eval batches") if progress else iterator
