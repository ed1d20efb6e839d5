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
  Because that conversion loses precision silently, the first float64 input of a
  process with x64 off warns (:func:`warn_float64_without_x64`), naming
  ``jax.config.update("jax_enable_x64", True)``.

Inputs as users hold them (:func:`as_array`, :func:`check_data_format`): NumPy arrays,
JAX arrays and array-likes with ``__array__`` or ``__dlpack__`` (a CPU PyTorch tensor,
detected by duck typing: torch is never imported here). Maps with channels may come
channels last (``"NHWC"``, Flax's layout, the default) or channels first (``"NCHW"``,
PyTorch's); a shape that only fits channels first says so in the error.
"""

from __future__ import annotations

import warnings
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

#: The label of ignored pixels (VOC's void border, Cityscapes' classes not evaluated):
#: the default ``ignore_index`` of every function and data set of the package.
IGNORE_INDEX = 255

# How ignored pixels enter the CE decomposition (spectral_jax.loss_spectrum's docstring).
IGNORE_MODES: tuple[str, ...] = ("labels", "both")


#: Layouts of maps with channels: channels last (Flax) or channels first (PyTorch).
DataFormat = Literal["NHWC", "NCHW"]
DATA_FORMATS: tuple[str, ...] = ("NHWC", "NCHW")


def check_data_format(data_format) -> None:
    if not isinstance(data_format, str) or data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {DATA_FORMATS}, got {data_format!r}.")


def channels_last_shape(shape: tuple[int, ...], data_format: str) -> tuple[int, ...]:
    """The ``[B, H, W, C]`` shape of a map of ``shape`` in ``data_format`` (rank 4)."""
    if data_format == "NCHW" and len(shape) == 4:
        batch, channels, height, width = shape
        return (batch, height, width, channels)
    return tuple(shape)


def to_channels_last(x, data_format: str):
    """``x [B, C, H, W]`` as ``[B, H, W, C]`` for ``"NCHW"``; ``x`` itself for ``"NHWC"``.

    Call it inside the jitted computation: an eager transpose would compile on its own.
    """
    return jnp.moveaxis(x, 1, -1) if data_format == "NCHW" else x


def looks_channels_first(shape: tuple[int, ...], spatial: tuple[int, ...]) -> bool:
    """Whether ``shape [B, ?, H, W]`` holds ``spatial [B, H, W]`` with channels at axis 1."""
    return len(shape) == 4 and len(spatial) == 3 and (shape[0], *shape[2:]) == tuple(spatial)


def channels_first_hint(shape: tuple[int, ...]) -> str:
    """The error's hint for a ``[B, C, H, W]``-looking ``shape``."""
    return f"; got {tuple(shape)}: channels first? pass data_format='NCHW' or move axis 1 last"


#: Layouts of one unbatched map with channels (the input of a spectral Jacobian).
MAP_FORMATS: tuple[str, ...] = ("HWC", "CHW")


def unbatched_map_shape(shape: tuple[int, ...], name: str, data_format: str | None):
    """The ``[H, W, C]`` shape of one map of ``shape`` laid out as ``data_format`` says.

    The checks of :func:`unbatched_map_to_channels_last`, on a shape alone (no array is
    touched, so that the axis is moved inside the ``jit``).

    Raises:
      ValueError: as :func:`unbatched_map_to_channels_last`.
    """
    if data_format is not None and data_format not in MAP_FORMATS:
        raise ValueError(f"data_format must be one of {MAP_FORMATS} or None, got {data_format!r}.")
    shape = tuple(shape)
    if len(shape) != 3:
        return shape
    if data_format is None and shape[0] < shape[1] and shape[0] < shape[2]:
        raise ValueError(
            f"{name} has shape {shape}, read as [H, W, C] with H = {shape[0]}: channels "
            f"first? pass data_format='CHW' (or data_format='HWC' to keep this layout)."
        )
    return (*shape[1:], shape[0]) if data_format == "CHW" else shape


def unbatched_map_to_channels_last(x, name: str, data_format: str | None):
    """One map ``[H, W, C]`` from ``x`` laid out as ``data_format`` says.

    ``data_format=None`` (not stated) keeps ``x`` as ``[H, W, C]`` but refuses a shape
    whose leading axis is smaller than both others, the usual sign of a channels-first
    ``[C, H, W]`` map that would silently be read with ``H = C``; ``"HWC"`` keeps any
    shape, ``"CHW"`` moves the channels last (traceable: call it inside the ``jit``
    where ``x`` may be traced). Maps of another rank pass unchanged.

    Raises:
      ValueError: naming ``name`` for an unstated layout that looks channels first, or
        naming ``data_format`` for a value outside ``("HWC", "CHW", None)``.
    """
    unbatched_map_shape(jnp.shape(x), name, data_format)
    if jnp.ndim(x) == 3 and data_format == "CHW":
        return jnp.moveaxis(x, 0, -1)
    return x


def _is_array(x) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic | int | float | complex | bool)


def as_array(x, name: str):
    """``x`` as an array that JAX reads: NumPy and JAX arrays pass through unchanged.

    Anything else with ``__array__`` (a CPU PyTorch tensor, say) becomes a NumPy array
    (no copy for a CPU tensor; the dtype is kept, so a float64 tensor is seen as float64);
    one that NumPy cannot hold (bfloat16) is read through ``__dlpack__``. Other objects
    are returned as they are (the checks then reject them by name).

    Raises:
      TypeError: naming ``name`` when an array-like cannot be read (a PyTorch tensor that
        requires grad: pass ``x.detach()``; one on a GPU: pass ``x.cpu()``).
    """
    if _is_array(x) or not (hasattr(x, "__array__") or hasattr(x, "__dlpack__")):
        return x
    errors: list[Exception] = []
    if hasattr(x, "__array__"):
        try:
            return np.asarray(x)
        except (TypeError, RuntimeError, ValueError) as error:
            errors.append(error)
    if hasattr(x, "__dlpack__"):
        try:
            return jnp.from_dlpack(x)
        except (TypeError, RuntimeError, ValueError, BufferError) as error:
            errors.append(error)
    reasons = "; ".join(str(error) for error in errors)
    raise TypeError(
        f"{name} of type {type(x).__name__} could not be read as an array ({reasons}). "
        f"Pass a CPU array without autograd history (for a PyTorch tensor, "
        f"{name}.detach().cpu())."
    )


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
    # jax.config's options are attributes added at run time, undeclared in its typing.
    if jnp.dtype(dtype) == jnp.float64 and jax.config.jax_enable_x64:  # type: ignore[attr-defined]
        return jnp.dtype(jnp.float64)
    return jnp.dtype(jnp.float32)


def check_float64_available(name: str) -> None:
    """Raises ``ValueError`` naming ``name`` when float64 cannot be computed here.

    float64 needs ``jax_enable_x64`` and a backend with float64 transforms (CPU, GPU;
    not TPU).
    """
    if not jax.config.jax_enable_x64:  # type: ignore[attr-defined]
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


_float64_warned = False


def warn_float64_without_x64(name: str) -> None:
    """Warns (once per process) that float64 ``name`` is computed in float32 (x64 is off)."""
    global _float64_warned
    if _float64_warned:
        return
    _float64_warned = True
    warnings.warn(
        f"{name} is float64 but jax_enable_x64 is off, so it is computed in float32. "
        'For float64 results call jax.config.update("jax_enable_x64", True) at start-up '
        "(or use `with jax.enable_x64(True):`); cast to float32 to silence this. "
        "Warned once per process.",
        UserWarning,
        stacklevel=3,
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
    # JAX arrays are never float64 with x64 off: only NumPy inputs lose precision here.
    if (
        isinstance(x, np.ndarray | np.generic)
        and x.dtype == np.float64
        and not (jax.config.jax_enable_x64)  # type: ignore[attr-defined]
    ):
        warn_float64_without_x64(name)
    try:
        dtype = jnp.result_type(x)
    except TypeError as error:
        raise TypeError(
            f"{name} must be a real floating array, got {type(x).__name__}: {error}"
        ) from error
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


def check_logits_and_labels(
    logits,
    labels,
    *,
    ignore_index: int,
    logits_name: str = "logits",
    data_format: str = "NHWC",
):
    """Checks ``logits [B, H, W, C]`` against ``labels [B, H, W]``; returns ``(B, H, W, C)``.

    ``logits`` of any real floating dtype (:func:`check_floating`), laid out as
    ``data_format`` says (``"NCHW"``: ``[B, C, H, W]``). A channels-last mismatch whose
    shape fits ``[B, C, H, W]`` says so.
    """
    check_data_format(data_format)
    check_floating(logits, logits_name)
    layout = "[B, H, W, C]" if data_format == "NHWC" else "[B, C, H, W]"
    if jnp.ndim(logits) != 4:
        raise ValueError(f"{logits_name} must have shape {layout}, got shape {jnp.shape(logits)}.")
    if jnp.ndim(labels) != 3:
        raise ValueError(f"labels must have shape [B, H, W], got shape {jnp.shape(labels)}.")
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise TypeError(f"labels must be an integer array, got dtype {jnp.result_type(labels)}.")
    shape = channels_last_shape(jnp.shape(logits), data_format)  # [B, H, W, C]
    if shape[:3] != jnp.shape(labels):
        hint = ""
        if data_format == "NHWC" and looks_channels_first(jnp.shape(logits), jnp.shape(labels)):
            hint = channels_first_hint(jnp.shape(logits))
        raise ValueError(
            f"{logits_name} {layout} and labels [B, H, W] disagree: "
            f"{logits_name} shape {jnp.shape(logits)}, labels shape {jnp.shape(labels)}{hint}."
        )
    batch, height, width, num_classes = shape
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
