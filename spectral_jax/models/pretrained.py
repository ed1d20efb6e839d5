"""ImageNet weights for the ResNet backbones from torchvision checkpoints.

torchvision's ResNet-50 and ResNet-101 (v1.5, stride on the 3x3 convolution) map one to
one onto :class:`spectral_jax.models.resnet.ResNet`:

=====================================  ==========================================
torchvision ``state_dict`` key          Flax variable
=====================================  ==========================================
``conv1.weight`` ``[O, I, Kh, Kw]``     ``params/conv1/kernel`` ``[Kh, Kw, I, O]``
``bn1.weight``, ``bn1.bias``            ``params/bn1/scale``, ``params/bn1/bias``
``bn1.running_mean``, ``running_var``   ``batch_stats/bn1/mean``, ``batch_stats/bn1/var``
``layer{s}.{b}.conv{i}.*``              ``layer{s}_block{b}/conv{i}/*``
``layer{s}.{b}.downsample.0.weight``    ``layer{s}_block{b}/downsample_conv/kernel``
``layer{s}.{b}.downsample.1.*``         ``layer{s}_block{b}/downsample_bn/*``
``fc.*``, ``*.num_batches_tracked``     ignored
=====================================  ==========================================

Dilation does not change any shape, so one checkpoint serves every output stride. A
backbone with stacked blocks (``scan_blocks=True``, the default) gets block ``b >= 1`` of
stage ``s`` as slice ``b - 1`` of ``layer{s}_blocks``
(:func:`spectral_jax.models.block_stacking.stack_blocks`): the conversion works on the per-block
paths of the table and returns the target's layout.

Reading a checkpoint does not need PyTorch. With torch installed,
:func:`load_torchvision_state_dict` uses ``torch.load(..., weights_only=True)``;
without it, it reads PyTorch's serialization formats directly: the zip format of
``torch.save`` since PyTorch 1.6 (``<name>/data.pkl``, a pickle whose tensors refer to
raw storages ``<name>/data/<key>``) and the older single-stream format. The pickle is
read by a restricted unpickler that rebuilds tensors as NumPy arrays and refuses every
other global, so that a checkpoint cannot run code. ``.npz`` archives of the state dict
are read with ``np.load(allow_pickle=False)``.

Example (not run as a doctest: it needs torchvision's ImageNet checkpoint of ResNet-101,
a download, and initialises the full model at 513 x 513)::

    model = DeepLabV3Plus(num_classes=21, backbone="resnet101")
    variables = model.init(jax.random.key(0), jnp.zeros((1, 513, 513, 3)))
    variables = load_pretrained_backbone(variables, "resnet101-63fe2227.pth")
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes  # comes with jax: bfloat16 as a NumPy dtype
import numpy as np
from flax import traverse_util

from spectral_jax.models.block_stacking import stack_blocks, unstack_blocks
from spectral_jax.models.resnet import ResNet

StateDict = dict[str, np.ndarray]
Backend = Literal["auto", "torch", "numpy"]

#: Keys of a torchvision ResNet state dict that have no counterpart in the backbone.
IGNORED_KEY_PREFIXES: tuple[str, ...] = ("fc.",)
IGNORED_KEY_SUFFIXES: tuple[str, ...] = (".num_batches_tracked",)

# The legacy (pre-1.6) format starts with this pickled integer.
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001

# Flax leaf name -> torchvision parameter name.
_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
_MODULE_NAMES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}

_MAX_LISTED_KEYS = 12


# ---------------------------------------------------------------------------------------
# Reading checkpoints.


def _storage_dtypes() -> dict[str, np.dtype]:
    return {
        "DoubleStorage": np.dtype(np.float64),
        "FloatStorage": np.dtype(np.float32),
        "HalfStorage": np.dtype(np.float16),
        "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
        "LongStorage": np.dtype(np.int64),
        "IntStorage": np.dtype(np.int32),
        "ShortStorage": np.dtype(np.int16),
        "CharStorage": np.dtype(np.int8),
        "ByteStorage": np.dtype(np.uint8),
        "BoolStorage": np.dtype(np.bool_),
    }


class _StorageType:
    """Stands for ``torch.<Type>Storage`` in a checkpoint's pickle."""

    def __init__(self, name: str, dtype: np.dtype):
        self.name = name
        self.dtype = dtype


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, *_):
    """``torch._utils._rebuild_tensor_v2`` for a NumPy storage: a strided copy."""
    del requires_grad, backward_hooks
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or min(stride, default=0) < 0 or storage_offset < 0:
        raise pickle.UnpicklingError(f"bad tensor layout: size {size}, stride {stride}.")
    if 0 not in size:
        extent = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if extent >= storage.size:
            raise pickle.UnpicklingError(
                f"tensor of size {size}, stride {stride} and offset {storage_offset} does not "
                f"fit its storage of {storage.size} elements."
            )
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:],
        shape=size,
        strides=tuple(s * storage.itemsize for s in stride),
        writeable=False,
    )
    return np.array(view)


def _rebuild_parameter(data, requires_grad, backward_hooks, *_):
    """``torch._utils._rebuild_parameter``: the parameter's data."""
    del requires_grad, backward_hooks
    return data


class _SafeDtype:
    """Stands for ``numpy.dtype`` in a pickle: only plain numeric dtypes are rebuilt."""

    def __init__(self, name, align=False, copy=True):
        del align, copy
        dtype = np.dtype(str(name)) if isinstance(name, str) else None
        if dtype is None or dtype.kind not in "biuf":
            raise pickle.UnpicklingError(f"numpy dtype {name!r} is not allowed in a checkpoint.")
        self.dtype = dtype

    def __setstate__(self, state):
        # (version, byte order, ...): only the byte order matters for numeric dtypes.
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype, data=None):
    """``numpy.core.multiarray.scalar``: a numeric NumPy scalar from its bytes."""
    if not isinstance(dtype, _SafeDtype) or not isinstance(data, bytes):
        raise pickle.UnpicklingError("bad numpy scalar in the checkpoint.")
    if len(data) != dtype.dtype.itemsize:
        raise pickle.UnpicklingError("bad numpy scalar size in the checkpoint.")
    return np.frombuffer(data, dtype.dtype)[0]


def _latin1_bytes(text, encoding="latin1"):
    """``_codecs.encode`` as protocol-2 pickles use it for ``bytes``: latin-1 only."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("only latin-1 bytes may be encoded in a checkpoint.")
    return text.encode("latin1")


class _TensorUnpickler(pickle.Unpickler):
    """Unpickles a state dict, allowing only the globals that rebuild tensors.

    Args:
      file: the pickle stream.
      load_storage: ``(key, dtype, numel) -> [numel] array`` for persistent storages.
    """

    def __init__(self, file, load_storage: Callable[[str, np.dtype, int], np.ndarray]):
        super().__init__(file)
        self._load_storage = load_storage
        self._storage_dtypes = _storage_dtypes()

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in self._storage_dtypes:
            return _StorageType(name, self._storage_dtypes[name])
        # Numeric NumPy scalars (a training script's best score), their dtypes and, in
        # protocol 2, their bytes.
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) == ("numpy", "dtype"):
            return _SafeDtype
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            return _numpy_scalar
        raise pickle.UnpicklingError(
            f"global {module}.{name} is not allowed in a weights-only checkpoint."
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}.")
        _, storage_type, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views of the legacy format are not supported.")
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}.")
        return self._load_storage(str(key), storage_type.dtype, int(numel))


def _storage_from_bytes(data: bytes, dtype: np.dtype, numel: int, byteorder: str, key: str):
    if len(data) != numel * dtype.itemsize:
        raise pickle.UnpicklingError(
            f"storage {key!r} holds {len(data)} bytes, expected {numel} x {dtype.itemsize}."
        )
    array = np.frombuffer(data, dtype.newbyteorder("<" if byteorder == "little" else ">"))
    return array.astype(dtype, copy=False)


def _read_zip_checkpoint(archive: zipfile.ZipFile) -> Any:
    """The unpickled object of a ``torch.save`` zip archive."""
    pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise pickle.UnpicklingError(f"expected one '<name>/data.pkl', found {pickles}.")
    prefix = pickles[0][: -len("data.pkl")]
    names = set(archive.namelist())
    byteorder = "little"
    if f"{prefix}byteorder" in names:
        byteorder = archive.read(f"{prefix}byteorder").decode().strip()
    if byteorder not in ("little", "big"):
        raise pickle.UnpicklingError(f"unknown byte order {byteorder!r}.")
    storages: dict[str, np.ndarray] = {}

    def load_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        if key not in storages:
            data = archive.read(f"{prefix}data/{key}")
            storages[key] = _storage_from_bytes(data, dtype, numel, byteorder, key)
        return storages[key].view(dtype)

    return _TensorUnpickler(io.BytesIO(archive.read(pickles[0])), load_storage).load()


def _no_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
    """``load_storage`` of the pickles of a legacy stream that hold no tensor."""
    raise pickle.UnpicklingError(
        f"tensor storage {key!r} in the header or the storage keys of a legacy checkpoint."
    )


def _read_legacy_checkpoint(stream: io.BufferedIOBase) -> Any:
    """The unpickled object of a pre-1.6 ``torch.save`` stream (no zip).

    Layout: four pickles (magic number, protocol version, system info, the object with
    storages as persistent ids), the pickled list of storage keys, then per key an
    8-byte element count and the raw elements.
    """
    plain = _TensorUnpickler(stream, _no_storage)
    if plain.load() != _LEGACY_MAGIC_NUMBER:
        raise pickle.UnpicklingError("not a PyTorch checkpoint (bad magic number).")
    if plain.load() != _LEGACY_PROTOCOL_VERSION:
        raise pickle.UnpicklingError("unsupported legacy protocol version.")
    sys_info = plain.load()
    byteorder = "little" if sys_info.get("little_endian", True) else "big"
    requested: dict[str, tuple[np.dtype, int, np.ndarray]] = {}

    def load_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        # Filled in place once the raw data, which follows the pickle, has been read.
        if key not in requested:
            requested[key] = (dtype, numel, np.empty(numel, dtype))
        return requested[key][2].view(dtype)

    # Tensors are rebuilt (copied) while unpickling, before their data is read, so the
    # object is unpickled twice: first to collect the storages, then from filled storages.
    start = stream.tell()
    _TensorUnpickler(stream, load_storage).load()
    keys = _TensorUnpickler(stream, _no_storage).load()
    if not isinstance(keys, list) or set(map(str, keys)) != set(requested):
        raise pickle.UnpicklingError("the storage keys do not match the pickled tensors.")
    count_format = "<q" if byteorder == "little" else ">q"
    for key in map(str, keys):
        dtype, numel, storage = requested[key]
        header = stream.read(8)
        if len(header) != 8 or struct.unpack(count_format, header)[0] != numel:
            raise pickle.UnpicklingError(f"storage {key!r}: bad element count.")
        data = stream.read(numel * dtype.itemsize)
        storage[:] = _storage_from_bytes(data, dtype, numel, byteorder, key)
    stream.seek(start)
    return _TensorUnpickler(stream, load_storage).load()


def _read_with_torch(path: str) -> Any:
    import torch  # An optional extra (spectral_jax[bench]): only this reader needs it.

    loaded = torch.load(path, map_location="cpu", weights_only=True)

    def to_numpy(value):
        if isinstance(value, Mapping):
            return {key: to_numpy(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(to_numpy(item) for item in value)
        if not isinstance(value, torch.Tensor):
            return value
        value = value.detach()
        if value.dtype == torch.bfloat16:
            return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
        return value.numpy().copy()

    return to_numpy(loaded)


def _as_state_dict(loaded: Any, path: str) -> StateDict:
    if not isinstance(loaded, Mapping):
        raise ValueError(f"checkpoint {path!r} holds a {type(loaded).__name__}, not a state dict.")
    state_dict = {}
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise ValueError(
                f"checkpoint {path!r}: entry {key!r} is a {type(value).__name__}, not a tensor."
            )
        state_dict[key] = value
    return state_dict


def load_torchvision_state_dict(path: str | os.PathLike, *, backend: Backend = "auto") -> StateDict:
    """Reads a torchvision state dict (``.pth``/``.pt`` or ``.npz``) as NumPy arrays.

    Args:
      path: a file written by ``torch.save(model.state_dict(), path)`` (zip or legacy
        format), e.g. torchvision's ``resnet101-63fe2227.pth``, or an ``.npz`` archive
        with the same keys.
      backend: ``"torch"`` for ``torch.load(path, map_location="cpu",
        weights_only=True)``, ``"numpy"`` for this module's reader (no PyTorch needed),
        ``"auto"`` for torch when it is installed. ``.npz`` files never need torch.

    Returns:
      ``{key: array}`` with the checkpoint's dtypes and PyTorch's layouts (convolution
      weights ``[O, I, Kh, Kw]``), as C-contiguous NumPy arrays.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: naming the file if it is corrupt, truncated, not a PyTorch checkpoint,
        needs a global other than the tensor rebuilders, or holds anything but a flat
        mapping from names to tensors; for an unknown ``backend``, or ``"torch"``
        without torch installed.
    """
    path = os.fspath(path)
    return _as_state_dict(load_checkpoint(path, backend=backend), path)


def load_checkpoint(path: str | os.PathLike, *, backend: Backend = "auto") -> Any:
    """Reads any weights-only PyTorch checkpoint: nested dicts and lists of arrays.

    A training checkpoint such as ``{"state_dict": ..., "optimizer": ..., "epoch": ...}``
    comes back with its structure, tensors as NumPy arrays. Numeric NumPy scalars (a
    best score a training script stored) are read by this module's reader; with
    ``backend="auto"``, a file that ``torch.load(weights_only=True)`` refuses is read
    again by it, which refuses everything but tensors, containers, numbers and strings.

    Args:
      path: the checkpoint file (``torch.save`` zip or legacy format, or ``.npz``).
      backend: as :func:`load_torchvision_state_dict`.

    Returns:
      The unpickled object.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: as :func:`load_torchvision_state_dict`, naming the file.
    """
    if backend not in ("auto", "torch", "numpy"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'numpy', got {backend!r}.")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist.")
    use_torch = False
    if backend != "numpy" and not path.endswith(".npz"):
        try:
            import torch  # noqa: F401 - only whether it imports.

            use_torch = True
        except ImportError as error:
            if backend == "torch":
                raise ValueError(
                    "backend='torch' needs PyTorch; use backend='numpy' without it."
                ) from error
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                loaded = {key: archive[key] for key in archive.files}
        elif use_torch:
            loaded = _read_with_torch(path)
        else:
            loaded = _read_without_torch(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except pickle.UnpicklingError as error:
        if not use_torch or backend == "torch":
            raise _unreadable(path, error) from error
        try:  # torch refuses NumPy scalars; this module's reader takes numeric ones.
            loaded = _read_without_torch(path)
        except Exception as second:
            raise _unreadable(path, second) from second
    except Exception as error:  # Whatever a reader raises, the file is bad.
        raise _unreadable(path, error) from error
    return loaded


def _read_without_torch(path: str) -> Any:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return _read_zip_checkpoint(archive)
    with open(path, "rb") as stream:
        return _read_legacy_checkpoint(stream)


def _unreadable(path: str, error: Exception) -> ValueError:
    return ValueError(
        f"cannot read checkpoint {path!r} (corrupt, truncated or not a PyTorch state "
        f"dict): {type(error).__name__}: {error}"
    )


# ---------------------------------------------------------------------------------------
# Converting to Flax variables.


def _torch_key(collection: str, path: tuple[str, ...]) -> str:
    """``("params", ("layer1_block0", "conv1", "kernel"))`` -> ``"layer1.0.conv1.weight"``."""
    *modules, leaf = path
    if (collection, leaf) not in _LEAF_NAMES:
        raise ValueError(
            f"no torchvision counterpart for the variable {collection}/{'/'.join(path)}."
        )
    parts = []
    for module in modules:
        layer, sep, block = module.partition("_block")
        if sep and layer.startswith("layer") and block.isdigit():
            parts.append(f"{layer}.{block}")
        else:
            parts.append(_MODULE_NAMES.get(module, module))
    return ".".join([*parts, _LEAF_NAMES[collection, leaf]])


def _converted_tensor(
    key: str, value: Any, expected: tuple[int, ...] | None, path: tuple[str, ...], leaf, mismatched
) -> jax.Array | None:
    """Checkpoint tensor ``key`` as the Flax leaf at ``path`` (``leaf``: its shape and dtype).

    A convolution kernel is transposed from PyTorch's ``[O, I, Kh, Kw]``. Returns None, and
    appends the reason to ``mismatched``, when the tensor's shape is not ``expected`` (the
    PyTorch shape; None: none fits) or its dtype is not floating.
    """
    value = np.asarray(value)
    if expected is None or value.shape != expected:
        mismatched.append(f"{key}: checkpoint {value.shape}, model {expected}")
        return None
    if not np.issubdtype(value.dtype, np.floating) and value.dtype.name != "bfloat16":
        mismatched.append(f"{key}: checkpoint dtype {value.dtype} is not floating")
        return None
    if path[-1] == "kernel":
        value = np.transpose(value, (2, 3, 1, 0))  # [O, I, Kh, Kw] -> [Kh, Kw, I, O]
    return jnp.asarray(value.astype(np.float32), leaf.dtype)


def _variable_shapes(
    target: nn.Module | Mapping[str, Any],
    *,
    module_type: type[nn.Module] = nn.Module,
    image_size: int = 64,
) -> dict[str, Any]:
    """``{"params", "batch_stats"}`` shapes of a ``module_type`` model (``eval_shape`` of its
    init on one ``image_size`` square image) or of its variables."""
    if isinstance(target, module_type):
        images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
        target = jax.eval_shape(target.init, jax.random.key(0), images)
    if not isinstance(target, Mapping) or "params" not in target:
        raise ValueError(
            f"target must be a {module_type.__name__} or its variables {{'params', "
            f"'batch_stats'}}, got {type(target).__name__}."
        )
    # Shapes only, so that splitting stacked blocks slices no arrays.
    return {
        collection: jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype), tree)
        for collection, tree in target.items()
        if collection in ("params", "batch_stats")
    }


def _is_ignored(key: str) -> bool:
    return key.startswith(IGNORED_KEY_PREFIXES) or key.endswith(IGNORED_KEY_SUFFIXES)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return f"{shown}, ... ({more} more)" if more > 0 else shown


def _key_problems(missing: list[str], unexpected: list[str], mismatched: list[str]) -> list[str]:
    """The lines of a checkpoint-mismatch error: each non-empty kind of key, listed."""
    kinds = (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched))
    return [f"{kind} keys ({len(keys)}): {_listing(keys)}" for kind, keys in kinds if keys]


def torchvision_to_flax_resnet(
    state_dict: Mapping[str, np.ndarray], target: ResNet | Mapping[str, Any]
) -> dict[str, Any]:
    """Converts a torchvision ResNet state dict to this library's ResNet variables.

    Convolution weights ``[O, I, Kh, Kw]`` become kernels ``[Kh, Kw, I, O]``; BatchNorm
    ``weight``/``bias`` become ``scale``/``bias`` and ``running_mean``/``running_var``
    the ``batch_stats`` ``mean``/``var``. Every shape is checked against ``target``.

    Args:
      state_dict: ``{key: array}`` (:func:`load_torchvision_state_dict`).
      target: the Flax ``ResNet`` (its shapes come from ``jax.eval_shape`` of its
        ``init``), or a variables tree ``{"params": ..., "batch_stats": ...}`` of the
        backbone whose leaves have ``.shape`` and ``.dtype`` (arrays or
        ``jax.ShapeDtypeStruct``).

    Returns:
      ``{"params": ..., "batch_stats": ...}`` with the structure and dtypes of
      ``target`` (stacked blocks where ``target`` has them), as ``jax.Array`` leaves.

    Raises:
      ValueError: listing the missing keys (needed by ``target``, absent from the
        checkpoint), the unexpected ones (present but unused; ``fc.*`` and
        ``*.num_batches_tracked`` are ignored) and the mismatched ones (shape, or a
        non-floating dtype), all at once; or for a ``target`` that is not a ResNet's.
    """
    shapes = _variable_shapes(target, module_type=ResNet, image_size=32)
    converted, missing, used = {}, [], set()
    mismatched: list[str] = []
    for collection, tree in unstack_blocks(shapes).items():
        for path, leaf in traverse_util.flatten_dict(dict(tree)).items():
            key = _torch_key(collection, path)
            shape = tuple(leaf.shape)
            expected: tuple[int, ...] | None = shape
            if path[-1] == "kernel":
                # [Kh, Kw, I, O] -> [O, I, Kh, Kw]
                expected = (shape[3], shape[2], *shape[:2]) if len(shape) == 4 else None
            if key not in state_dict:
                missing.append(key)
                continue
            used.add(key)
            value = _converted_tensor(key, state_dict[key], expected, path, leaf, mismatched)
            if value is not None:
                converted[(collection, *path)] = value
    unexpected = sorted(key for key in state_dict if key not in used and not _is_ignored(key))
    if missing or unexpected or mismatched:
        problems = _key_problems(missing, unexpected, mismatched)
        raise ValueError(
            "the checkpoint does not match the ResNet backbone; " + "; ".join(problems) + "."
        )
    return stack_blocks(traverse_util.unflatten_dict(converted), like=shapes)


def load_pretrained_backbone(
    variables: Mapping[str, Any],
    checkpoint: str | os.PathLike | Mapping[str, np.ndarray],
    *,
    module: str | None = "encoder",
    backend: Backend = "auto",
) -> dict[str, Any]:
    """Puts torchvision ResNet weights into a model's backbone, keeping everything else.

    Works for any model whose backbone is a :class:`ResNet` submodule named ``module``
    (``"encoder"`` in :class:`~spectral_jax.models.DeepLabV3Plus` and
    :class:`~spectral_jax.models.dan.DAN`), and for a bare ``ResNet`` with
    ``module=None``.

    Args:
      variables: the model's initialised variables ``{"params", "batch_stats", ...}``.
      checkpoint: a checkpoint file (:func:`load_torchvision_state_dict`) or a state dict.
      module: name of the backbone in both collections; ``None`` for the whole tree.
      backend: how to read a file (see :func:`load_torchvision_state_dict`).

    Returns:
      A new variables dict: ``params[module]`` and ``batch_stats[module]`` replaced by
      the converted weights, every other entry the same object as in ``variables``.

    Raises:
      ValueError: if ``variables`` has no backbone under ``module``, or as
        :func:`load_torchvision_state_dict` and :func:`torchvision_to_flax_resnet` do.
    """
    for collection in ("params", "batch_stats"):
        if collection not in variables or (
            module is not None and module not in variables[collection]
        ):
            raise ValueError(
                f"variables has no backbone {collection}/{module} (collections "
                f"{tuple(variables)}); pass the model's initialised variables."
            )
    if isinstance(checkpoint, Mapping):
        state_dict = dict(checkpoint)
    else:
        state_dict = load_torchvision_state_dict(checkpoint, backend=backend)
    if module is None:
        backbone = {c: variables[c] for c in ("params", "batch_stats")}
    else:
        backbone = {c: variables[c][module] for c in ("params", "batch_stats")}
    converted = torchvision_to_flax_resnet(state_dict, backbone)
    result = dict(variables)
    for collection in ("params", "batch_stats"):
        if module is None:
            result[collection] = converted[collection]
        else:
            result[collection] = {**variables[collection], module: converted[collection]}
    return result
