"""Independent float64 NumPy references for the tests (no ``spectral_jax`` imports).

Everything here is written from the definitions in the paper (Sec. 2.1, 2.2, 2.4, 3.1)
and the conventions of the module docstrings, with the slow, obvious method: the full
``numpy.fft.fft2`` spectrum (never ``rfft2``), bands from explicit loops over signed
frequencies, and cross-entropy from ``log_softmax`` in the spatial domain.

Shapes: ``logits [B, H, W, C]``, ``labels [B, H, W]``; ``ignore_index`` pixels count for
nothing (neither in the one-hot map, nor in the negative log-probabilities, nor in ``N``).
"""

from __future__ import annotations

import math

import numpy as np


def signed_frequency(k: int, n: int) -> int:
    """Signed DFT frequency of index ``k`` on an axis of length ``n``."""
    return k if k <= (n - 1) // 2 else k - n


def band_of(nu_h: int, nu_w: int, radius: str) -> int:
    """Band (radius) of one signed frequency ``(nu_h, nu_w)``."""
    if radius == "chebyshev":
        return max(abs(nu_h), abs(nu_w))
    if radius == "euclidean":
        squared = nu_h * nu_h + nu_w * nu_w
        root = math.isqrt(squared)  # exact integer floor(sqrt)
        return root + (root * root < squared)  # exact integer ceil(sqrt)
    raise ValueError(radius)


def band_index(shape: tuple[int, int], radius: str) -> np.ndarray:
    """``[H, W]`` band of every frequency, DFT order, by explicit loops."""
    height, width = shape
    out = np.empty((height, width), np.int64)
    for h in range(height):
        for w in range(width):
            out[h, w] = band_of(signed_frequency(h, height), signed_frequency(w, width), radius)
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def valid_mask(labels: np.ndarray, ignore_index: int) -> np.ndarray:
    return np.asarray(labels) != ignore_index


def spatial_ce(logits, labels, ignore_index: int = 255) -> np.ndarray:
    """``[B]`` mean CE over each image's valid pixels (0 for an image without any)."""
    labels = np.asarray(labels).astype(np.int64)
    valid = valid_mask(labels, ignore_index)
    safe = np.where(valid, labels, 0)
    picked = np.take_along_axis(log_softmax(logits), safe[..., None], axis=-1)[..., 0]
    total = -np.where(valid, picked, 0.0).sum(axis=(1, 2))
    return total / np.maximum(valid.sum(axis=(1, 2)), 1)


def one_hot_and_neg_log_probs(logits, labels, ignore_index: int = 255, ignore_mode="labels"):
    """``B [B, H, W, C]`` (zero at ignored pixels) and ``A = Y_p - Y [B, H, W, C]``.

    ``ignore_mode="labels"`` (Eq. 1 read directly): ``A`` at every pixel, except an
    ignored pixel with a non-finite logit, where it is 0. ``"both"``: ``A`` is zero at
    every ignored pixel too.
    """
    logits = np.asarray(logits, np.float64)
    num_classes = logits.shape[-1]
    valid = valid_mask(labels, ignore_index)[..., None]
    one_hot = (np.asarray(labels)[..., None] == np.arange(num_classes)) & valid
    if ignore_mode == "both":
        kept = valid
    else:
        assert ignore_mode == "labels", ignore_mode
        kept = valid | np.all(np.isfinite(logits), axis=-1, keepdims=True)
    # Where(), not a product: a NaN logit at a dropped pixel must not leak in.
    with np.errstate(invalid="ignore"):
        neg_log_probs = np.where(kept, -log_softmax(logits), 0.0)
    return one_hot.astype(np.float64), neg_log_probs


def ce_spectrum(logits, labels, ignore_index: int = 255, ignore_mode="labels") -> np.ndarray:
    """``[B, H, W]`` components ``Re sum_c conj(b) y_hat / (N H W)`` over the full DFT."""
    one_hot, neg_log_probs = one_hot_and_neg_log_probs(logits, labels, ignore_index, ignore_mode)
    _, height, width, _ = one_hot.shape
    b = np.fft.fft2(one_hot, axes=(1, 2))
    y_hat = np.fft.fft2(neg_log_probs, axes=(1, 2))
    num_valid = np.maximum(valid_mask(labels, ignore_index).sum(axis=(1, 2)), 1)
    products = np.real(np.sum(np.conj(b) * y_hat, axis=-1))
    return products / (num_valid * height * width)[:, None, None]


def band_sums(spectrum: np.ndarray, radius: str) -> np.ndarray:
    """``[B, R]`` sums of a ``[B, H, W]`` spectrum over each band."""
    index = band_index(spectrum.shape[1:], radius)
    out = np.zeros((spectrum.shape[0], index.max() + 1))
    for (h, w), band in np.ndenumerate(index):
        out[:, band] += spectrum[:, h, w]
    return out


def truncated_ce(spectrum: np.ndarray, band_limit, radius: str) -> np.ndarray:
    """``[B]``: components with band ``<= band_limit``."""
    index = band_index(spectrum.shape[1:], radius)
    return np.where(index <= band_limit, spectrum, 0.0).sum(axis=(1, 2))


def ratio_of_sums(truncated: np.ndarray, total: np.ndarray) -> float:
    """``|sum T - sum L| / sum L`` (0 where ``sum L == 0``)."""
    denominator = total.sum()
    return 0.0 if denominator == 0 else abs(truncated.sum() - denominator) / denominator


def magnitude_profiles(
    logits, labels, radius: str, ignore_index: int = 255, ignore_mode: str = "labels"
):
    """``([B, R], [B, R])``: band means of ``mean_c |b| / (H W)`` and of ``|y_hat|``."""
    one_hot, neg_log_probs = one_hot_and_neg_log_probs(logits, labels, ignore_index, ignore_mode)
    _, height, width, num_classes = one_hot.shape
    index = band_index((height, width), radius)
    sizes = np.bincount(index.ravel())

    def profile(maps):
        magnitude = np.abs(np.fft.fft2(maps, axes=(1, 2))).sum(axis=-1)
        magnitude /= num_classes * height * width
        return band_sums(magnitude, radius) / sizes

    return profile(one_hot), profile(neg_log_probs)


def make_batch(
    rng: np.random.Generator,
    batch: int,
    height: int,
    width: int,
    num_classes: int,
    *,
    ignore_fraction: float = 0.0,
    classes_per_image: int | None = None,
    scale: float = 2.0,
    ignore_index: int = 255,
):
    """Random float64 logits ``[B, H, W, C]`` and int32 labels ``[B, H, W]``.

    Labels are piecewise constant on random 2-pixel blocks (so low frequencies carry
    most of the energy, as in real masks) with some pixel noise; ``classes_per_image``
    draws each image's labels from that many classes only.
    """
    logits = rng.normal(scale=scale, size=(batch, height, width, num_classes))
    labels = np.empty((batch, height, width), np.int32)
    for i in range(batch):
        pool = np.arange(num_classes)
        if classes_per_image is not None:
            pool = rng.choice(num_classes, size=classes_per_image, replace=False)
        blocks = rng.choice(pool, size=((height + 1) // 2, (width + 1) // 2))
        image = np.kron(blocks, np.ones((2, 2), np.int64))[:height, :width]
        noise = rng.random((height, width)) < 0.1
        labels[i] = np.where(noise, rng.choice(pool, size=(height, width)), image)
    labels[rng.random(labels.shape) < ignore_fraction] = ignore_index
    return logits, labels


def soft_iou_terms(probs, labels, ignore_index: int = 255):
    """``([B, C], [B, C], [B, C])``: sum B S, sum S, sum B over valid pixels (spatial)."""
    probs = np.asarray(probs, np.float64)
    num_classes = probs.shape[-1]
    valid = valid_mask(labels, ignore_index)[..., None]
    prediction = np.where(valid, probs, 0.0)
    one_hot = ((np.asarray(labels)[..., None] == np.arange(num_classes)) & valid).astype(float)
    return (
        (prediction * one_hot).sum(axis=(1, 2)),
        prediction.sum(axis=(1, 2)),
        one_hot.sum(axis=(1, 2)),
    )


def iou_from_sums(overlap, prediction_mass, label_mass) -> np.ndarray:
    """``O / (S + B - O)``, NaN where the union is 0."""
    union = prediction_mass + label_mass - overlap
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union == 0, np.nan, overlap / np.where(union == 0, 1.0, union))


def hard_iou_counts(probs, labels, ignore_index: int = 255):
    """``(intersection, union) [B, C]`` pixel counts of the arg-max prediction, as sets."""
    prediction = np.argmax(np.asarray(probs), axis=-1)
    valid = valid_mask(labels, ignore_index)
    num_classes = np.shape(probs)[-1]
    intersection = np.zeros((len(labels), num_classes))
    union = np.zeros((len(labels), num_classes))
    for c in range(num_classes):
        predicted, labelled = (prediction == c) & valid, (np.asarray(labels) == c) & valid
        intersection[:, c] = (predicted & labelled).sum(axis=(1, 2))
        union[:, c] = (predicted | labelled).sum(axis=(1, 2))
    return intersection, union


def bilinear_upsampling_matrix(n: int, factor: int) -> np.ndarray:
    """Half-pixel bilinear up-sampling ``[factor n, n]`` with edge clamping (one axis)."""
    out = np.zeros((factor * n, n))
    for o in range(factor * n):
        source = min(max((o + 0.5) / factor - 0.5, 0.0), n - 1.0)
        low = math.floor(source)
        high = min(low + 1, n - 1)
        out[o, low] += 1 - (source - low)
        out[o, high] += source - low
    return out
