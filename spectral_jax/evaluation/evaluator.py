"""The one evaluation loop: a model's metrics over an evaluation split.

:class:`Evaluator` runs a predict function ``apply_fn(variables, images) -> logits`` over
a stream of batches and returns an :class:`EvaluationResult`: the confusion matrix (IoU
per class, mIoU, pixel accuracy) and the mean cross-entropy, and on request

* the spectral statistics of the logits (:class:`spectral_jax.SpectralStatistics`: band
  profile, mean CE, Parseval error, ``R(nu_max)``), optionally with magnitude profiles;
* the boundary metrics of Chen, Gu, Fu (2024) on the unpadded images
  (:func:`spectral_jax.evaluation.boundary.valid_region_boundary_statistics`);
* the first ``num_examples`` images, labels and predictions;
* sums over the examples of any further per-example outputs of ``apply_fn`` (it may
  return ``{"logits": ..., "gates": [B, K], ...}``).

The trainer (:func:`spectral_jax.training.train_and_evaluate`) and every experiment
evaluate with it. One jitted step (:func:`eval_step`) does the forward pass and the
batch's sums; it is compiled once per predict function, settings, mesh and batch shape
and shared by all evaluators with those (short batches are padded, :func:`spectral_jax.
data.inputs.pad_batch`). The host adds up a batch's sums (int64 counts, float64 sums)
while the device computes the next batch. With a ``mesh`` the batch is split over its ``"data"`` axis and
the rest replicated (:mod:`spectral_jax.parallel`), as the trainer runs.

Several processes (``jax.distributed``, a mesh over all their devices): each process
passes its own rows of every global batch (``pipeline.eval_batches(B, process_index,
process_count)``) and every process gets the single-process result. The confusion
matrix, the loss, the boundary counts and the spectral statistics are summed over the
global batch inside the step; the example count and the output sums, summed by each
host over its rows, are added up across the processes at the end
(:func:`spectral_jax.parallel.sum_over_processes`); kept examples are gathered.

Example (a trained run, as the experiments evaluate it)::

  pipeline = spectral_jax.data.create_input_pipeline(config)
  model = spectral_jax.models.create_model(config.model, num_classes=pipeline.num_classes)
  variables = spectral_jax.training.load_variables(workdir)  # the latest checkpoint
  evaluator = Evaluator(
      inference_apply_fn(model),
      num_classes=pipeline.num_classes,
      ignore_index=pipeline.ignore_index,
      spectral_statistics=True,
      num_examples=4,
  )
  result = evaluator(variables, pipeline.eval_batches(config.eval_batch_size, 0, 1))
  result.mean_iou, result.relative_discrepancy_at[16], result.examples["prediction"]
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from spectral_jax import _checks, parallel
from spectral_jax._checks import IGNORE_INDEX
from spectral_jax.data.inputs import Batch, pad_batch
from spectral_jax.evaluation import boundary as boundary_lib
from spectral_jax.evaluation import metrics as metrics_lib
from spectral_jax.loss_spectrum import PARSEVAL_TOLERANCE, IgnoreMode, ParsevalWarning
from spectral_jax.related import boundary_metrics
from spectral_jax.statistics import SpectralStatistics

#: The band limits at which a result reports ``R(nu_max)`` (the paper's Table 1).
REPORTED_BAND_LIMITS = (8, 16, 32, 64)

#: ``apply_fn(variables, images [B, H, W, Ci]) -> logits [B, H, W, C]``, or a dict with
#: ``"logits"`` and further per-example outputs ``[B, ...]``.
ApplyFn = Callable[[Any, jax.Array], jax.Array | Mapping[str, jax.Array]]


@functools.cache
def inference_apply_fn(model: nn.Module, *, method: str | None = None) -> ApplyFn:
    """``model.apply(variables, images, train=False, method=method)``, one object per model.

    Equal models give the same function, so that their evaluators share one compiled
    step (a fresh ``functools.partial`` would compile again). The compiled step is
    keyed on the model, not on a Flax method interceptor active at the call (such as
    :func:`spectral_jax.models.anti_aliasing.insert_de_aliasing_filters`): evaluate a
    model with and without an interceptor through different ``apply_fn`` objects, or
    put the filter in the model (``config.model.downsample_filter``).

    Args:
      model: a Flax segmentation model whose call takes ``train``.
      method: the method to apply (``"intermediates"`` for a dict with ``"logits"``);
        None for ``__call__``.
    """
    # Flax types apply's result as (output, state) too, which only `mutable` gives.
    return functools.partial(model.apply, train=False, method=method)  # type: ignore[return-value]


def eval_step(
    variables: Any,
    batch: Batch,
    statistics: SpectralStatistics | None,
    *,
    apply_fn: ApplyFn,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
    boundary_metrics: bool = False,
) -> tuple[dict[str, Any], SpectralStatistics | None, dict[str, jax.Array]]:
    """Forward pass in inference mode; the batch's confusion matrix and loss sums.

    Pure: :class:`Evaluator` jits it with ``apply_fn`` and the settings bound.

    Args:
      variables: the model's variables (BatchNorm uses the running statistics).
      batch: ``{"image": [B, H, W, 3], "label": [B, H, W]}``; padded pixels and padded
        examples carry ``ignore_index``.
      statistics: spectral statistics of ``[H, W]`` maps to add the batch to, or None.
      apply_fn: the predict function (:data:`ApplyFn`).
      num_classes: ``C`` (static).
      ignore_index: label of pixels left out.
      boundary_metrics: static; also count the boundary metrics of Chen, Gu, Fu (2024)
        on the unpadded images (:func:`spectral_jax.evaluation.boundary.
        valid_region_boundary_statistics`).

    Raises:
      ValueError: when ``apply_fn``'s logits do not have ``num_classes`` classes.

    Returns:
      ``(sums, statistics, per_example)``: ``sums`` has ``confusion`` ``[C, C]`` int32,
      ``loss_sum`` (CE summed over the valid pixels), ``num_valid``,
      ``num_invalid_labels`` (labels outside ``[0, C)`` other than ``ignore_index``) and, with
      ``boundary_metrics``, ``boundary`` (:class:`spectral_jax.related.boundary_metrics.
      BoundaryStatistics`, ``[4, C]`` int32 counts); ``statistics`` updated;
      ``per_example`` the ``prediction`` ``[B, H, W]`` and the other outputs of
      ``apply_fn``.
    """
    images, labels = batch["image"], batch["label"]
    out = apply_fn(variables, images)
    if isinstance(out, Mapping):
        outputs = dict(out)
        logits = outputs.pop("logits")
    else:
        logits, outputs = out, {}
    if logits.ndim != 4 or logits.shape[-1] != num_classes:
        # The arg-max of a model with more classes would land in other classes' cells.
        raise ValueError(
            f"apply_fn must return logits [B, H, W, C] with C = num_classes = {num_classes}; "
            f"got logits of shape {logits.shape} for images of shape {images.shape}."
        )
    loss, num_valid = metrics_lib.cross_entropy_loss(logits, labels, ignore_index=ignore_index)
    predictions = jnp.argmax(logits, axis=-1)
    confusion = metrics_lib.confusion_matrix(
        predictions, labels, num_classes=num_classes, ignore_index=ignore_index
    )
    if statistics is not None:
        statistics = statistics.update(logits.astype(jnp.float32), labels)
    # A label outside [0, C) that is not ignore_index would be dropped from the confusion
    # matrix (mmseg counts its prediction in the union): counted here, refused on the host.
    invalid = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    sums: dict[str, Any] = {
        "confusion": confusion,
        "loss_sum": loss * num_valid,
        "num_valid": num_valid,
        "num_invalid_labels": jnp.sum(invalid),
    }
    if boundary_metrics:
        sums["boundary"] = boundary_lib.valid_region_boundary_statistics(
            predictions, labels, num_classes=num_classes, ignore_index=ignore_index
        )
    return sums, statistics, {"prediction": predictions, **outputs}


@dataclasses.dataclass(frozen=True, eq=False)
class EvaluationResult:
    """What an :class:`Evaluator` measured over a split.

    Attributes:
      confusion: ``[C, C]`` int64 pixel counts, rows true classes, columns predictions.
      loss: mean cross-entropy over the valid pixels of the split (NaN without any).
      num_evaluated: real examples evaluated (``"mask"`` True; padding left out).
      statistics: the :class:`spectral_jax.SpectralStatistics` of the logits (on the
        host), or None without ``spectral_statistics``.
      boundary_statistics: ``[4, C]`` int64 counts of the boundary metrics, or None.
      output_sums: per further output of ``apply_fn``, its float64 sum over the real
        examples (divide by ``num_evaluated`` for the mean).
      examples: the first ``num_examples`` real examples: ``"image"`` ``[N, H, W, 3]``,
        ``"label"`` ``[N, H, W]``, ``"prediction"`` ``[N, H, W]`` and the further outputs
        ``[N, ...]``; empty when none were asked for.
    """

    confusion: np.ndarray
    loss: float
    num_evaluated: int
    statistics: SpectralStatistics | None = None
    boundary_statistics: boundary_metrics.BoundaryStatistics | None = None
    output_sums: dict[str, np.ndarray | np.float64] = dataclasses.field(default_factory=dict)
    examples: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def iou(self) -> np.ndarray:
        """``[C]`` float64 IoU per class (NaN: class absent from labels and predictions)."""
        return metrics_lib.iou_from_confusion(self.confusion)

    @property
    def mean_iou(self) -> float:
        """Mean IoU over the classes present in the labels or the predictions."""
        return metrics_lib.mean_iou(self.confusion)

    @property
    def pixel_accuracy(self) -> float:
        """Fraction of the valid pixels predicted correctly."""
        return metrics_lib.pixel_accuracy(self.confusion)

    @property
    def band_profile(self) -> np.ndarray | None:
        """``[R]`` mean over images of the CE's band sums (None without statistics)."""
        return None if self.statistics is None else np.asarray(self.statistics.band_profile())

    @property
    def mean_ce(self) -> float | None:
        """Mean over images of each image's mean CE (None without statistics)."""
        return None if self.statistics is None else float(self.statistics.mean_ce())

    @property
    def parseval_error(self) -> float | None:
        """Relative error of the float32 decomposition (None without statistics)."""
        return None if self.statistics is None else float(self.statistics.parseval_error())

    @property
    def relative_discrepancy_at(self) -> dict[int, float] | None:
        """``R(nu_max)`` at the :data:`REPORTED_BAND_LIMITS` the grid holds, or None."""
        if self.statistics is None:
            return None
        discrepancy = np.asarray(self.statistics.relative_discrepancy_curve())
        return {nu: float(discrepancy[nu]) for nu in REPORTED_BAND_LIMITS if nu < len(discrepancy)}

    @property
    def boundary(self) -> dict[str, float] | None:
        """The :data:`~spectral_jax.evaluation.boundary.BOUNDARY_SCORES`, or None."""
        if self.boundary_statistics is None:
            return None
        scores = boundary_metrics.boundary_scores(self.boundary_statistics)
        return {name: float(scores[name]) for name in boundary_lib.BOUNDARY_SCORES}

    def scalars(self, prefix: str = "eval/") -> dict[str, float]:
        """The scalars a metric writer logs: mIoU, accuracy, loss, mean CE, R, boundary."""
        scalars = {
            f"{prefix}mean_iou": self.mean_iou,
            f"{prefix}pixel_accuracy": self.pixel_accuracy,
            f"{prefix}loss": self.loss,
        }
        if self.statistics is not None:
            scalars[f"{prefix}spectral_mean_ce"] = float(self.statistics.mean_ce())
            for nu, value in (self.relative_discrepancy_at or {}).items():
                scalars[f"{prefix}relative_discrepancy_{nu}"] = value
        for name, value in (self.boundary or {}).items():
            scalars[f"{prefix}{name}"] = value
        return scalars


@dataclasses.dataclass(frozen=True)
class _StepSettings:
    num_classes: int
    ignore_index: int
    boundary_metrics: bool


# To avoid re-compiling the step for every new evaluator of the same model (one per
# evaluation of a training run, of an experiment's stage): one jitted step per predict
# function, settings and mesh; jax.jit keeps its compilations per batch shape.
@functools.lru_cache(maxsize=32)
def _jitted_step(apply_fn: ApplyFn, settings: _StepSettings, mesh: Mesh | None):
    step = functools.partial(eval_step, apply_fn=apply_fn, **dataclasses.asdict(settings))
    if mesh is None:
        return jax.jit(step)
    replicated = parallel.replicated_sharding(mesh)
    batch = parallel.batch_sharding(mesh)
    return jax.jit(
        step,
        in_shardings=(replicated, {"image": batch, "label": batch}, replicated),
        out_shardings=(replicated, replicated, batch),
    )


class _HostTotals:
    """The sums over a split, accumulated on the host in int64 and float64."""

    def __init__(self, num_classes: int):
        self.confusion = np.zeros((num_classes, num_classes), np.int64)
        self.loss_sum = self.num_valid = 0.0
        self.num_evaluated = 0
        self.boundary: list[np.ndarray] | None = None
        self.output_sums: dict[str, np.ndarray | np.float64] = {}
        self.kept: dict[str, list[np.ndarray]] = {}

    def add(self, sums, outputs, examples, mask: np.ndarray, rows: np.ndarray) -> None:
        """Adds one batch: fetches its device arrays and sums them.

        ``sums`` are replicated (the whole global batch's); ``outputs`` are batch-sharded
        and summed over this process's real rows (``mask``, host-local); ``rows`` index
        the global batch, whose ``examples`` are gathered (a collective, on every
        process alike) only when rows are kept.
        """
        sums = jax.device_get(sums)
        if int(sums["num_invalid_labels"]):
            raise ValueError(
                f"labels of the evaluation data must lie in [0, {self.confusion.shape[0]}) or "
                f"equal the ignore index; a batch holds {int(sums['num_invalid_labels'])} "
                "pixel(s) outside (they would be dropped from the IoU, where mmseg counts "
                "their prediction in the union)."
            )
        self.confusion += np.asarray(sums["confusion"], np.int64)
        self.loss_sum += float(sums["loss_sum"])
        self.num_valid += float(sums["num_valid"])
        self.num_evaluated += int(np.sum(mask))
        if "boundary" in sums:
            counts = [np.asarray(c, np.int64) for c in sums["boundary"]]
            self.boundary = (
                counts
                if self.boundary is None
                else [a + b for a, b in zip(self.boundary, counts, strict=True)]
            )
        for name, value in outputs.items():
            local = parallel.process_local_rows(value)
            total = np.sum(local[mask], axis=0, dtype=np.float64)
            self.output_sums[name] = self.output_sums.get(name, 0.0) + total
        for name, value in examples.items():
            self.kept.setdefault(name, []).append(parallel.gather_rows(value)[rows])


def _spans_processes(mesh: Mesh | None) -> bool:
    """Whether ``mesh`` holds devices of more than one process."""
    return mesh is not None and len({d.process_index for d in mesh.devices.flat}) > 1


def _pad_to_processes_size(batch: Batch, ignore_index: int) -> Batch:
    """``batch`` padded at the bottom and right to the largest ``[H, W]`` of all processes.

    With ``eval_crop_size=None`` each host pads its rows to its own largest example, and
    a host whose rows are all filling ones has ``[1, 1]``; the global batch needs one
    size, the one a single process would pad the whole batch to. A collective.
    """
    height, width = batch["label"].shape[1:3]
    sizes = parallel.gather_rows(np.asarray([[height, width]], np.int32))  # [P, 2]
    target_height, target_width = (int(n) for n in sizes.max(axis=0))
    if (target_height, target_width) == (height, width):
        return batch
    spatial = ((0, 0), (0, target_height - height), (0, target_width - width))
    return {
        **batch,
        "image": np.pad(batch["image"], (*spatial, (0, 0))),
        "label": np.pad(batch["label"], spatial, constant_values=ignore_index),
    }


def _check_batch_size(index: int, batch: Batch, first_shape) -> None:
    """Raises ``ValueError`` naming batch ``index`` when its ``[H, W]`` is not batch 0's.

    The spectral statistics hold one grid of frequencies over the whole split.
    """
    first_image, first_label = first_shape
    if np.shape(batch["label"])[1:3] != first_label[1:3]:
        raise ValueError(
            f"batch {index} of the evaluation has images of shape {np.shape(batch['image'])} "
            f"and labels of shape {np.shape(batch['label'])}, but batch 0 had {first_image} "
            f"and {first_label}: the spectral statistics need one [H, W] over the split "
            "(pad every batch to one size: config.eval_crop_size)."
        )


class Evaluator:
    """A model's metrics over an evaluation split (module docstring).

    Args:
      apply_fn: ``(variables, images [B, H, W, Ci]) -> logits [B, H, W, C]``, or a dict
        with ``"logits"`` and further per-example outputs ``[B, ...]`` (summed into
        :attr:`EvaluationResult.output_sums`, kept in ``examples``). Pass the same object
        to share compilations (:func:`inference_apply_fn` gives one per model). The
        compiled step is cached per ``apply_fn`` and settings, so a method interceptor
        entered around the call is not part of the key (see :func:`inference_apply_fn`).
      num_classes: ``C``.
      ignore_index: label of ignored and padded pixels.
      spectral_statistics: accumulate :class:`spectral_jax.SpectralStatistics` of the
        logits (created from the first batch's ``[H, W]``: every batch must have it).
      ignore_mode: how ignored (and padded) pixels enter the statistics' CE
        decomposition: ``"labels"`` (the paper's Eq. 1, the default) or ``"both"``
        (:func:`spectral_jax.ce_spectrum`).
      with_magnitudes: the statistics also hold the magnitude profiles.
      boundary_metrics: count the boundary metrics on the unpadded images.
      mesh: split every batch over the mesh's ``"data"`` axis (the trainer's mesh); None
        runs on the default device.
      num_examples: keep the first ``num_examples`` real examples (of the global batches:
        with several processes every process gets the same ones).
      batch_size: pad every batch to this many (host-local) examples; None: to the size
        of the first batch. With a mesh it must suit the mesh
        (:func:`spectral_jax.parallel.local_batch_size`).

    Raises:
      ValueError: for a non-positive ``num_classes``, a negative ``num_examples`` or an
        unknown ``ignore_mode``.

    Example:
      >>> import flax.linen as nn
      >>> model = nn.Conv(features=3, kernel_size=(1, 1))  # [B, H, W, 3] -> [B, H, W, 3]
      >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
      >>> batches = [{"image": np.ones((2, 32, 32, 3), np.float32),
      ...             "label": np.ones((2, 32, 32), np.int32)}]
      >>> evaluator = Evaluator(model.apply, num_classes=3, spectral_statistics=True,
      ...                       num_examples=1)
      >>> result = evaluator(variables, batches)
      >>> int(result.confusion.sum()), result.num_evaluated, sorted(result.relative_discrepancy_at)
      (2048, 2, [8, 16])
      >>> result.examples["prediction"].shape
      (1, 32, 32)
    """

    def __init__(
        self,
        apply_fn: ApplyFn,
        *,
        num_classes: int,
        ignore_index: int = IGNORE_INDEX,
        spectral_statistics: bool = False,
        ignore_mode: IgnoreMode = "labels",
        with_magnitudes: bool = False,
        boundary_metrics: bool = False,
        mesh: Mesh | None = None,
        num_examples: int = 0,
        batch_size: int | None = None,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}.")
        if num_examples < 0:
            raise ValueError(f"num_examples must be non-negative, got {num_examples}.")
        self.apply_fn = apply_fn
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.spectral_statistics = bool(spectral_statistics)
        _checks.check_ignore_mode(ignore_mode)
        self.ignore_mode = ignore_mode
        self.with_magnitudes = bool(with_magnitudes)
        self.boundary_metrics = bool(boundary_metrics)
        self.mesh = mesh
        self.num_examples = int(num_examples)
        self.batch_size = batch_size
        settings = _StepSettings(self.num_classes, self.ignore_index, self.boundary_metrics)
        self._step = _jitted_step(apply_fn, settings, mesh)
        self._spans_processes = _spans_processes(mesh)

    def _create_statistics(self, labels: np.ndarray) -> SpectralStatistics:
        # Created from the first batch, so that eval_crop_size=None (each split's own
        # size) works; the statistics need one size over the whole split.
        statistics = SpectralStatistics.create(
            labels.shape[1:3],
            self.num_classes,
            ignore_index=self.ignore_index,
            ignore_mode=self.ignore_mode,
            with_magnitudes=self.with_magnitudes,
        )
        return statistics if self.mesh is None else parallel.replicate(statistics, self.mesh)

    def __call__(self, variables: Any, batches: Iterable[Batch]) -> EvaluationResult:
        """Evaluates ``variables`` on every batch of ``batches``.

        Args:
          variables: the model's variables (replicated over the mesh, if any).
          batches: ``{"image": [B, H, W, Ci], "label": [B, H, W]}`` and optionally
            ``"mask"`` ``[B]`` (False on examples that only fill a batch).

        Returns:
          :class:`EvaluationResult`.
        """
        totals = _HostTotals(self.num_classes)
        statistics = None
        in_flight: collections.deque[tuple[Any, ...]] = collections.deque()
        num_kept = 0
        batch_size = self.batch_size
        first_shape = None
        for index, batch in enumerate(batches):
            if batch_size is None:
                batch_size = len(batch["label"])
            batch = pad_batch(batch, batch_size, self.ignore_index)
            if self._spans_processes:
                batch = _pad_to_processes_size(batch, self.ignore_index)
            mask = batch.pop("mask")
            if first_shape is None:
                first_shape = (np.shape(batch["image"]), np.shape(batch["label"]))
            elif self.spectral_statistics:
                _check_batch_size(index, batch, first_shape)
            if statistics is None and self.spectral_statistics:
                statistics = self._create_statistics(batch["label"])
            if self.mesh is not None:
                batch = parallel.shard_batch(batch, self.mesh)
            sums, statistics, per_example = self._step(variables, batch, statistics)
            outputs = {k: v for k, v in per_example.items() if k != "prediction"}
            rows = np.zeros((0,), np.int64)
            if num_kept < self.num_examples:
                # Rows of the global batch: every process keeps the same examples.
                global_mask = parallel.gather_rows(mask) if self._spans_processes else mask
                rows = np.flatnonzero(global_mask)[: self.num_examples - num_kept]
            num_kept += len(rows)
            examples = {"image": batch["image"], "label": batch["label"], **per_example}
            in_flight.append((sums, outputs, examples if len(rows) else {}, mask, rows))
            # The host reads a batch's results one batch late, while the device computes
            # the next one: the device does not wait for the host between batches, and it
            # holds the outputs of two batches at most.
            if len(in_flight) > 1:
                totals.add(*in_flight.popleft())
        while in_flight:
            totals.add(*in_flight.popleft())
        if statistics is not None:
            statistics = jax.device_get(statistics)
            # The step recorded the decomposition's error; it is read here, on the host.
            error = float(statistics.parseval_error())
            if error > PARSEVAL_TOLERANCE:
                warnings.warn(
                    f"Evaluator: the spectral statistics' band sums miss the spatial CE by "
                    f"{error:.3g} (relative; tolerance {PARSEVAL_TOLERANCE:g}): their "
                    "R(nu_max) and band profile lost their precision (large logits at "
                    "ignored pixels?). EvaluationResult.parseval_error holds the value.",
                    ParsevalWarning,
                    stacklevel=2,
                )
        if self._spans_processes:
            # The confusion matrix, the loss, the boundary counts and the statistics are
            # sums over the global batch (replicated); these two are over this host's rows.
            totals.num_evaluated, totals.output_sums = parallel.sum_over_processes(
                (totals.num_evaluated, totals.output_sums)
            )
        return EvaluationResult(
            confusion=totals.confusion,
            loss=totals.loss_sum / totals.num_valid if totals.num_valid else float("nan"),
            num_evaluated=int(totals.num_evaluated),
            statistics=statistics,
            boundary_statistics=(
                None
                if totals.boundary is None
                else boundary_metrics.BoundaryStatistics(*totals.boundary)
            ),
            output_sums=totals.output_sums,
            examples={name: np.concatenate(arrays) for name, arrays in totals.kept.items()},
        )
