"""Input checks shared by the public functions (private).

Static properties (ranks, shapes, dtypes) are checked in plain Python and raise at
trace time. Label values can only be checked on concrete arrays: eagerly they raise a
``ValueError``; under ``jit`` the offending images' results become NaN (see
:func:`poison_invalid_labels`), so that a bad label is never silently counted.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# How ignored pixels enter the CE decomposition (spectral_jax.loss_spectrum's docstring).
IGNORE_MODES: tuple[str, ...] = ("labels", "both")


def check_ignore_mode(ignore_mode) -> None:
    if ignore_mode not in IGNORE_MODES:
        raise ValueError(f"ignore_mode must be one of {IGNORE_MODES}, got {ignore_mode!r}.")


def is_traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def check_logits_and_labels(logits, labels, *, ignore_index: int, logits_name: str = "logits"):
    """Checks ``logits [B, H, W, C]`` against ``labels [B, H, W]``; returns the shape."""
    logits_dtype = jnp.result_type(logits)
    if not jnp.issubdtype(logits_dtype, jnp.floating):
        raise TypeError(f"{logits_name} must be a floating array, got dtype {logits_dtype}.")
    if jnp.ndim(logits) != 4:
        raise ValueError(
            f"{logits_name} must have shape [B, H, W, C], got shape {jnp.shape(logits)}."
        )
    if jnp.ndim(labels) != 3:
        raise ValueError(f"labels must have shape [B, H, W], got shape {jnp.shape(labels)}.")
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise TypeError(f"labels must be an integer array, got dtype {jnp.result_type(labels)}.")
    if jnp.shape(logits)[:3] != jnp.shape(labels):
        raise ValueError(
            f"{logits_name} [B, H, W, C] and labels [B, H, W] disagree: "
            f"{logits_name} shape {jnp.shape(logits)}, labels shape {jnp.shape(labels)}."
        )
    batch, height, width, num_classes = jnp.shape(logits)
    if num_classes < 1:
        raise ValueError(f"{logits_name} must have at least one class, got C = {num_classes}.")
    if height < 1 or width < 1:
        raise ValueError(
            f"{logits_name} must have a non-empty image, got H = {height}, W = {width} "
            f"(shape {jnp.shape(logits)})."
        )
    if 0 <= ignore_index < num_classes:
        raise ValueError(
            f"ignore_index={ignore_index} is a valid class index for C = {num_classes}; "
            "it must lie outside [0, C)."
        )
    check_label_values(labels, num_classes, ignore_index)
    return batch, height, width, num_classes


def check_label_values(labels, num_classes: int, ignore_index: int) -> None:
    """Raises ``ValueError`` for a concrete label outside ``[0, C)`` that is not ignored.

    Traced labels are not checked (their values are unknown); the callers document what
    such labels give under ``jit``.
    """
    if not is_traced(labels):
        values = np.asarray(labels)
        bad = (values != ignore_index) & ((values < 0) | (values >= num_classes))
        if bad.any():
            raise ValueError(
                f"labels must lie in [0, {num_classes}) or equal ignore_index={ignore_index}; "
                f"found {int(bad.sum())} pixel(s) with values such as {int(values[bad][0])}."
            )


def invalid_label_images(labels, num_classes: int, ignore_index: int) -> jnp.ndarray:
    """``[B]`` booleans: images holding a label outside ``[0, C)`` that is not ignored."""
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    return jnp.any(bad, axis=(1, 2))


def poison_invalid_labels(values, labels, num_classes: int, ignore_index: int):
    """Sets ``values [B, ...]`` to NaN for the images with an out-of-range label."""
    bad = invalid_label_images(labels, num_classes, ignore_index)
    bad = bad.reshape(bad.shape + (1,) * (jnp.ndim(values) - 1))
    return jnp.where(bad, jnp.nan, values)


def compute_dtype(dtype) -> jnp.dtype:
    """The FFT dtype for logits of ``dtype``: float64 stays, anything else is float32."""
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32
