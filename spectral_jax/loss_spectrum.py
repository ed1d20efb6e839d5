r"""Spectral decomposition of segmentation cross-entropy (main paper, Sec. 2.1, 2.4, 3.1).

For logits ``Y(t, c)`` and one-hot labels ``B(t, c)`` on an ``H x W`` grid, cross-entropy
is the inner product of the labels with the negative log-probabilities
``A(t, c) = Y_p(t) - Y(t, c)``, ``Y_p = logsumexp_c Y`` (Eq. 1). By Parseval's identity
for the DFT the inner product splits into one term per frequency ``nu`` (Eq. 2-5):

.. math::

   \mathcal{L}_{ce} = \frac{1}{N}\sum_t \sum_c B(t,c) A(t,c)
   = \sum_\nu \mathcal{L}_{ce}(\nu), \qquad
   \mathcal{L}_{ce}(\nu) = \frac{1}{N H W}\,
   \mathrm{Re} \sum_c \overline{b(\nu,c)}\, \hat y(\nu,c),

with ``b = DFT(B)``, ``y_hat = DFT(A) = y_p - y`` and ``N`` the image's number of valid
(not ignored) pixels, so the components of an image sum to its mean CE. The paper writes
``b(-nu, c)``; for real ``B`` that is ``conj(b(nu, c))``. The imaginary parts cancel
between ``nu`` and ``-nu``, so only the real part is kept, and ``L_ce(nu) = L_ce(-nu)``.

Ignored pixels (``labels == ignore_index``). The paper has no ignore label; its Eq. 1
integrates ``B(t, c) A(t, c)`` over every pixel ``t``, so an ignored pixel, which has no
class, is an all-zero one-hot vector ``B(t, .) = 0`` while ``A`` is what the network
predicts there. That is ``ignore_mode="labels"``, the default: only ``B`` is zeroed, and
``A`` is transformed at every pixel. ``ignore_mode="both"`` zeroes ``A`` at ignored
pixels too (the convention of this library before the option existed). The CE, the sum of
all components, is the same either way (``B`` is zero there); single components, and
with them the truncated CE and ``R``, are not. A band-limited ``B`` spreads onto the
ignored pixels, so the truncated CE reads ``A`` there in the default mode and zeros in
the other: which ``R`` is larger depends on the predictions at ignored pixels (the demo
and ``experiments.band_limit_sweep`` report both). PASCAL VOC marks object boundaries as
ignored, so compare with the paper's Table 1 in the default mode. In the ``"labels"``
mode an ignored pixel whose logits are not all finite (NaN or Inf padding, say) enters
``A`` as 0, so that it stays harmless; a NaN or Inf logit at a labelled pixel makes its
image's components non-finite in both modes. An image without valid pixels has all
components zero. A large finite fill value at ignored pixels (a padding sentinel) does
enter ``A`` in the ``"labels"`` mode: the components then mean nothing, and float32 loses
the CE under them; every eager call checks Parseval's identity per image and warns
(:class:`ParsevalWarning`) above :data:`PARSEVAL_TOLERANCE`.

The truncated CE keeps the components inside a band limit (Eq. 13) and ``R`` is its
relative discrepancy from the CE (Eq. 14):

.. math::

   \hat{\mathcal{L}}_{ce}(\nu_{max}) = \sum_{\mathrm{band}(\nu) \le \nu_{max}}
   \mathcal{L}_{ce}(\nu), \qquad
   R(\nu_{max}) = \left|\frac{\hat{\mathcal{L}}_{ce}(\nu_{max}) - \mathcal{L}_{ce}}
   {\mathcal{L}_{ce}}\right|.

Over a batch or a data set, ``R`` is a ratio of means (Table 1's convention): the mean
truncated CE over images against the mean CE over images,
``|sum_i T_i - sum_i L_i| / sum_i L_i``, not a mean of per-image ratios (which a few
near-zero-CE images would dominate). ``per_image=True`` gives the per-image ratios.

Implementation: every map is transformed with the real-input ``rfft2``; sums over all
frequencies are taken over the half spectrum with multiplicities
(:func:`spectral_jax.bands.half_spectrum_weights`). ``max_classes_present=k`` transforms
only the (at most ``k``) classes present in each image: ``b(nu, c)`` is identically zero
for an absent class, so dropping its term is exact. The classes are transformed
``class_chunk_size`` at a time in a ``lax.scan`` (:func:`_half_spectrum_of_classes`): the
peak memory grows with the chunk, not with ``C``.

Every public function gathers its settings in one frozen, hashable object (``ignore_index``,
``ignore_mode``, ``radius``, ``max_classes_present``, ``class_chunk_size``, ``per_image``,
``data_format``), which converts and checks its arguments in Python (label values too,
when they are concrete) and runs the computation through a module-level ``jax.jit``
whose one static argument it is. Logits and labels may be JAX or NumPy arrays or CPU
PyTorch tensors, with the classes last (``data_format="NHWC"``, the default) or second
(``"NCHW"``, moved last inside the ``jit``). An eager call therefore
compiles once per input shape, dtype and setting, and a repeated eager call costs what a
call jitted by the caller costs; under the caller's ``jit``, ``vmap`` or ``grad`` the
inner ``jit`` is inlined. Band limits are traced arguments: new values never recompile.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import _checks
from spectral_jax import bands as bands_lib
from spectral_jax._checks import IGNORE_INDEX
from spectral_jax.bands import Radius

# Classes transformed per step of the scan over classes (see _half_spectrum_of_classes).
DEFAULT_CLASS_CHUNK_SIZE = 3

# Which maps an ignored pixel is removed from (module docstring, "Ignored pixels").
IgnoreMode = Literal["labels", "both"]
IGNORE_MODES: tuple[str, ...] = _checks.IGNORE_MODES
DEFAULT_IGNORE_MODE: IgnoreMode = "labels"

# Where the class axis of the logits is: last (Flax) or second (PyTorch).
DataFormat = _checks.DataFormat


def _check_max_classes_present(max_classes_present: int | None) -> None:
    if max_classes_present is not None and (
        isinstance(max_classes_present, bool)
        or not isinstance(max_classes_present, int | np.integer)
        or max_classes_present < 1
    ):
        raise ValueError(
            f"max_classes_present must be a positive int or None, got {max_classes_present!r}."
        )


def _check_class_chunk_size(class_chunk_size: int) -> None:
    if (
        isinstance(class_chunk_size, bool)
        or not isinstance(class_chunk_size, int | np.integer)
        or class_chunk_size < 1
    ):
        raise ValueError(f"class_chunk_size must be a positive int, got {class_chunk_size!r}.")


@dataclasses.dataclass(frozen=True)
class _CESettings:
    """The static settings of the public CE functions, checked in one place.

    Hashable: it is the one static argument of every module-level ``jit`` of this module
    (:func:`_jit_ce`), so a new value of any setting compiles once and equal settings
    share a compilation. ``radius`` and ``per_image`` are read only by the functions that
    take them; their defaults stand for the others.
    """

    ignore_index: int = IGNORE_INDEX
    ignore_mode: IgnoreMode = DEFAULT_IGNORE_MODE
    max_classes_present: int | None = None
    class_chunk_size: int = DEFAULT_CLASS_CHUNK_SIZE
    radius: Radius = "chebyshev"
    per_image: bool = False
    data_format: str = "NHWC"

    def checked(self, logits, labels):
        """``(logits, labels)`` as arrays, checked against each other and these settings.

        Array-likes (a CPU PyTorch tensor) are converted (:func:`spectral_jax._checks.as_array`);
        concrete labels are range-checked.
        """
        logits = _checks.as_array(logits, "logits")
        labels = _checks.as_array(labels, "labels")
        _checks.check_logits_and_labels(
            logits, labels, ignore_index=self.ignore_index, data_format=self.data_format
        )
        _checks.check_ignore_mode(self.ignore_mode)
        _check_max_classes_present(self.max_classes_present)
        _check_class_chunk_size(self.class_chunk_size)
        bands_lib._check_radius(self.radius)
        return logits, labels

    def call(self, jitted: Callable, logits, labels, *args, parseval_name: str | None = None):
        """Checks the arguments, then runs ``jitted(logits, labels, *args, settings=self)``.

        With ``parseval_name``, ``jitted`` returns ``(value, parseval_error [B])``: concrete
        errors above :data:`PARSEVAL_TOLERANCE` warn (:class:`ParsevalWarning`, naming
        the public function) and ``value`` is returned.
        """
        logits, labels = self.checked(logits, labels)
        result = jitted(logits, labels, *args, settings=self)
        if parseval_name is None:
            return result
        value, parseval_error = result
        _warn_on_parseval_error(parseval_error, parseval_name)
        return value


def _jit_ce(compute: Callable) -> Callable:
    """``compute(logits [B, H, W, C], labels, *args, settings)``, jitted, ``settings`` static.

    The logits are moved to channels last inside the ``jit`` (an eager transpose would
    compile on its own), so ``compute`` always sees ``[B, H, W, C]``.
    """

    @functools.wraps(compute)
    def channels_last(logits, labels, *args, settings: _CESettings):
        logits = _checks.to_channels_last(logits, settings.data_format)  # [B, H, W, C]
        return compute(logits, labels, *args, settings=settings)

    return jax.jit(channels_last, static_argnames="settings")


def _classes_present(labels, valid, num_classes: int):
    """``[B, C]`` booleans: which classes occur among each image's valid pixels."""
    batch, height, width = labels.shape
    binned = jnp.where(valid, labels, num_classes).reshape(batch, height * width)  # [B, H*W]
    counts = jax.vmap(lambda row: jnp.bincount(row, length=num_classes + 1))(binned)
    return counts[:, :num_classes] > 0


def _class_spectra(log_partition, logit, class_id, labels, valid, transformed):
    """Half spectra of a chunk of classes' maps: ``[2, k, B, H, Kw]`` = ``(y_hat, b)``.

    Args:
      log_partition: ``[B, H, W]`` ``logsumexp`` of the logits over classes.
      logit: ``[k, B, H, W]`` the chunk's logits.
      class_id: ``[k, B]`` the class of each chunk slot and image.
      labels, valid: ``[B, H, W]``; ``valid`` masks the one-hot labels.
      transformed: ``[B, H, W]`` pixels whose negative log-probabilities are kept
        (:func:`_transformed_pixels`).
    """
    # One difference per class rather than a broadcast of log_partition over the chunk:
    # the gradient of a broadcast is a reduction over the chunk axis, a separate kernel on
    # XLA:CPU in every backward step; the gradient of a stack is a chain of adds.
    neg_log_prob = jnp.stack([log_partition - logit[i] for i in range(logit.shape[0])])
    neg_log_prob = jnp.where(transformed, neg_log_prob, 0.0)  # [k, B, H, W]
    target = (valid & (labels == class_id[..., None, None])).astype(logit.dtype)
    # One transform of 2 k B maps: a batched FFT.
    return jnp.fft.rfft2(jnp.stack([neg_log_prob, target]))


@jax.custom_jvp
def _log_partition(logits, valid):
    """``logsumexp`` of ``logits [B, H, W, C]`` over classes, ``[B, H, W]``.

    Its derivative is masked to the ``valid [B, H, W]`` pixels (the transformed ones,
    :func:`_transformed_pixels`). The value at another pixel is never used (every map is
    zero there), but without the mask NaN or Inf logits there would reach the gradient
    as ``0 * softmax(NaN)``. Masking in the derivative rule
    rather than the logits keeps the forward pass a plain reduction: a select feeding the
    reduction is materialised on CPU and cost more than the reduction itself. A
    ``custom_jvp`` (not ``custom_vjp``) so that forward mode (``jacfwd``) works too.
    """
    del valid
    return jax.nn.logsumexp(logits, axis=-1)


@_log_partition.defjvp
def _log_partition_jvp(primals, tangents):
    logits, valid = primals
    logits_tangent, _ = tangents
    log_partition = _log_partition(logits, valid)
    mask = valid[..., None]
    probs = jnp.where(mask, jnp.exp(logits - log_partition[..., None]), 0.0)
    tangent = jnp.sum(probs * jnp.where(mask, logits_tangent, 0.0), axis=-1)
    return log_partition, tangent


def _transformed_pixels(logits, valid, ignore_mode: str):
    """``[B, H, W]`` pixels whose negative log-probabilities enter the transforms.

    ``"both"``: the valid pixels. ``"labels"``: every pixel, except an ignored pixel whose
    logits are not all finite (its log-probabilities are taken as 0 there, so that NaN or
    Inf logits at ignored pixels, as padding may hold, stay harmless).
    """
    if ignore_mode == "both":
        return valid
    return valid | jnp.all(jnp.isfinite(logits), axis=-1)


def _scan_inputs(logits, valid, classes):
    """What the scans over classes read: ``log_partition``, per-class logits and ids.

    The logits are transposed as they are (XLA's plain transpose is several times faster
    than a transpose fused with a mask); each step masks its maps, and
    :func:`_log_partition` masks its derivative.

    Args:
      logits: ``[B, H, W, C]``.
      valid: ``[B, H, W]`` booleans: the transformed pixels (:func:`_transformed_pixels`).
      classes: ``None`` for all classes, or ``[B, K]`` class indices per image.

    Returns:
      ``log_partition [B, H, W]``, ``class_logits [K, B, H, W]``, ``class_ids [K, B]``.
    """
    log_partition = _log_partition(logits, valid)  # [B, H, W]
    if classes is None:
        num_classes, batch = logits.shape[-1], logits.shape[0]
        class_ids = jnp.broadcast_to(jnp.arange(num_classes)[:, None], (num_classes, batch))
        return log_partition, jnp.moveaxis(logits, -1, 0), class_ids  # [C, B, H, W]
    selected = jnp.take_along_axis(logits, classes[:, None, None, :], axis=-1)  # [B, H, W, K]
    return log_partition, jnp.moveaxis(selected, -1, 0), classes.T


def _scan_class_chunks(step, init, class_logits, class_ids, chunk_size: int):
    """``lax.scan`` of ``step(carry, (logits [k, B, H, W], ids [k, B]))`` over class chunks.

    The ``K`` classes are visited ``k = min(chunk_size, K)`` at a time; the ``K mod k``
    classes left over form one smaller step after the scan (no padding, so no class is
    transformed twice and no dummy class is transformed at all).

    Args:
      step: ``(carry, (logits, ids)) -> (carry, None)``.
      init: the initial carry.
      class_logits: ``[K, B, H, W]``.
      class_ids: ``[K, B]``.
      chunk_size: static classes per step.

    Returns:
      The final carry.
    """
    num_classes = class_logits.shape[0]
    chunk = max(1, min(chunk_size, num_classes))
    num_chunks, rest = divmod(num_classes, chunk)
    whole = num_chunks * chunk

    def chunked(x):  # [K, ...] -> [K // k, k, ...]
        return x[:whole].reshape(num_chunks, chunk, *x.shape[1:])

    carry, _ = jax.lax.scan(step, init, (chunked(class_logits), chunked(class_ids)))
    if rest:
        carry, _ = step(carry, (class_logits[whole:], class_ids[whole:]))
    return carry


def _sum_leading(x):
    """``x.sum(axis=0)`` as an unrolled chain of adds over the (static, small) first axis.

    A reduction over the chunk axis becomes a separate reduce kernel on XLA:CPU that
    cannot fuse the real and imaginary parts of the FFT output: it materialised four
    extra arrays per step. Adds fuse into one elementwise loop with the products.
    """
    return functools.reduce(jnp.add, [x[i] for i in range(x.shape[0])])


def _half_spectrum_of_classes(logits, labels, valid, transformed, classes, chunk_size: int):
    """Unnormalised ``Re sum_c conj(b(nu, c)) y_hat(nu, c)`` on the half spectrum.

    The classes are visited ``chunk_size`` at a time in a ``lax.scan`` that accumulates
    the ``[B, H, Kw]`` sum: each step transforms the chunk's ``2 k`` maps of ``[B, H, W]``
    (its negative log-probabilities and one-hot label maps) in one batched ``rfft2``, so
    the buffers of one step are reused by the next instead of materialising ``2 C``
    spectra: the peak memory grows with the chunk, not with ``C``. On 2 CPU cores chunks
    of 1 to 3 classes ran within noise of each other, at 1.15x (8x129x129x21) to 1.4x
    (2x513x513x21) the bare ``rfft2`` of all ``2 C`` maps under load, and larger chunks
    slower. On idle cores the gap is wider: XLA:CPU runs an FFT that follows a fusion
    split over its thread pool (here, the one that builds the FFT's maps) on a pool
    thread, which leaves the FFT one core of two, while the bare ``rfft2`` of a
    parameter gets both. ``benchmarks/README.md`` has the measurements behind
    :data:`DEFAULT_CLASS_CHUNK_SIZE` and what the remaining time goes to.

    Args:
      logits: ``[B, H, W, C]`` in the compute dtype.
      labels: ``[B, H, W]`` integers.
      valid: ``[B, H, W]`` booleans: the labelled pixels.
      transformed: ``[B, H, W]`` booleans: the pixels whose negative log-probabilities
        are transformed (:func:`_transformed_pixels`).
      classes: ``None`` for all ``C`` classes, or ``[B, K]`` class indices per image.
      chunk_size: static number of classes per step.

    Returns:
      ``[B, H, Kw]`` real, ``Kw = W // 2 + 1``.
    """
    log_partition, class_logits, class_ids = _scan_inputs(logits, transformed, classes)

    def add_chunk(total, inputs):
        logit, class_id = inputs
        y_hat, b = _class_spectra(log_partition, logit, class_id, labels, valid, transformed)
        products = y_hat.real * b.real + y_hat.imag * b.imag  # [k, B, H, Kw]
        return total + _sum_leading(products), None

    batch, height, width = labels.shape
    total = jnp.zeros((batch, height, width // 2 + 1), logits.dtype)
    return _scan_class_chunks(add_chunk, total, class_logits, class_ids, chunk_size)


def _compute_half_spectrum(logits, labels, *, settings: _CESettings):
    """The computation of :func:`ce_half_spectrum` on checked arguments (traceable)."""
    ignore_index, ignore_mode = settings.ignore_index, settings.ignore_mode
    max_classes_present = settings.max_classes_present
    class_chunk_size = settings.class_chunk_size
    _, height, width, num_classes = jnp.shape(logits)
    logits = jnp.asarray(logits, _checks.compute_dtype(jnp.result_type(logits)))
    labels = jnp.asarray(labels)
    valid = labels != ignore_index  # [B, H, W]
    transformed = _transformed_pixels(logits, valid, ignore_mode)  # [B, H, W]
    num_valid = jnp.sum(valid, axis=(1, 2))  # [B]
    # An image without valid pixels has all-zero components; max(N, 1) keeps them zero.
    scale = 1.0 / (height * width * jnp.maximum(num_valid, 1).astype(logits.dtype))

    dense = functools.partial(_half_spectrum_of_classes, classes=None, chunk_size=class_chunk_size)
    if max_classes_present is None or max_classes_present >= num_classes:
        half = dense(logits, labels, valid, transformed)
    else:
        present = _classes_present(labels, valid, num_classes)  # [B, C]
        # A stable sort of "absent" puts the present classes first, in class order; the
        # slots beyond an image's classes hold absent classes, whose terms are zero.
        classes = jnp.argsort(~present, axis=-1, stable=True)[:, :max_classes_present]
        sparse = functools.partial(
            _half_spectrum_of_classes, classes=classes, chunk_size=class_chunk_size
        )
        overflow = jnp.any(jnp.sum(present, axis=-1) > max_classes_present)
        # Documented fallback: a batch with an image of more than k classes takes the
        # exact dense path, so the result never depends on k.
        half = jax.lax.cond(overflow, dense, sparse, logits, labels, valid, transformed)
    half = half * scale[:, None, None]
    return _checks.poison_invalid_labels(half, labels, num_classes, ignore_index)


#: Largest relative Parseval error ``|sum_nu L_ce(nu) - CE| / CE`` of an image that the
#: eager CE functions accept without a :class:`ParsevalWarning`. Rounding alone gave
#: 1e-7 to 1e-6 in float32 (16 x 16 to 65 x 65 maps, 5 and 21 classes; 1e-15 in
#: float64); a sentinel logit at the ignored pixels in the ``"labels"`` mode gave about
#: 1e-8 times its value: 1e-3 at 1e5, 5e-3 to 2e-2 at 1e6, 50 to 230 at 1e10.
PARSEVAL_TOLERANCE = 1e-3


class ParsevalWarning(UserWarning):
    """The CE components of an image do not sum to its spatial CE (Parseval's identity)."""


def _parseval_error(logits, labels, half, ignore_index: int):
    """``[B]`` ``|sum_nu L_ce(nu) - CE| / CE`` of ``half [B, H, Kw]`` (0 where CE is 0).

    The CE is computed in space, over the valid pixels only, in the dtype of ``half``.
    """
    _, height, width, _ = logits.shape
    logits = jnp.asarray(logits, half.dtype)
    valid = labels != ignore_index  # [B, H, W]
    # Ignored pixels (any value, NaN padding too) do not enter the spatial CE.
    logits = jnp.where(valid[..., None], logits, 0.0)
    safe_labels = jnp.where(valid, labels, 0).astype(jnp.int32)[..., None]
    label_logits = jnp.take_along_axis(logits, safe_labels, axis=-1)[..., 0]  # [B, H, W]
    losses = jnp.where(valid, jax.nn.logsumexp(logits, axis=-1) - label_logits, 0.0)
    num_valid = jnp.maximum(jnp.sum(valid, axis=(1, 2)), 1).astype(half.dtype)
    ce = jnp.sum(losses, axis=(1, 2)) / num_valid  # [B]
    weights = bands_lib.half_spectrum_weights((height, width)).astype(half.dtype)
    total = jnp.sum(half * weights, axis=(1, 2))  # [B]
    nonzero = ce != 0
    return jnp.where(nonzero, jnp.abs(total - ce) / jnp.where(nonzero, ce, 1), 0.0)


def _half_spectrum_and_parseval_error(logits, labels, *, settings: _CESettings):
    """``(half [B, H, Kw], parseval_error [B])`` (traceable)."""
    half = _compute_half_spectrum(logits, labels, settings=settings)
    return half, _parseval_error(logits, labels, half, settings.ignore_index)


def _warn_on_parseval_error(parseval_error, name: str):
    """Warns with :class:`ParsevalWarning` for concrete errors above the tolerance.

    Traced errors (the caller's ``jit``, ``vmap``, ``grad``) cannot be read here; over a
    data set :meth:`spectral_jax.SpectralStatistics.parseval_error` records them.
    """
    if _checks.is_traced(parseval_error):
        return
    errors = np.asarray(parseval_error)
    images = np.flatnonzero(errors > PARSEVAL_TOLERANCE)  # NaN images are not flagged
    if images.size:
        warnings.warn(
            f"{name}: the CE components of image(s) {images.tolist()} do not sum to their "
            f"spatial CE (relative error up to {float(np.max(errors[images])):.3g}, "
            f"tolerance {PARSEVAL_TOLERANCE:g}): the components lost their precision, "
            "typically to large logits at ignored pixels (a padding sentinel), which the "
            'default ignore_mode="labels" transforms, or to a CE that is tiny beside the '
            'logits (a confident model). Use ignore_mode="both" or mask such logits, or '
            "compute in float64 (jax_enable_x64).",
            ParsevalWarning,
            stacklevel=3,
        )


_ce_half_spectrum = _jit_ce(_half_spectrum_and_parseval_error)


def ce_half_spectrum(
    logits: chex.Array,
    labels: chex.Array,
    *,
    ignore_index: int = IGNORE_INDEX,
    ignore_mode: IgnoreMode = DEFAULT_IGNORE_MODE,
    max_classes_present: int | None = None,
    class_chunk_size: int = DEFAULT_CLASS_CHUNK_SIZE,
    data_format: DataFormat = "NHWC",
) -> jax.Array:
    """CE components on the half spectrum that ``rfft2`` returns (the fast layout).

    ``ce_half_spectrum(...)[b, h, k]`` is ``L_ce(nu)`` for ``nu = (h, k)``,
    ``0 <= k <= W // 2``; the components of the other columns are their mirrors,
    ``L_ce(-nu) = L_ce(nu)``. Summing over all frequencies is summing this array weighted
    by :func:`spectral_jax.bands.half_spectrum_weights` along the last axis. See
    :func:`ce_spectrum` for the definition, arguments and errors.

    Returns:
      ``[B, H, Kw]`` float32 (float64 for float64 logits), ``Kw = W // 2 + 1``.
    """
    settings = _CESettings(
        ignore_index=ignore_index,
        ignore_mode=ignore_mode,
        max_classes_present=max_classes_present,
        class_chunk_size=class_chunk_size,
        data_format=data_format,
    )
    return settings.call(_ce_half_spectrum, logits, labels, parseval_name="ce_half_spectrum")


def _full_from_half(half, width: int):
    """``[B, H, W]`` from ``[B, H, Kw]`` via ``L(-nu) = L(nu)``."""
    height = half.shape[-2]
    mirrored_rows = (-np.arange(height)) % height
    mirrored_cols = width - np.arange(width // 2 + 1, width)  # columns W//2+1 .. W-1
    rest = half[..., mirrored_rows, :][..., mirrored_cols]
    return jnp.concatenate([half, rest], axis=-1)


@_jit_ce
def _ce_spectrum(logits, labels, *, settings):
    half, parseval_error = _half_spectrum_and_parseval_error(logits, labels, settings=settings)
    return _full_from_half(half, logits.shape[2]), parseval_error


def ce_spectrum(
    logits: chex.Array,
    labels: chex.Array,
    *,
    ignore_index: int = IGNORE_INDEX,
    ignore_mode: IgnoreMode = DEFAULT_IGNORE_MODE,
    max_classes_present: int | None = None,
    class_chunk_size: int = DEFAULT_CLASS_CHUNK_SIZE,
    data_format: DataFormat = "NHWC",
) -> jax.Array:
    r"""Frequency components ``L_ce(nu)`` of each image's cross-entropy (Eq. 5).

    .. math::

       \mathcal{L}_{ce}(\nu) = \frac{1}{N H W}\,
       \mathrm{Re} \sum_c \overline{b(\nu,c)}\,\big(y_p(\nu) - y(\nu,c)\big),

    normalised so that ``ce_spectrum(...).sum((-2, -1))`` is each image's mean CE over
    its ``N`` valid pixels (Parseval). Components are real and even in ``nu``; they can be
    negative away from ``nu = 0``.

    Compiled once per shape, dtype and setting, also when called eagerly (module
    docstring); calling it under ``jax.jit`` costs the same.

    Args:
      logits: ``[B, H, W, C]`` floating logits (``[B, C, H, W]`` with
        ``data_format="NCHW"``): a JAX or NumPy array, or a CPU PyTorch tensor (read
        through ``__array__``/``__dlpack__``; torch is not imported). float16 and
        bfloat16 logits are upcast to float32 (exact; the result equals that of
        ``logits.astype(jnp.float32)``), float32 logits are transformed in float32, and
        float64 logits (with ``jax_enable_x64``, on CPU or GPU) in float64; float64
        NumPy logits with x64 off are computed in float32 and warn once per process.
      labels: ``[B, H, W]`` integer labels in ``[0, C)`` or ``ignore_index`` (any array
        type, as ``logits``).
      ignore_index: label of pixels without a class: their one-hot labels are zero.
        Must lie outside ``[0, C)``. Static.
      ignore_mode: ``"labels"`` (default, the paper's Eq. 1: the negative
        log-probabilities of every pixel are transformed, the labels of ignored pixels
        are zero) or ``"both"`` (the negative log-probabilities are zeroed at ignored
        pixels too). The total CE is the same; the components differ (module
        docstring). ``"labels"`` suits logits that the network computed at every pixel
        (a forward pass over the whole image, boundaries marked ignored, as PASCAL
        VOC's): the components then see what it predicts there. It does not suit
        logits that hold a fill value at ignored pixels (padding set to a large
        sentinel such as 1e6): the components read the sentinel, so they mean nothing,
        and float32 loses the CE under it; use ``"both"`` for such inputs (NaN or Inf
        fills are harmless in either mode). Eager calls warn
        (:class:`ParsevalWarning`) when an image's components miss its spatial CE by
        more than :data:`PARSEVAL_TOLERANCE` (relative); under ``jit`` nothing is read
        back, and :meth:`spectral_jax.SpectralStatistics.parseval_error` records the
        error over a data set. Static.
      max_classes_present: static bound ``k`` on the number of classes per image. When
        given, only the classes present in each image are transformed (exact, since
        absent classes have ``b = 0``), about ``k / C`` of the dense cost. If an image
        of the batch holds more than ``k`` classes, the whole batch falls back to the
        dense path (still exact; it costs the dense time, and under ``vmap`` both paths
        run).
      class_chunk_size: static number of classes transformed together per step of the
        scan over classes. Each step holds ``2 class_chunk_size`` real maps
        ``[B, H, W]`` and their complex half spectra ``[B, H, Kw]``, beyond the inputs,
        their class-major copy and the result: the memory grows with the chunk, not
        with ``C``. Larger chunks batch more FFTs per step (the default was the fastest
        measured on 2 CPU cores, ``benchmarks/README.md``). The result does not depend
        on it beyond rounding.
      data_format: ``"NHWC"`` (default, channels last as Flax convolutions give them) or
        ``"NCHW"`` (channels first, as PyTorch's). Static; the axis is moved inside the
        compiled computation.

    Returns:
      ``[B, H, W]`` float32 (float64 for float64 logits) in DFT (unshifted) order; use
      :func:`spectral_jax.centered_spectrum` to plot it.

    Raises:
      TypeError: non-floating ``logits`` or non-integer ``labels``.
      ValueError: float64 ``logits`` on a backend without float64 (TPU: cast them to
        float32, or run on CPU with ``jax_enable_x64``); wrong ranks, ``[B, H, W]``
        mismatch (saying so when the shape looks channels first), a bad
        ``data_format``, ``ignore_index`` inside
        ``[0, C)``, a bad ``max_classes_present`` or ``class_chunk_size``, or (eagerly) a
        label outside ``[0, C)``. Under ``jit`` the images with such a label get NaN
        components. NaN or Inf logits at valid pixels make the image's components
        non-finite (NaN, or Inf at ``nu = 0``); at ignored pixels they are ignored, also
        by gradients (``"labels"``: such a pixel's log-probabilities are taken as 0).
        A bad ``ignore_mode`` raises ``ValueError``.

    Warns:
      ParsevalWarning: (eager calls) an image's components sum to its spatial CE only
        within more than :data:`PARSEVAL_TOLERANCE`, relative (see ``ignore_mode``).

    Example:
      >>> import optax
      >>> rng = np.random.default_rng(0)
      >>> logits = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)  # [B, H, W, C]
      >>> labels = rng.integers(0, 3, size=(2, 8, 8))  # [B, H, W]
      >>> spectrum = jax.jit(ce_spectrum)(logits, labels)
      >>> spectrum.shape, spectrum.dtype
      ((2, 8, 8), dtype('float32'))
      >>> ce = spectrum.sum(axis=(1, 2))  # [B] mean CE per image (Parseval)
      >>> spatial = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      >>> np.allclose(ce, spatial.mean(axis=(1, 2)), atol=1e-5)
      True
    """
    settings = _CESettings(
        ignore_index=ignore_index,
        ignore_mode=ignore_mode,
        max_classes_present=max_classes_present,
        class_chunk_size=class_chunk_size,
        data_format=data_format,
    )
    return settings.call(_ce_spectrum, logits, labels, parseval_name="ce_spectrum")


def _band_sums(half, shape, radius: Radius):
    """``[B, R]``: weighted half-spectrum sums per band."""
    index = bands_lib.half_band_index(shape, radius=radius)  # [H, Kw]
    weights = bands_lib.half_spectrum_weights(shape)  # [Kw]
    batch, height, half_width = half.shape
    weighted = (half * weights.astype(half.dtype)).reshape(batch, height * half_width)
    num = bands_lib.num_bands(shape, radius=radius)
    return jax.vmap(lambda row: jax.ops.segment_sum(row, index.ravel(), num_segments=num))(weighted)


def _compute_band_profile(logits, labels, *, settings: _CESettings):
    """``(profile [B, R], parseval_error [B])``."""
    half, parseval_error = _half_spectrum_and_parseval_error(logits, labels, settings=settings)
    return _band_sums(half, logits.shape[1:3], settings.radius), parseval_error


_band_profile = _jit_ce(_compute_band_profile)


def band_profile(
    logits: chex.Array,
    labels: chex.Array,
    *,
    ignore_index: int = IGNORE_INDEX,
    ignore_mode: IgnoreMode = DEFAULT_IGNORE_MODE,
    radius: Radius = "chebyshev",
    max_classes_present: int | None = None,
    class_chunk_size: int = DEFAULT_CLASS_CHUNK_SIZE,
    data_format: DataFormat = "NHWC",
) -> jax.Array:
    r"""Sum of the CE components in each band (the paper's Fig. 1 and 2).

    .. math:: P(r) = \sum_{\mathrm{band}(\nu) = r} \mathcal{L}_{ce}(\nu)

    Args:
      logits, labels, ignore_index, ignore_mode, max_classes_present, class_chunk_size,
        data_format: as in :func:`ce_spectrum`.
      radius: ``"chebyshev"`` (``max(|nu_h|, |nu_w|)``) or ``"euclidean"``
        (see :mod:`spectral_jax.bands`). Static.

    Returns:
      ``[B, R]``, ``R = num_bands((H, W), radius=radius)``; each row sums to the image's
      mean CE.
    """
    settings = _CESettings(
        ignore_index=ignore_index,
        ignore_mode=ignore_mode,
        max_classes_present=max_classes_present,
        class_chunk_size=class_chunk_size,
        radius=radius,
        data_format=data_format,
    )
    return settings.call(_band_profile, logits, labels, parseval_name="band_profile")


def _truncate_profile(profile, band_limit):
    """``[B]`` sums of the bands ``<= band_limit`` of ``profile [B, R]``.

    Selecting among the ``R`` band sums, not among the ``H * Kw`` frequencies, keeps
    ``vmap`` over band limits at ``[N, B, R]`` work instead of ``[N, B, H, Kw]``.
    """
    bands = jnp.arange(profile.shape[-1])
    if jnp.issubdtype(jnp.result_type(band_limit), jnp.unsignedinteger):
        # int32 bands against a uint32 limit compare in int32 without x64, where 2**31
        # and above wrap negative: clipped first, as _check_band_limit clips the others.
        band_limit = jnp.minimum(band_limit, _BAND_LIMIT_BOUNDS[1]).astype(jnp.int32)
    total = jnp.sum(jnp.where(bands <= band_limit, profile, 0.0), axis=-1)
    if jnp.issubdtype(jnp.result_type(band_limit), jnp.floating):
        # A NaN band limit selects no band; without this the truncated CE would be 0 and
        # R would be 1, a plausible number.
        total = jnp.where(jnp.isnan(band_limit), jnp.nan, total)
    return total


# A band limit only selects bands, so any integer beyond these bounds selects the same
# bands as the bound (there are far fewer than 2**31 bands); clipping concrete Python and
# NumPy integers keeps them within int32 when x64 is off.
_BAND_LIMIT_BOUNDS = (-1, np.iinfo(np.int32).max)


def _check_band_limit(band_limit):
    """Checks a scalar band limit and returns it as the computation takes it.

    Raises:
      TypeError: naming ``band_limit`` for a string, a bool or a non-real value.
      ValueError: naming ``band_limit`` for a non-scalar, or a concrete NaN.
    """
    band_limit = _checks.as_array(band_limit, "band_limit")  # a 0-d PyTorch tensor, say
    if isinstance(band_limit, str | bytes | bool | np.bool_) or not (
        isinstance(band_limit, int | float | np.number | np.ndarray | jax.Array)
    ):
        raise TypeError(
            f"band_limit must be a real number (an int or a float), got {band_limit!r} "
            f"of type {type(band_limit).__name__}."
        )
    dtype = jnp.result_type(band_limit)
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
        raise TypeError(f"band_limit must be an integer or floating value, got dtype {dtype}.")
    if jnp.ndim(band_limit) != 0:
        raise ValueError(
            f"band_limit must be a scalar (vmap over band limits instead), got shape "
            f"{jnp.shape(band_limit)}."
        )
    if _checks.is_traced(band_limit):
        return band_limit  # a traced NaN gives NaN (see _truncate_profile)
    if isinstance(band_limit, int | np.integer | np.ndarray) and jnp.issubdtype(
        dtype, jnp.integer
    ):  # Python, NumPy scalar or 0-d NumPy integers (JAX's are int32 already)
        low, high = _BAND_LIMIT_BOUNDS
        clipped = min(max(int(band_limit), low), high)
        if isinstance(band_limit, np.ndarray):
            return np.asarray(clipped, band_limit.dtype)
        return type(band_limit)(clipped)
    if np.isnan(np.asarray(band_limit)):
        raise ValueError("band_limit is NaN; it must be a number (the largest band kept).")
    return band_limit


@_jit_ce
def _truncated_ce(logits, labels, band_limit, *, settings):
    profile, parseval_error = _compute_band_profile(logits, labels, settings=settings)
    return _truncate_profile(profile, band_limit), parseval_error


def truncated_ce(
    logits: chex.Array,
    labels: chex.Array,
    band_limit: chex.Numeric,
    *,
    ignore_index: int = IGNORE_INDEX,
    ignore_mode: IgnoreMode = DEFAULT_IGNORE_MODE,
    radius: Radius = "chebyshev",
    max_classes_present: int | None = None,
    class_chunk_size: int = DEFAULT_CLASS_CHUNK_SIZE,
    data_format: DataFormat = "NHWC",
) -> jax.Array:
    r"""Truncated CE: the components inside a band limit (Eq. 13).

    .. math::
       \hat{\mathcal{L}}_{ce}(\nu_{max}) = \sum_{\mathrm{band}(\nu) \le \nu_{max}}
       \mathcal{L}_{ce}(\nu)

    Differentiable in ``logits``: its gradient is the loss a band-limited training uses.

    Args:
      logits, labels, ignore_index, ignore_mode, max_classes_present, class_chunk_size,
        data_format: as in :func:`ce_spectrum`.
      band_limit: scalar ``nu_max``; a traced value (it only selects), so
        ``jax.vmap`` over band limits compiles once, and so does a loop over band limits
        of one type (a Python int, say). A band limit at or above the last band gives
        the full CE; a negative one gives 0. A NaN band limit raises ``ValueError``
        (concrete) or gives NaN (traced); a string or bool raises ``TypeError``.
      radius: band radius, as in :func:`band_profile`.

    Returns:
      ``[B]`` truncated CE per image.
    """
    band_limit = _check_band_limit(band_limit)
    settings = _CESettings(
        ignore_index=ignore_index,
        ignore_mode=ignore_mode,
        max_classes_present=max_classes_present,
        class_chunk_size=class_chunk_size,
        radius=radius,
        data_format=data_format,
    )
    return settings.call(_truncated_ce, logits, labels, band_limit, parseval_name="truncated_ce")


def _relative(truncated, total, per_image: bool):
    """``|T - L| / L``, per image or as a ratio of batch sums; 0 where ``L == 0``."""
    if not per_image:
        truncated, total = jnp.sum(truncated, axis=0), jnp.sum(total, axis=0)
    nonzero = total != 0
    return jnp.where(nonzero, jnp.abs(truncated - total) / jnp.where(nonzero, total, 1), 0.0)


@_jit_ce
def _relative_discrepancy(logits, labels, band_limit, *, settings):
    profile, parseval_error = _compute_band_profile(logits, labels, settings=settings)
    truncated = _truncate_profile(profile, band_limit)
    return _relative(truncated, jnp.sum(profile, axis=-1), settings.per_image), parseval_error


def relative_discrepancy(
    logits: chex.Array,
    labels: chex.Array,
    band_limit: chex.Numeric,
    *,
    ignore_index: int = IGNORE_INDEX,
    ignore_mode: IgnoreMode = DEFAULT_IGNORE_MODE,
    radius: Radius = "chebyshev",
    per_image: bool = False,
    max_classes_present: int | None = None,
    class_chunk_size: int = DEFAULT_CLASS_CHUNK_SIZE,
    data_format: DataFormat = "NHWC",
) -> jax.Array:
    r"""Relative discrepancy ``R(nu_max)`` of the truncated CE from the CE (Eq. 14).

    .. math::
       R(\nu_{max}) = \left|\frac{\sum_i \hat{\mathcal{L}}_{ce,i}(\nu_{max})
       - \sum_i \mathcal{L}_{ce,i}}{\sum_i \mathcal{L}_{ce,i}}\right|

    over the images ``i`` of the batch (a ratio of means, as Table 1 reports it), or per
    image with ``per_image=True``. ``R`` is defined as 0 where the CE is 0 (for example an
    image with no valid pixel: all its components are 0).

    Args:
      logits, labels, ignore_index, ignore_mode, max_classes_present, class_chunk_size,
        data_format: as in :func:`ce_spectrum`.
      band_limit: scalar ``nu_max``, traced (``vmap`` over it compiles once); checked
        as in :func:`truncated_ce` (a traced NaN gives NaN).
      radius: band radius, as in :func:`band_profile`.
      per_image: return ``[B]`` per-image ratios instead of the batch ratio. Static.

    Returns:
      Scalar, or ``[B]`` with ``per_image=True``.
    """
    band_limit = _check_band_limit(band_limit)
    settings = _CESettings(
        ignore_index=ignore_index,
        ignore_mode=ignore_mode,
        max_classes_present=max_classes_present,
        class_chunk_size=class_chunk_size,
        radius=radius,
        per_image=per_image,
        data_format=data_format,
    )
    return settings.call(
        _relative_discrepancy, logits, labels, band_limit, parseval_name="relative_discrepancy"
    )


def _compute_sweep(profile, per_image: bool):
    profile = jnp.asarray(profile, _checks.compute_dtype(jnp.result_type(profile)))
    truncated = jnp.cumsum(profile, axis=-1)
    total = truncated[..., -1:]
    if not per_image:
        return _relative(jnp.moveaxis(truncated, -2, 0), jnp.moveaxis(total, -2, 0), False)
    return _relative(truncated, total, True)


_sweep_from_band_profile = jax.jit(_compute_sweep, static_argnames="per_image")


def sweep_from_band_profile(profile: chex.Array, *, per_image: bool = False) -> jax.Array:
    """``R(nu_max)`` for every band limit from band profiles ``[..., B, R]``.

    The truncated CE at ``nu_max`` is the cumulative sum of the profile up to band
    ``nu_max``; the CE is the sum over all bands, so ``R`` at the last band is exactly 0.

    Args:
      profile: ``[B, R]`` band sums (:func:`band_profile`), or any ``[..., B, R]``;
        float16 and bfloat16 are summed in float32, float64 (``jax_enable_x64``) in
        float64.
      per_image: keep the image axis (``[..., B, R]``) instead of the ratio of batch
        means (``[..., R]``). Static.

    Returns:
      ``[..., R]`` (or ``[..., B, R]``): entry ``r`` is ``R(nu_max = r)``.

    Raises:
      TypeError: non-floating ``profile``.
      ValueError: a ``profile`` of rank below 2 or above 4; float64 on a TPU backend.
    """
    profile = _checks.as_array(profile, "profile")
    _checks.check_floating(profile, "profile")
    if jnp.ndim(profile) not in (2, 3, 4):  # chex's check costs a call's worth: only on failure
        chex.assert_rank(profile, {2, 3, 4})
    return _sweep_from_band_profile(profile, per_image=per_image)


@_jit_ce
def _band_limit_sweep(logits, labels, *, settings):
    profile, parseval_error = _compute_band_profile(logits, labels, settings=settings)
    return _compute_sweep(profile, settings.per_image), parseval_error


def band_limit_sweep(
    logits: chex.Array,
    labels: chex.Array,
    *,
    ignore_index: int = IGNORE_INDEX,
    ignore_mode: IgnoreMode = DEFAULT_IGNORE_MODE,
    radius: Radius = "chebyshev",
    per_image: bool = False,
    max_classes_present: int | None = None,
    class_chunk_size: int = DEFAULT_CLASS_CHUNK_SIZE,
    data_format: DataFormat = "NHWC",
) -> jax.Array:
    """``R(nu_max)`` at every band limit ``0`` to ``R - 1`` from one decomposition.

    One :func:`band_profile` and a cumulative sum over bands: about the cost of one
    decomposition, however many band limits. Entry ``r`` equals
    ``relative_discrepancy(logits, labels, r)``.

    Args:
      logits, labels, ignore_index, ignore_mode, max_classes_present, class_chunk_size,
        data_format: as in :func:`ce_spectrum`.
      radius: band radius, as in :func:`band_profile`.
      per_image: ``[B, R]`` per-image ratios instead of the ``[R]`` ratio of batch means.
        Static.

    Returns:
      ``[R]`` (or ``[B, R]``); the last entry is 0.
    """
    settings = _CESettings(
        ignore_index=ignore_index,
        ignore_mode=ignore_mode,
        max_classes_present=max_classes_present,
        class_chunk_size=class_chunk_size,
        radius=radius,
        per_image=per_image,
        data_format=data_format,
    )
    return settings.call(_band_limit_sweep, logits, labels, parseval_name="band_limit_sweep")


class MagnitudeProfiles(NamedTuple):
    """Class-averaged spectral magnitudes per band (the paper's Fig. 1 curves).

    Attributes:
      labels: ``[B, R]`` band means of ``mean_c |b(nu, c)| / (H W)``.
      logits: ``[B, R]`` band means of ``mean_c |y_hat(nu, c)| / (H W)``.
    """

    labels: jax.Array
    logits: jax.Array


@_jit_ce
def _magnitude_profiles(logits, labels, *, settings):
    ignore_index, ignore_mode, radius = settings.ignore_index, settings.ignore_mode, settings.radius
    class_chunk_size = settings.class_chunk_size
    _, height, width, num_classes = logits.shape
    logits = jnp.asarray(logits, _checks.compute_dtype(jnp.result_type(logits)))
    valid = labels != ignore_index  # [B, H, W]
    transformed = _transformed_pixels(logits, valid, ignore_mode)  # [B, H, W]
    log_partition, class_logits, class_ids = _scan_inputs(logits, transformed, None)

    def add_chunk(totals, inputs):  # a chunk of classes per step, as in the CE
        logit, class_id = inputs
        spectra = _class_spectra(log_partition, logit, class_id, labels, valid, transformed)
        return totals + _sum_leading(jnp.moveaxis(jnp.abs(spectra), 1, 0)), None

    batch = labels.shape[0]
    totals = jnp.zeros((2, batch, height, width // 2 + 1), logits.dtype)
    totals = _scan_class_chunks(add_chunk, totals, class_logits, class_ids, class_chunk_size)
    shape = (height, width)
    sizes = bands_lib.band_sizes(shape, radius=radius).astype(logits.dtype)
    norm = 1.0 / (num_classes * height * width)
    logit_profile, label_profile = (
        _band_sums(total * norm, shape, radius) / sizes for total in totals
    )
    result = MagnitudeProfiles(labels=label_profile, logits=logit_profile)
    return jax.tree.map(
        lambda x: _checks.poison_invalid_labels(x, labels, num_classes, ignore_index), result
    )


def magnitude_profiles(
    logits: chex.Array,
    labels: chex.Array,
    *,
    ignore_index: int = IGNORE_INDEX,
    ignore_mode: IgnoreMode = DEFAULT_IGNORE_MODE,
    radius: Radius = "chebyshev",
    class_chunk_size: int = DEFAULT_CLASS_CHUNK_SIZE,
    data_format: DataFormat = "NHWC",
) -> MagnitudeProfiles:
    r"""Class-averaged magnitude profiles ``|b(nu)|`` and ``|y_hat(nu)|`` (Fig. 1).

    The paper plots ``|b(nu)|`` and ``|y_hat(nu)|`` "averaged over all semantic classes".
    The mean of the *complex* ``b(nu, c)`` over classes is the spectrum of the valid mask
    divided by ``C`` (the one-hot maps sum to it), which carries no class information, so
    the magnitudes are averaged instead, then over the frequencies of each band:

    .. math::
       |b|(r) = \frac{1}{|\{\nu : \mathrm{band}(\nu) = r\}|}
       \sum_{\mathrm{band}(\nu) = r} \frac{1}{C} \sum_c \frac{|b(\nu, c)|}{H W}

    and likewise for ``y_hat = DFT(Y_p - Y)``. The ``1 / (H W)`` makes ``|b|(0)`` the
    mean over classes of the fraction of valid pixels with that class. Ignored pixels
    enter the maps as ``ignore_mode`` says, as in :func:`ce_spectrum`. All ``C`` classes
    are transformed.

    Args:
      logits, labels, ignore_index, ignore_mode, class_chunk_size, data_format: as in
        :func:`ce_spectrum`.
      radius: band radius, as in :func:`band_profile`.

    Returns:
      :class:`MagnitudeProfiles` of two ``[B, R]`` arrays.
    """
    settings = _CESettings(
        ignore_index=ignore_index,
        ignore_mode=ignore_mode,
        class_chunk_size=class_chunk_size,
        radius=radius,
        data_format=data_format,
    )
    return settings.call(_magnitude_profiles, logits, labels)
