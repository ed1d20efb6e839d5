"""Input checks shared by the public functions (private).

Static properties (ranks, shapes, dtypes) are checked in plain Python and raise at
trace time. Label values can only be checked on concrete arrays: eagerly they raise a
``ValueError``; under ``jit`` the offending images' results become NaN (see
:func:`poison_invalid_labels`), so that a bad label is never silently counted.

Precision (:func:`check_floating`, one rule for every public function of the core):

* float32 is computed in float32;
* float16 and bfloat16 are upcast to float32 before any transform. The conversion is
  exact, so the result equals that of ``x.astype(jnp.float32)``: the spectral
  quantities are never computed in a low precision (``jnp.fft`` has no bfloat16
  transform, and the band sums of a decomposition would lose the small high-frequency
  components to the 8-bit mantissa). The values themselves carry the rounding of the
  low-precision computation that produced them;
* float64 stays float64 when ``jax_enable_x64`` is on, on CPU and GPU. Without it a
  float64 NumPy array becomes float32, as everywhere in JAX (no float64 array exists
  then). The TPU backend has no float64 transforms: a float64 input there raises a
  ``ValueError`` saying to cast to float32 or to run on CPU with ``jax_enable_x64``.
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


#: Dtypes that the core upcasts to float32 (module docstring, "Precision").
LOW_PRECISION_DTYPES: tuple[jnp.dtype, ...] = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))

#: Backends without float64 transforms.
NO_FLOAT64_BACKENDS: tuple[str, ...] = ("tpu",)


def compute_dtype(dtype) -> jnp.dtype:
    """The computation dtype for an input of ``dtype`` (module docstring, "Precision").

    float64 with ``jax_enable_x64`` stays float64; anything else (float16, bfloat16,
    float32, and float64 without x64) is computed in float32.
    """
    if jnp.dtype(dtype) == jnp.float64 and jax.config.jax_enable_x64:
        return jnp.dtype(jnp.float64)
    return jnp.dtype(jnp.float32)


def check_float64_available(name: str) -> None:
    """Raises ``ValueError`` naming ``name`` when float64 cannot be computed here.

    float64 needs ``jax_enable_x64`` and a backend with float64 transforms (CPU, GPU;
    not TPU).
    """
    if not jax.config.jax_enable_x64:
        raise ValueError(
            f"{name} asks for float64, but jax_enable_x64 is off: enable it "
            "(jax.config.update('jax_enable_x64', True), or JAX_ENABLE_X64=1) or use float32."
        )
    backend = jax.default_backend()
    if backend in NO_FLOAT64_BACKENDS:
        raise ValueError(
            f"{name} is float64, but the {backend.upper()} backend has no float64 "
            f"transforms: cast {name} to float32, or run this analysis on CPU "
            "(JAX_PLATFORMS=cpu) with jax_enable_x64."
        )


def check_floating(x, name: str) -> jnp.dtype:
    """Checks that ``x`` is a real floating array; returns its computation dtype.

    float16 and bfloat16 are accepted and computed in float32 (exact upcast); float64
    with ``jax_enable_x64`` is computed in float64 where the backend allows it (module
    docstring, "Precision").

    Raises:
      TypeError: naming ``name`` for a non-floating (integer, boolean, complex) dtype.
      ValueError: naming ``name`` for a float64 input on a backend without float64
        (TPU).
    """
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must be a real floating array, got dtype {dtype}.")
    computed = compute_dtype(dtype)
    if computed == jnp.float64:
        check_float64_available(name)
    return computed


def check_accumulator_dtype(dtype, name: str = "dtype") -> jnp.dtype:
    """Checks a requested accumulation dtype: float32, or float64 where available.

    Raises:
      ValueError: naming ``name`` for a low-precision or non-floating dtype, or for
        float64 without ``jax_enable_x64`` or on a TPU backend.
    """
    try:
        dtype = jnp.dtype(dtype)
    except TypeError as error:
        raise ValueError(f"{name} must be float32 or float64, got {dtype!r}.") from error
    if dtype == jnp.float64:
        check_float64_available(name)
    elif dtype != jnp.float32:
        raise ValueError(
            f"{name} must be float32 or float64, got {dtype}: sums over a data set lose "
            "their small terms in a low precision; accumulate in float32."
        )
    return dtype


def check_logits_and_labels(logits, labels, *, ignore_index: int, logits_name: str = "logits"):
    """Checks ``logits [B, H, W, C]`` against ``labels [B, H, W]``; returns the shape.

    ``logits`` of any real floating dtype (:func:`check_floating`).
    """
    check_floating(logits, logits_name)
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
    check_ignore_index_fits(labels, ignore_index)
    check_label_values(labels, num_classes, ignore_index)
    return batch, height, width, num_classes


def check_ignore_index_fits(labels, ignore_index: int, labels_name: str = "labels") -> None:
    """Raises ``ValueError`` when the dtype of ``labels`` cannot hold ``ignore_index``.

    A comparison of uint8 labels with 256 converts 256 to the labels' dtype, where it
    wraps to 0: class-0 pixels would be ignored. No label of that dtype can equal such
    an index, so it is refused rather than compared.
    """
    dtype = jnp.result_type(labels)
    if not jnp.issubdtype(dtype, jnp.integer):
        return  # the callers check the dtype with their own message
    info = np.iinfo(dtype)
    if not info.min <= ignore_index <= info.max:
        raise ValueError(
            f"ignore_index={ignore_index} does not fit the {dtype} {labels_name} "
            f"(values in [{info.min}, {info.max}]): no label can equal it, and a comparison "
            f"would wrap it to {np.asarray(ignore_index).astype(np.int64).astype(dtype)}. "
            f"Cast {labels_name} to int32 or pick an ignore_index the dtype holds."
        )


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
