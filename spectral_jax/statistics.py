"""Streaming reduction of the spectral statistics over a whole data set.

Table 1 of the paper reports ``R(nu_max)`` over a validation set, not one batch.
:class:`SpectralStatistics` is a pytree of running sums, updated batch by batch
(``jit``-able, ``merge``-able across hosts or shards), from which the data-set
quantities are read at the end:

* ``relative_discrepancy()``: ``R(nu_max)`` for every band limit, a ratio of means over
  the images (``|sum_i T_i(nu_max) - sum_i L_i| / sum_i L_i``);
* ``band_profile()`` and ``mean_ce()``: the mean over images of the band sums and of the
  CE; ``ce_spectrum()``: the mean over images of the CE components ``L_ce(nu)`` (Eq. 5)
  themselves, ``[H, W]``;
* ``iou()`` and ``mean_iou()``: the data-set IoU per class of the arg-max predictions,
  from the summed terms of Eq. 8 (intersections and unions are summed over images before
  the ratio, as mIoU is computed);
* ``magnitude_profiles()``: the mean over images of ``|b|(r)`` and ``|y_hat|(r)``, when
  created with ``with_magnitudes=True`` (it transforms all classes).

Images without a valid pixel add nothing and are not counted.

Example:
  >>> import optax
  >>> rng = np.random.default_rng(0)
  >>> logits = rng.normal(size=(4, 9, 9, 3)).astype(np.float32)  # [B, H, W, C]
  >>> labels = rng.integers(0, 3, size=(4, 9, 9))  # [B, H, W]
  >>> stats = SpectralStatistics.create((9, 9), num_classes=3)
  >>> for i in (0, 2):  # two batches of two images; update compiles once per batch shape
  ...     stats = stats.update(logits[i : i + 2], labels[i : i + 2])
  >>> stats.num_images
  Array(4, dtype=int32)
  >>> stats.relative_discrepancy_curve().shape  # R(nu_max) for nu_max = 0..4
  (5,)
  >>> spatial = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # [B, H, W]
  >>> bool(jnp.isclose(stats.mean_ce(), spatial.mean()))  # the bands sum to the CE
  True
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import _checks
from spectral_jax import bands as bands_lib
from spectral_jax import iou as iou_lib
from spectral_jax import loss_spectrum as ce_lib
from spectral_jax._checks import IGNORE_INDEX, DataFormat
from spectral_jax.bands import Radius
from spectral_jax.loss_spectrum import IgnoreMode


def _spatial_ce(logits, labels, ignore_index: int) -> jax.Array:
    """``[B]`` mean CE over each image's valid pixels, computed in space (0 if none)."""
    logits = jnp.asarray(logits, jnp.promote_types(jnp.result_type(logits), jnp.float32))
    valid = labels != ignore_index
    logits = jnp.where(valid[..., None], logits, 0.0)
    safe_labels = jnp.where(valid, labels, 0)[..., None]
    label_logits = jnp.take_along_axis(logits, safe_labels, axis=-1)[..., 0]
    losses = jnp.where(valid, jax.nn.logsumexp(logits, axis=-1) - label_logits, 0.0)
    return jnp.sum(losses, axis=(1, 2)) / jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1)


@flax.struct.dataclass
class SpectralStatistics:
    """Running sums of the spectral statistics (a pytree; see the module docstring).

    Attributes:
      band_ce: ``[R]`` sum over images of the per-band CE components.
      half_spectrum_ce: ``[H, Kw]`` sum over images of the CE components on the half
        spectrum (:func:`spectral_jax.ce_half_spectrum`, ``Kw = W // 2 + 1``).
      spatial_ce: ``[]`` sum over images of the CE computed directly in space, the
        reference of :meth:`parseval_error`.
      num_images: ``[]`` number of images with at least one valid pixel.
      overlap, prediction_mass, label_mass: ``[C]`` summed IoU terms
        (:class:`spectral_jax.IoUTerms`) of the arg-max predictions.
      label_magnitude, logit_magnitude: ``[R]`` summed magnitude profiles (zeros unless
        ``with_magnitudes``).
      shape, num_classes, radius, ignore_index, with_magnitudes, max_classes_present:
        static settings.
    """

    band_ce: jax.Array
    half_spectrum_ce: jax.Array
    spatial_ce: jax.Array
    num_images: jax.Array
    overlap: jax.Array
    prediction_mass: jax.Array
    label_mass: jax.Array
    label_magnitude: jax.Array
    logit_magnitude: jax.Array
    shape: tuple[int, int] = flax.struct.field(pytree_node=False)
    num_classes: int = flax.struct.field(pytree_node=False)
    radius: Radius = flax.struct.field(pytree_node=False, default="chebyshev")
    ignore_index: int = flax.struct.field(pytree_node=False, default=IGNORE_INDEX)
    ignore_mode: IgnoreMode = flax.struct.field(
        pytree_node=False, default=ce_lib.DEFAULT_IGNORE_MODE
    )
    with_magnitudes: bool = flax.struct.field(pytree_node=False, default=False)
    max_classes_present: int | None = flax.struct.field(pytree_node=False, default=None)

    @classmethod
    def create(
        cls,
        shape: tuple[int, int],
        num_classes: int,
        *,
        radius: Radius = "chebyshev",
        ignore_index: int = IGNORE_INDEX,
        ignore_mode: IgnoreMode = ce_lib.DEFAULT_IGNORE_MODE,
        with_magnitudes: bool = False,
        max_classes_present: int | None = None,
        dtype=jnp.float32,
    ) -> SpectralStatistics:
        """Empty statistics for ``[H, W]`` maps of ``num_classes`` classes.

        Args:
          shape: spatial shape ``(H, W)`` of the logits and labels to come.
          num_classes: ``C``.
          radius: band radius (:mod:`spectral_jax.bands`).
          ignore_index: label of pixels without a class.
          ignore_mode: which maps of the CE decomposition an ignored pixel is removed
            from (:func:`spectral_jax.ce_spectrum`; default ``"labels"``, the paper's
            Eq. 1). The IoU always leaves ignored pixels out of both maps.
          with_magnitudes: also accumulate the magnitude profiles (costs a dense
            transform of all classes per batch).
          max_classes_present: passed to :func:`spectral_jax.ce_spectrum`.
          dtype: accumulator dtype, float32 or float64 (float64 needs
            ``jax_enable_x64`` and a CPU or GPU backend).

        Raises:
          ValueError: for a non-positive ``num_classes``; a ``dtype`` other than float32
            or float64 (bfloat16 or float16 sums would lose the small terms), or float64
            without ``jax_enable_x64`` or on a TPU backend.
        """
        dtype = _checks.check_accumulator_dtype(dtype)
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}.")
        _checks.check_ignore_mode(ignore_mode)
        shape = bands_lib._check_spatial_shape(shape)
        bands = bands_lib.num_bands(shape, radius=radius)
        zeros_bands = jnp.zeros((bands,), dtype)
        zeros_classes = jnp.zeros((num_classes,), dtype)
        return cls(
            band_ce=zeros_bands,
            half_spectrum_ce=jnp.zeros((shape[0], shape[1] // 2 + 1), dtype),
            spatial_ce=jnp.zeros((), dtype),
            num_images=jnp.zeros((), jnp.int32),
            overlap=zeros_classes,
            prediction_mass=zeros_classes,
            label_mass=zeros_classes,
            label_magnitude=zeros_bands,
            logit_magnitude=zeros_bands,
            shape=shape,
            num_classes=num_classes,
            radius=radius,
            ignore_index=ignore_index,
            ignore_mode=ignore_mode,
            with_magnitudes=with_magnitudes,
            max_classes_present=max_classes_present,
        )

    def update(
        self, logits: chex.Array, labels: chex.Array, *, data_format: DataFormat = "NHWC"
    ) -> SpectralStatistics:
        """Adds a batch: ``logits [B, H, W, C]``, ``labels [B, H, W]``.

        ``logits`` of any floating dtype, computed as in :func:`spectral_jax.ce_spectrum`
        (float16 and bfloat16 upcast to float32) and added to the accumulators in their
        dtype; JAX or NumPy arrays or CPU PyTorch tensors, ``[B, C, H, W]`` with
        ``data_format="NCHW"`` (static; the axis is moved inside the compiled update).

        Compiled once per batch shape and settings, also when called eagerly: the checks
        run in Python (concrete labels are range-checked) and the update is one jitted
        computation, inlined under the caller's ``jit``.

        Raises:
          ValueError: if the batch's ``(H, W)`` or ``C`` differ from the statistics'
            (saying so when the shape looks channels first); as
            :func:`spectral_jax.ce_spectrum` for bad inputs (eagerly, a label outside
            ``[0, C)``; under ``jit`` such an image makes the statistics NaN).

        Warns:
          ParsevalWarning: (eager calls) when the batch's band sums miss its spatial CE
            by more than :data:`spectral_jax.loss_spectrum.PARSEVAL_TOLERANCE`, relative (a sentinel
            at ignored pixels in the ``"labels"`` mode, :func:`spectral_jax.ce_spectrum`).
            Under ``jit`` the sums record it: :meth:`parseval_error`.
        """
        logits = _checks.as_array(logits, "logits")
        labels = _checks.as_array(labels, "labels")
        _checks.check_data_format(data_format)
        height, width = self.shape
        shape = _checks.channels_last_shape(jnp.shape(logits), data_format)
        if tuple(shape[1:]) != (height, width, self.num_classes):
            expected = (
                f"[B, {height}, {width}, {self.num_classes}]"
                if data_format == "NHWC"
                else f"[B, {self.num_classes}, {height}, {width}]"
            )
            got = f", got {jnp.shape(logits)}"
            if data_format == "NHWC" and tuple(jnp.shape(logits)[1:]) == (
                self.num_classes,
                height,
                width,
            ):
                got = _checks.channels_first_hint(jnp.shape(logits))
            raise ValueError(f"logits must have shape {expected} for these statistics{got}.")
        _checks.check_logits_and_labels(
            logits, labels, ignore_index=self.ignore_index, data_format=data_format
        )
        updated, batch_error = _update(self, logits, labels, data_format=data_format)
        if not _checks.is_traced(batch_error):
            error = float(batch_error)
            if error > ce_lib.PARSEVAL_TOLERANCE:
                warnings.warn(
                    f"SpectralStatistics.update: the batch's band sums miss its spatial CE "
                    f"by {error:.3g} (relative; tolerance {ce_lib.PARSEVAL_TOLERANCE:g}): the "
                    "components lost their precision, typically to large logits at ignored "
                    'pixels (a padding sentinel) in ignore_mode="labels". Use '
                    'ignore_mode="both", mask such logits, or accumulate in float64.',
                    ce_lib.ParsevalWarning,
                    stacklevel=2,
                )
        return updated

    def merge(self, other: SpectralStatistics) -> SpectralStatistics:
        """Sum of two statistics with the same settings (for example two hosts')."""
        settings = lambda stats: (  # noqa: E731
            stats.shape,
            stats.num_classes,
            stats.radius,
            stats.ignore_index,
            stats.ignore_mode,
            stats.with_magnitudes,
            stats.max_classes_present,
        )
        if settings(self) != settings(other):
            raise ValueError(
                "can only merge SpectralStatistics with the same settings (shape, "
                "num_classes, radius, ignore_index, ignore_mode, with_magnitudes, "
                "max_classes_present); "
                f"got {settings(self)} and {settings(other)}."
            )
        return jax.tree.map(jnp.add, self, other)

    def _per_image(self, total: jax.Array) -> jax.Array:
        count = self.num_images.astype(total.dtype)
        return jnp.where(count > 0, total / jnp.maximum(count, 1), jnp.nan)

    def mean_ce(self) -> jax.Array:
        """Mean over images of each image's mean CE (NaN before any image)."""
        return self._per_image(jnp.sum(self.band_ce))

    def parseval_error(self) -> jax.Array:
        """``|sum_nu L_ce(nu) - CE| / CE`` summed over images: the decomposition's rounding.

        In float32 this grows as the CE shrinks against the size of the components (a
        confident model): check it before reading small ``R(nu_max)`` values, and use
        float64 (``jax_enable_x64``) when it is not small.
        """
        return _relative_error(jnp.sum(self.band_ce), self.spatial_ce)

    def band_profile(self) -> jax.Array:
        """``[R]`` mean over images of the band sums of the CE components."""
        return self._per_image(self.band_ce)

    def ce_spectrum(self) -> jax.Array:
        """``[H, W]`` mean over images of the CE components ``L_ce(nu)``, DFT layout.

        The columns past ``W // 2`` are the mirrors ``L_ce(-nu) = L_ce(nu)`` of the
        accumulated half spectrum; the whole array sums to :meth:`mean_ce`.
        """
        half = self._per_image(self.half_spectrum_ce)  # [H, Kw]
        height, width = self.shape
        mirrored_rows = (-np.arange(height)) % height
        mirrored_cols = width - np.arange(width // 2 + 1, width)  # columns W//2+1 .. W-1
        rest = half[mirrored_rows][:, mirrored_cols]
        return jnp.concatenate([half, rest], axis=-1)

    def truncated_ce(self) -> jax.Array:
        """``[R]`` mean over images of the truncated CE at every band limit (Eq. 13)."""
        return self._per_image(jnp.cumsum(self.band_ce))

    def relative_discrepancy_curve(self) -> jax.Array:
        """``[R]`` data-set ``R(nu_max)`` at every band limit (Eq. 14, ratio of means)."""
        return ce_lib.sweep_from_band_profile(self.band_ce[None, :])

    def iou(self) -> jax.Array:
        """``[C]`` data-set IoU per class of the arg-max predictions (NaN: class unseen)."""
        terms = iou_lib.IoUTerms(self.overlap, self.prediction_mass, self.label_mass)
        return iou_lib.iou_from_terms(terms)

    def mean_iou(self) -> jax.Array:
        """Mean IoU over the classes seen in the labels or the predictions."""
        return jnp.nanmean(self.iou())

    def magnitude_profiles(self) -> ce_lib.MagnitudeProfiles:
        """Mean over images of the magnitude profiles (needs ``with_magnitudes=True``)."""
        if not self.with_magnitudes:
            raise ValueError("create the statistics with with_magnitudes=True.")
        return ce_lib.MagnitudeProfiles(
            labels=self._per_image(self.label_magnitude),
            logits=self._per_image(self.logit_magnitude),
        )


def _band_sums(half: jax.Array, shape: tuple[int, int], radius: Radius) -> jax.Array:
    """``[B, R]`` band sums of half spectra ``[B, H, Kw]`` (:func:`spectral_jax.band_profile`)."""
    index = bands_lib.half_band_index(shape, radius=radius).reshape(-1)  # [H Kw]
    weights = jnp.asarray(bands_lib.half_spectrum_weights(shape), half.dtype)  # [Kw]
    weighted = (half * weights).reshape(half.shape[0], -1)  # [B, H Kw]
    num = bands_lib.num_bands(shape, radius=radius)
    return jax.vmap(lambda row: jax.ops.segment_sum(row, index, num_segments=num))(weighted)


@functools.partial(jax.jit, static_argnames="data_format")
def _update(
    stats: SpectralStatistics, logits, labels, *, data_format
) -> tuple[SpectralStatistics, jax.Array]:
    """The computation of :meth:`SpectralStatistics.update` (settings static in ``stats``),
    and the batch's own Parseval error (its sums, not the accumulators')."""
    logits = _checks.to_channels_last(logits, data_format)  # [B, H, W, C]
    settings: dict[str, Any] = dict(ignore_index=stats.ignore_index)
    half = ce_lib.ce_half_spectrum(
        logits,
        labels,
        ignore_mode=stats.ignore_mode,
        max_classes_present=stats.max_classes_present,
        **settings,
    )  # [B, H, Kw]
    profile = _band_sums(half, stats.shape, stats.radius)  # [B, R], as band_profile
    counted = jnp.any(labels != stats.ignore_index, axis=(1, 2))  # [B]
    terms = iou_lib.spectral_iou_terms(logits, labels, binarize=True, **settings)
    dtype = stats.band_ce.dtype
    batch_band_ce = jnp.sum(profile, axis=0).astype(dtype)  # [R]
    batch_spatial_ce = jnp.sum(_spatial_ce(logits, labels, stats.ignore_index)).astype(dtype)
    batch_error = _relative_error(jnp.sum(batch_band_ce), batch_spatial_ce)
    updates = dict(
        band_ce=stats.band_ce + batch_band_ce,
        half_spectrum_ce=stats.half_spectrum_ce + jnp.sum(half, axis=0).astype(dtype),
        spatial_ce=stats.spatial_ce + batch_spatial_ce,
        num_images=stats.num_images + jnp.sum(counted, dtype=jnp.int32),
        overlap=stats.overlap + jnp.sum(terms.overlap, axis=0).astype(stats.overlap.dtype),
        prediction_mass=stats.prediction_mass
        + jnp.sum(terms.prediction_mass, axis=0).astype(stats.overlap.dtype),
        label_mass=stats.label_mass + jnp.sum(terms.label_mass, axis=0).astype(stats.overlap.dtype),
    )
    if stats.with_magnitudes:
        magnitudes = ce_lib.magnitude_profiles(
            logits, labels, radius=stats.radius, ignore_mode=stats.ignore_mode, **settings
        )
        mask = counted[:, None]
        updates["label_magnitude"] = stats.label_magnitude + jnp.sum(
            jnp.where(mask, magnitudes.labels, 0.0), axis=0
        ).astype(dtype)
        updates["logit_magnitude"] = stats.logit_magnitude + jnp.sum(
            jnp.where(mask, magnitudes.logits, 0.0), axis=0
        ).astype(dtype)
    # flax.struct.dataclass adds `replace` at run time; its typing does not declare it.
    return stats.replace(**updates), batch_error  # type: ignore[attr-defined]


def _relative_error(total, reference):
    """``|total - reference| / reference``; 0 where ``reference`` is 0."""
    nonzero = reference != 0
    relative = jnp.abs(total - reference) / jnp.where(nonzero, reference, 1)
    return jnp.where(nonzero, relative, 0.0)
