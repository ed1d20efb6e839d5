r"""Spectral form of the intersection-over-union score (main paper, Sec. 2.2, Eq. 6-8).

For one class, a soft segmentation ``S(t)`` and the label map ``B(t)``, the continuous
IoU of Eq. 6 is ``int B S / (int B + int S - int B S)``. In the frequency domain
(Eq. 7-8), with ``s = DFT(S)`` and ``b = DFT(B)`` on an ``H x W`` grid,

.. math::

   \mathrm{IoU}(s, b) = \frac{1}{\frac{s(0) + b(0)}{O} - 1}, \qquad
   O = \frac{1}{H W} \sum_\nu \mathrm{Re}\,\overline{b(\nu)}\, s(\nu)
     = \sum_t B(t) S(t),

since ``s(0) = sum_t S(t)`` and ``b(0) = sum_t B(t)``. This equals the spatial soft
IoU; for binarised maps (``S`` one-hot of the arg-max) it is the usual hard IoU.
Ignored pixels are removed from both maps. There is no ``ignore_mode`` here (unlike the CE
decomposition, :func:`spectral_jax.ce_spectrum`): the paper equates its Eq. 6 with the
benchmarks' IoU, which leaves an ignored pixel's prediction out of the union as well;
keeping ``S`` there would count predictions on unlabelled pixels as false positives.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import _checks
from spectral_jax import bands as bands_lib
from spectral_jax._checks import IGNORE_INDEX, DataFormat


def _checked(probs, labels, ignore_index: int, data_format: str):
    """``(probs, labels)`` as arrays (a CPU PyTorch tensor is read), checked."""
    probs = _checks.as_array(probs, "probs")
    labels = _checks.as_array(labels, "labels")
    _checks.check_logits_and_labels(
        probs, labels, ignore_index=ignore_index, logits_name="probs", data_format=data_format
    )
    return probs, labels


class IoUTerms(NamedTuple):
    """The three terms of Eq. 8, per image and class (each ``[B, C]``).

    Attributes:
      overlap: ``O = (1/HW) sum_nu Re conj(b(nu)) s(nu)`` (the intersection).
      prediction_mass: ``s(0)``, the summed prediction.
      label_mass: ``b(0)``, the number of labelled pixels.
    """

    overlap: jax.Array
    prediction_mass: jax.Array
    label_mass: jax.Array


def _probability_violations(probs, valid):
    """Per image ``[B]``: NaN values and finite values outside ``[0, 1]`` of ``probs`` at
    the ``valid [B, H, W]`` pixels; and the range of the finite values there (scalars)."""
    valid = valid[..., None]
    nan = jnp.isnan(probs)
    outside = ~nan & ((probs < 0) | (probs > 1))
    finite = jnp.where(valid & ~nan, probs, 0.5)
    per_image = lambda x: jnp.sum(x & valid, axis=(1, 2, 3))  # noqa: E731
    return per_image(nan), per_image(outside), jnp.min(finite), jnp.max(finite)


def _raise_for_violations(violations, binarize: bool) -> None:
    """Raises ``ValueError`` naming ``probs`` for concrete values that are not probabilities
    (with ``binarize``, only for NaN: the arg-max of any real scores is a prediction).

    Called after the jitted computation, which also returns the counts (one compilation);
    traced values are not checked here: the computation gives NaN for their images.
    """
    if any(_checks.is_traced(v) for v in violations):
        return
    num_nan, num_outside, low, high = jax.device_get(violations)
    num_nan, num_outside = np.sum(num_nan), np.sum(num_outside)
    if int(num_nan):
        raise ValueError(f"probs holds {int(num_nan)} NaN value(s) at labelled pixels.")
    if int(num_outside) and not binarize:
        raise ValueError(
            f"probs must be probabilities in [0, 1] (apply jax.nn.softmax to logits); "
            f"{int(num_outside)} value(s) at labelled pixels lie outside, in "
            f"[{float(low):.4g}, {float(high):.4g}]."
        )


def _compute_iou_terms(probs, labels, *, ignore_index: int, binarize: bool, data_format: str):
    """The computation of :func:`spectral_iou_terms` on checked arguments.

    Returns:
      ``(terms, violations)``: :class:`IoUTerms`, NaN for the images whose ``probs`` are
      NaN or (soft IoU) outside ``[0, 1]`` at a valid pixel, and
      :func:`_probability_violations` for the eager error message.
    """
    probs = _checks.to_channels_last(probs, data_format)  # [B, H, W, C]
    _, height, width, num_classes = probs.shape
    probs = jnp.asarray(probs, _checks.compute_dtype(jnp.result_type(probs)))
    valid = labels != ignore_index  # [B, H, W]
    # Checked before the arg-max, which would turn a NaN into a class. The hard IoU reads
    # only the arg-max, so any real scores are valid there.
    violations = _probability_violations(probs, valid)
    num_nan, num_outside = violations[:2]  # [B] each
    bad_images = (num_nan > 0) if binarize else (num_nan + num_outside > 0)  # [B]
    if binarize:
        probs = jax.nn.one_hot(jnp.argmax(probs, axis=-1), num_classes, dtype=probs.dtype)
    weights = bands_lib.half_spectrum_weights((height, width)).astype(probs.dtype)

    def class_terms(_, inputs):  # one class per step: two [B, H, W] maps transformed
        prediction, class_id = inputs  # [B, H, W], []
        prediction = jnp.where(valid, prediction, 0.0)  # [B, H, W]
        target = (valid & (labels == class_id)).astype(probs.dtype)
        s, b = jnp.fft.rfft2(jnp.stack([prediction, target]))  # [B, H, Kw] each
        overlap = jnp.sum((s.real * b.real + s.imag * b.imag) * weights, axis=(-2, -1))
        return None, (overlap / (height * width), s[:, 0, 0].real, b[:, 0, 0].real)

    inputs = (jnp.moveaxis(probs, -1, 0), jnp.arange(num_classes))  # [C, B, H, W], [C]
    _, per_class = jax.lax.scan(class_terms, None, inputs)  # 3 x [C, B]
    terms = IoUTerms(*(term.T for term in per_class))  # 3 x [B, C]
    terms = jax.tree.map(lambda x: jnp.where(bad_images[:, None], jnp.nan, x), terms)
    terms = jax.tree.map(
        lambda x: _checks.poison_invalid_labels(x, labels, num_classes, ignore_index), terms
    )
    return terms, violations


def spectral_iou_terms(
    probs: chex.Array,
    labels: chex.Array,
    *,
    ignore_index: int = IGNORE_INDEX,
    binarize: bool = False,
    data_format: DataFormat = "NHWC",
) -> IoUTerms:
    """The terms ``O``, ``s(0)``, ``b(0)`` of the spectral IoU (Eq. 7-8).

    Sum them over images to get a data set's IoU (:func:`iou_from_terms`). Compiled once
    per shape, dtype and setting, also when called eagerly (as
    :func:`spectral_jax.ce_spectrum`).

    Args:
      probs: ``[B, H, W, C]`` soft segmentation ``S`` (probabilities in ``[0, 1]``;
        ``[B, C, H, W]`` with ``data_format="NCHW"``); array types and dtypes as the
        logits of :func:`spectral_jax.ce_spectrum` (a CPU PyTorch tensor is read too;
        float16 and bfloat16 upcast to float32, float64 with ``jax_enable_x64`` kept).
      labels: ``[B, H, W]`` integer labels in ``[0, C)`` or ``ignore_index``.
      ignore_index: label of pixels left out of both maps. Static.
      binarize: replace ``S`` with the one-hot of its arg-max over classes (hard IoU).
        Static.
      data_format: ``"NHWC"`` (default) or ``"NCHW"``, as in
        :func:`spectral_jax.ce_spectrum`. Static.

    Returns:
      :class:`IoUTerms` of ``[B, C]`` arrays.

    Raises:
      TypeError, ValueError: as :func:`spectral_jax.ce_spectrum` for bad inputs, and
        ``ValueError`` for concrete ``probs`` with a NaN or (``binarize=False``) a value
        outside ``[0, 1]`` at a labelled pixel (logits, say). Under ``jit`` such an
        image's terms are NaN. With ``binarize=True`` only the arg-max is read, so any
        real scores (logits too) are accepted.
    """
    probs, labels = _checked(probs, labels, ignore_index, data_format)
    terms, violations = _checked_iou_terms(
        probs, labels, ignore_index=ignore_index, binarize=binarize, data_format=data_format
    )
    _raise_for_violations(violations, binarize)
    return terms


def iou_from_terms(terms: IoUTerms) -> jax.Array:
    """IoU ``O / (s(0) + b(0) - O)`` from :class:`IoUTerms` of any shape ``[..., C]``.

    Args:
      terms: the summed terms; counts (integers), float16 and bfloat16 are computed in
        float32, float64 (``jax_enable_x64``) in float64.

    Returns:
      ``[..., C]``; NaN where the union is 0 (the class is in neither map), so that
      ``jnp.nanmean`` over classes gives the mean IoU of the classes that occur.

    Raises:
      ValueError: float64 terms on a backend without float64 (TPU).
    """
    terms = IoUTerms(
        *(
            _checks.as_array(term, f"terms.{name}")
            for name, term in zip(IoUTerms._fields, terms, strict=True)
        )
    )
    dtype = _checks.compute_dtype(jnp.result_type(*terms))
    if dtype == jnp.float64:
        _checks.check_float64_available("terms")
    terms = IoUTerms(*(jnp.asarray(term, dtype) for term in terms))
    union = terms.prediction_mass + terms.label_mass - terms.overlap
    nonzero = union != 0
    return jnp.where(nonzero, terms.overlap / jnp.where(nonzero, union, 1), jnp.nan)


def spectral_iou(
    probs: chex.Array,
    labels: chex.Array,
    *,
    ignore_index: int = IGNORE_INDEX,
    binarize: bool = False,
    data_format: DataFormat = "NHWC",
) -> jax.Array:
    r"""Per-image, per-class IoU through its spectral form (Eq. 8).

    .. math:: \mathrm{IoU}(s, b) = \frac{1}{\frac{s(0) + b(0)}{O} - 1},\quad
       O = \frac{1}{HW}\sum_\nu \mathrm{Re}\,\overline{b(\nu)}\,s(\nu)

    Equal to the spatial soft IoU ``sum B S / (sum B + sum S - sum B S)``; with
    ``binarize=True``, to the hard IoU of the arg-max prediction.

    Args:
      probs: ``[B, H, W, C]`` soft segmentation (for example ``jax.nn.softmax(logits)``);
        layouts, array types and dtypes as in :func:`spectral_iou_terms`.
      labels: ``[B, H, W]`` integer labels in ``[0, C)`` or ``ignore_index``.
      ignore_index: label of pixels left out. Static.
      binarize: use the one-hot of the arg-max prediction (hard IoU). Static.
      data_format: ``"NHWC"`` (default) or ``"NCHW"``. Static.

    Returns:
      ``[B, C]``; NaN where a class is in neither the prediction nor the labels.

    Raises:
      TypeError, ValueError: as :func:`spectral_jax.ce_spectrum` for bad inputs, and as
        :func:`spectral_iou_terms`: ``probs`` must be NaN-free at labelled pixels and,
        for the soft IoU, in ``[0, 1]``; under ``jit`` an image breaking this gets NaN.

    Example:
      >>> labels = jnp.array([[[0, 0], [1, 1]]])  # [B, H, W] = [1, 2, 2]
      >>> probs = jax.nn.one_hot(jnp.array([[[0, 1], [1, 1]]]), 2)  # [B, H, W, C]
      >>> iou = spectral_iou(probs, labels)  # [B, C]
      >>> iou.tolist()  # 1 / 2 and 2 / 3, as counted in space
      [[0.5, 0.667]]
      >>> jnp.nanmean(iou, axis=-1).tolist()  # [B] mean IoU
      [0.583]
    """
    probs, labels = _checked(probs, labels, ignore_index, data_format)
    iou, violations = _spectral_iou(
        probs, labels, ignore_index=ignore_index, binarize=binarize, data_format=data_format
    )
    _raise_for_violations(violations, binarize)
    return iou


_STATIC = ("ignore_index", "binarize", "data_format")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _spectral_iou(probs, labels, **settings):
    terms, violations = _compute_iou_terms(probs, labels, **settings)
    return iou_from_terms(terms), violations


_checked_iou_terms = jax.jit(_compute_iou_terms, static_argnames=_STATIC)
