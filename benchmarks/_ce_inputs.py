"""Inputs of the CE-spectrum benchmarks: PASCAL-like labels and logits, a float64 reference.

Shared by ``bench_ce_spectrum``, ``bench_eager_calls``, ``bench_fft_threads`` and
``accelerator_check``; nothing here is timed.
"""

from __future__ import annotations

import argparse

import numpy as np

from spectral_jax.data import IGNORE_INDEX


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Square (Chebyshev) dilation of ``[..., H, W]`` booleans by ``radius`` pixels."""
    out = mask
    for axis in (-2, -1):
        grown = out.copy()
        n = out.shape[axis]
        for shift in range(1, radius + 1):
            if shift >= n:
                break
            lo = [slice(None)] * out.ndim
            hi = [slice(None)] * out.ndim
            lo[axis], hi[axis] = slice(0, n - shift), slice(shift, n)
            grown[tuple(lo)] |= out[tuple(hi)]
            grown[tuple(hi)] |= out[tuple(lo)]
        out = grown
    return out


def pascal_like_labels(
    rng: np.random.Generator, batch: int, height: int, width: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Label maps with background 0, 1-2 object classes as ellipses, and a void border.

    Returns:
      ``(labels, clean)``: ``[B, H, W]`` int32 labels with ``IGNORE_INDEX`` on a band
      along the object boundaries, and the same maps without the band.
    """
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    clean = np.zeros((batch, height, width), np.int32)
    for i in range(batch):
        num_objects = int(rng.integers(1, 3)) if num_classes > 2 else min(num_classes - 1, 1)
        classes = rng.choice(np.arange(1, num_classes), size=num_objects, replace=False)
        for cls in classes:
            for _ in range(int(rng.integers(1, 4))):
                cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
                ay, ax = rng.uniform(0.06, 0.22) * height, rng.uniform(0.06, 0.22) * width
                angle = rng.uniform(0.0, np.pi)
                dy, dx = yy - cy, xx - cx
                u = (dx * np.cos(angle) + dy * np.sin(angle)) / ax
                v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ay
                clean[i][u * u + v * v <= 1.0] = cls
    # Boundary pixels (both sides of every label change), grown into a band ~5 px wide.
    edge = np.zeros(clean.shape, bool)
    vertical = clean[:, 1:, :] != clean[:, :-1, :]
    horizontal = clean[:, :, 1:] != clean[:, :, :-1]
    edge[:, 1:, :] |= vertical
    edge[:, :-1, :] |= vertical
    edge[:, :, 1:] |= horizontal
    edge[:, :, :-1] |= horizontal
    void_radius = max(1, min(height, width) // 200)
    labels = np.where(_dilate(edge, void_radius), IGNORE_INDEX, clean).astype(np.int32)
    return labels, clean


def _box_blur(x: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Moving average of width ``2 * radius + 1`` along ``axis`` (edges replicated)."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (radius + 1, radius)
    c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis, dtype=np.float32)
    n = x.shape[axis]
    hi = np.take(c, np.arange(2 * radius + 1, 2 * radius + 1 + n), axis=axis)
    lo = np.take(c, np.arange(0, n), axis=axis)
    return (hi - lo) / np.float32(2 * radius + 1)


def realistic_logits(rng: np.random.Generator, clean: np.ndarray, num_classes: int):
    """``[B, H, W, C]`` float32: smoothed one-hot labels plus noise, times 5."""
    height = clean.shape[1]
    onehot = (clean[..., None] == np.arange(num_classes)).astype(np.float32)
    radius = max(1, height // 32)
    smooth = _box_blur(_box_blur(onehot, radius, axis=1), radius, axis=2)
    noise = rng.normal(0.0, 0.3, size=smooth.shape).astype(np.float32)
    return np.float32(5.0) * (smooth + noise)


def reference_ce_spectrum(
    logits: np.ndarray,
    labels: np.ndarray,
    ignore_index: int = IGNORE_INDEX,
    ignore_mode: str = "labels",
):
    """``(spectrum [B, H, W], ce [B])`` in float64, straight from the definition.

    ``L(nu) = Re sum_c conj(b(nu, c)) y_hat(nu, c) / (N H W)`` with the full ``fft2`` of
    every class's map, and the per-image mean CE over valid pixels computed directly.
    ``ignore_mode`` as in :func:`spectral_jax.ce_spectrum` (finite logits assumed):
    ``"labels"`` zeroes only the one-hot labels at ignored pixels, ``"both"`` also
    ``y_hat``'s map.
    """
    logits = np.asarray(logits, np.float64)
    batch, height, width, num_classes = logits.shape
    spectrum = np.zeros((batch, height, width))
    ce = np.zeros(batch)
    for i in range(batch):
        y = logits[i]
        peak = y.max(axis=-1, keepdims=True)
        log_partition = peak[..., 0] + np.log(np.exp(y - peak).sum(axis=-1))
        valid = labels[i] != ignore_index
        count = max(int(valid.sum()), 1)
        acc = np.zeros((height, width))
        for c in range(num_classes):
            kept = valid if ignore_mode == "both" else np.ones_like(valid)
            neg_log_prob = np.where(kept, log_partition - y[..., c], 0.0)
            target = ((labels[i] == c) & valid).astype(np.float64)
            acc += (np.conj(np.fft.fft2(target)) * np.fft.fft2(neg_log_prob)).real
        spectrum[i] = acc / (count * height * width)
        picked = np.take_along_axis(y, np.where(valid, labels[i], 0)[..., None], axis=-1)
        ce[i] = np.where(valid, log_partition - picked[..., 0], 0.0).sum() / count
    return spectrum, ce


def reference_chebyshev_bands(height: int, width: int) -> np.ndarray:
    """``[H, W]`` band ``max(|nu_h|, |nu_w|)`` in DFT order, independent of the library."""
    fh = np.abs(np.rint(np.fft.fftfreq(height) * height)).astype(int)
    fw = np.abs(np.rint(np.fft.fftfreq(width) * width)).astype(int)
    return np.maximum(fh[:, None], fw[None, :])


def reference_sweep(spectrum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(profile [B, R], R(nu_max) [R])`` as a ratio of batch means, from the spectrum."""
    batch, height, width = spectrum.shape
    bands = reference_chebyshev_bands(height, width).ravel()
    num = int(bands.max()) + 1
    profile = np.stack([np.bincount(bands, s.ravel(), minlength=num) for s in spectrum])
    truncated = np.cumsum(profile, axis=-1).sum(axis=0)
    total = truncated[-1]
    return profile, np.abs(truncated - total) / total


def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    shapes = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"shape must be BxHxWxC, got {item!r}")
        shapes.append(tuple(int(p) for p in parts))
    return shapes
