"""Tests of spectral_jax.models.pretrained: torchvision checkpoints into the Flax ResNet.

Without PyTorch: checkpoints are written here byte by byte in PyTorch's zip and legacy
formats (hand-emitted pickle opcodes, independent of the reader), read back exactly, and
the converted weights are checked by a float64 NumPy forward pass of the whole
``resnet_tiny`` backbone written from torchvision's definition. With PyTorch (optional):
a ``torch.nn`` ResNet with torchvision's module names and dilation rule is saved with
``torch.save`` and its eval-mode features are compared with the Flax model's.
"""

from __future__ import annotations

import functools
import pickle
import struct
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.models import DAN, DeepLabV3Plus, create_resnet, unstack_blocks
from spectral_jax.models.pretrained import (
    load_pretrained_backbone,
    load_torchvision_state_dict,
    torchvision_to_flax_resnet,
)
from tests.helpers.models import (
    DEEP_TINY_BACKBONE,
    DEEP_TINY_STAGES,
    TINY_DAN,
    TINY_DEEPLAB,
    num_params,
    random_variables,
)

# torchvision's stage sizes and stem width; "resnet_tiny" as in spectral_jax.models.resnet.
STAGES = {"resnet50": ((3, 4, 6, 3), 64), "resnet101": ((3, 4, 23, 3), 64)}
STAGES["resnet_tiny"] = ((1, 1, 1, 1), 4)
STAGES[DEEP_TINY_BACKBONE] = (DEEP_TINY_STAGES, 4)  # stacked blocks in every stage
# torchvision's replace_stride_with_dilation for layer2..layer4 at each output stride.
REPLACE_STRIDE_WITH_DILATION = {
    32: (False, False, False),
    16: (False, False, True),
    8: (False, True, True),
}
BN_EPS = 1e-5
# Float32 Flax against float64 NumPy or float32 PyTorch, relative to the feature scale.
TOLERANCE = 1e-4


# ---------------------------------------------------------------------------------------
# Random torchvision state dicts and a float64 NumPy reference forward pass.


def torchvision_blocks(backbone: str, output_stride: int):
    """``(name, in, planes, stride, dilation, downsample)`` per block, as torchvision builds."""
    stage_sizes, width = STAGES[backbone]
    inplanes, dilation, blocks = width, 1, []
    for stage, num_blocks in enumerate(stage_sizes):
        planes, stride = width * 2**stage, 1 if stage == 0 else 2
        previous_dilation = dilation
        if stage > 0 and REPLACE_STRIDE_WITH_DILATION[output_stride][stage - 1]:
            dilation *= stride
            stride = 1
        downsample = stride != 1 or inplanes != 4 * planes
        blocks.append(
            (f"layer{stage + 1}.0", inplanes, planes, stride, previous_dilation, downsample)
        )
        inplanes = 4 * planes
        for b in range(1, num_blocks):
            blocks.append((f"layer{stage + 1}.{b}", inplanes, planes, 1, dilation, False))
    return blocks


def random_state_dict(backbone: str, seed: int = 0, *, with_fc: bool = True):
    """A torchvision-layout state dict with random weights and BatchNorm statistics."""
    rng = np.random.default_rng(seed)
    state = {}

    def conv(key, out_channels, in_channels, k):
        std = np.sqrt(2.0 / (in_channels * k * k))
        state[f"{key}.weight"] = (rng.normal(size=(out_channels, in_channels, k, k)) * std).astype(
            np.float32
        )

    def bn(key, channels, gain=1.0):
        state[f"{key}.weight"] = (gain * rng.uniform(0.5, 1.5, channels)).astype(np.float32)
        state[f"{key}.bias"] = rng.normal(scale=0.1, size=channels).astype(np.float32)
        state[f"{key}.running_mean"] = rng.normal(scale=0.1, size=channels).astype(np.float32)
        state[f"{key}.running_var"] = rng.uniform(0.5, 2.0, channels).astype(np.float32)
        state[f"{key}.num_batches_tracked"] = np.asarray(7, np.int64)

    _, width = STAGES[backbone]
    conv("conv1", width, 3, 7)
    bn("bn1", width)
    for name, inplanes, planes, _, _, downsample in torchvision_blocks(backbone, 32):
        conv(f"{name}.conv1", planes, inplanes, 1)
        bn(f"{name}.bn1", planes)
        conv(f"{name}.conv2", planes, planes, 3)
        bn(f"{name}.bn2", planes)
        conv(f"{name}.conv3", 4 * planes, planes, 1)
        # A small last gain keeps the residual stream O(1) through deep stages.
        bn(f"{name}.bn3", 4 * planes, gain=0.3)
        if downsample:
            conv(f"{name}.downsample.0", 4 * planes, inplanes, 1)
            bn(f"{name}.downsample.1", 4 * planes)
    if with_fc:
        state["fc.weight"] = rng.normal(size=(1000, 32 * width)).astype(np.float32)
        state["fc.bias"] = np.zeros(1000, np.float32)
    return state


def np_conv(x, weight, stride=1, padding=0, dilation=1):
    """float64 ``[B, H, W, I]`` * torch weight ``[O, I, Kh, Kw]`` -> ``[B, Ho, Wo, O]``."""
    x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out_channels, _, kh, kw = weight.shape
    ho = (x.shape[1] - dilation * (kh - 1) - 1) // stride + 1
    wo = (x.shape[2] - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, out_channels))
    for i in range(kh):
        for j in range(kw):
            patch = x[
                :,
                i * dilation : i * dilation + stride * (ho - 1) + 1 : stride,
                j * dilation : j * dilation + stride * (wo - 1) + 1 : stride,
            ]
            out += patch @ weight[:, :, i, j].astype(np.float64).T
    return out


def np_bn(x, state, key):
    mean, var = state[f"{key}.running_mean"], state[f"{key}.running_var"]
    scale, bias = state[f"{key}.weight"], state[f"{key}.bias"]
    return (x - mean) / np.sqrt(var.astype(np.float64) + BN_EPS) * scale + bias


def np_max_pool(x):
    """3x3, stride 2, padding 1 (torchvision's stem)."""
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    ho, wo = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    windows = [
        x[:, i : i + 2 * ho - 1 : 2, j : j + 2 * wo - 1 : 2] for i in range(3) for j in range(3)
    ]
    return np.max(windows, axis=0)


def np_resnet(images, state, backbone, output_stride):
    """float64 torchvision ResNet forward in eval mode -> ``(layer1, layer4)`` outputs."""
    relu = lambda v: np.maximum(v, 0.0)
    x = relu(np_bn(np_conv(images, state["conv1.weight"], 2, 3), state, "bn1"))
    x = np_max_pool(x)
    for name, _, _, stride, dilation, downsample in torchvision_blocks(backbone, output_stride):
        y = relu(np_bn(np_conv(x, state[f"{name}.conv1.weight"]), state, f"{name}.bn1"))
        y = np_conv(y, state[f"{name}.conv2.weight"], stride, dilation, dilation)
        y = relu(np_bn(y, state, f"{name}.bn2"))
        y = np_bn(np_conv(y, state[f"{name}.conv3.weight"]), state, f"{name}.bn3")
        if downsample:
            x = np_conv(x, state[f"{name}.downsample.0.weight"], stride)
            x = np_bn(x, state, f"{name}.downsample.1")
        x = relu(x + y)
        if name.startswith("layer1."):  # the output of the last block of layer1
            low_level = x
    return low_level, x


def assert_close(actual, expected, tolerance=TOLERANCE):
    """``|actual - expected| <= tolerance * (|expected| + max |expected|)`` elementwise."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(float(np.max(np.abs(expected))), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance * scale)


# ---------------------------------------------------------------------------------------
# PyTorch's file formats, written by hand (pickle protocol 2 opcodes).


def _pickle_tensors(entries, legacy=False):
    """Pickle of an ``OrderedDict`` of tensors as ``torch.save`` writes it.

    ``entries``: ``(key, storage_key, storage_type, numel, offset, size, stride)``.
    """
    out = bytearray(b"\x80\x02")  # PROTO 2

    def global_(module, name):
        out.extend(b"c" + f"{module}\n{name}\n".encode())

    def string(text):
        data = text.encode()
        out.extend(b"X" + struct.pack("<I", len(data)) + data)  # BINUNICODE

    def integer(value):
        out.extend(b"J" + struct.pack("<i", value))  # BININT

    def int_tuple(values):
        out.extend(b"(")  # MARK
        for value in values:
            integer(value)
        out.extend(b"t")  # TUPLE

    global_("collections", "OrderedDict")
    out.extend(b")R(")  # EMPTY_TUPLE, REDUCE, MARK
    for key, storage_key, storage_type, numel, offset, size, stride in entries:
        string(key)
        global_("torch._utils", "_rebuild_tensor_v2")
        out.extend(b"((")  # MARK (arguments), MARK (persistent id)
        string("storage")
        global_("torch", storage_type)
        string(storage_key)
        string("cpu")
        integer(numel)
        out.extend(b"Nt" if legacy else b"t")  # legacy ids end with view metadata None
        out.extend(b"Q")  # BINPERSID
        integer(offset)
        int_tuple(size)
        int_tuple(stride)
        out.extend(b"\x89")  # NEWFALSE (requires_grad)
        global_("collections", "OrderedDict")
        out.extend(b")Rt")  # backward hooks; end of the arguments
        out.extend(b"R")  # REDUCE
    out.extend(b"u.")  # SETITEMS, STOP
    return bytes(out)


STORAGE_TYPES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.int64): "LongStorage",
}


def _layout(arrays, with_view=True):
    """Storages and tensor entries covering contiguous, transposed and shared storage."""
    storages, entries = {}, []
    for key, array in arrays.items():
        storage_key = str(len(storages))
        if array.ndim == 2 and array.shape[0] != array.shape[1]:
            # Stored column-major: a transposed tensor, as ``w.t()`` saves.
            storage = np.ascontiguousarray(array.T).ravel()
            stride = (1, array.shape[0])
        else:
            storage = np.ascontiguousarray(array).ravel()
            stride = tuple(int(np.prod(array.shape[i + 1 :])) for i in range(array.ndim))
        # Pad the storage with 3 leading elements so that the tensor has an offset.
        storage = np.concatenate([np.zeros(3, array.dtype), storage])
        storages[storage_key] = storage
        entries.append(
            (key, storage_key, STORAGE_TYPES[array.dtype], storage.size, 3, array.shape, stride)
        )
    expected = dict(arrays)
    if not with_view:
        return storages, entries, expected
    # A second tensor viewing the first storage at another offset.
    first_key, first = next(iter(arrays.items()))
    entries.append(
        ("view_of_" + first_key, "0", STORAGE_TYPES[first.dtype], storages["0"].size, 4, (2,), (1,))
    )
    expected["view_of_" + first_key] = storages["0"][4:6]
    return storages, entries, expected


def write_torch_zip(path, arrays, *, archive="archive", with_view=True):
    """``arrays`` as ``torch.save`` (zip format) would save them as tensors.

    With ``with_view``, also a tensor ``"view_of_<first key>"`` sharing the first storage.
    """
    storages, entries, expected = _layout(arrays, with_view)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as file:
        file.writestr(f"{archive}/data.pkl", _pickle_tensors(entries))
        file.writestr(f"{archive}/byteorder", "little")
        for key, storage in storages.items():
            file.writestr(
                f"{archive}/data/{key}", storage.astype(storage.dtype.newbyteorder("<")).tobytes()
            )
        file.writestr(f"{archive}/version", "3\n")
    return expected


def write_torch_legacy(path, arrays):
    """``arrays`` in the pre-1.6 ``torch.save`` stream format."""
    storages, entries, expected = _layout(arrays)
    with open(path, "wb") as file:
        file.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
        file.write(pickle.dumps(1001, protocol=2))
        sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}
        file.write(pickle.dumps(sys_info, protocol=2))
        file.write(_pickle_tensors(entries, legacy=True))
        file.write(pickle.dumps(sorted(storages), protocol=2))
        for key in sorted(storages):
            file.write(struct.pack("<q", storages[key].size) + storages[key].tobytes())
    return expected


def example_arrays(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    return {
        "conv.weight": rng.normal(size=shape).astype(dtype),
        "fc.weight": rng.normal(size=(shape[0], 5)).astype(dtype),
        "bn.num_batches_tracked": np.asarray(3, np.int64),
    }


# ---------------------------------------------------------------------------------------
# Reading without PyTorch.


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape", [(4, 3, 7, 7), (3, 2, 1, 1)])
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_numpy_reader_returns_the_exact_arrays(tmp_path, shape, dtype, fmt):
    path = tmp_path / "weights.pth"
    write = write_torch_zip if fmt == "zip" else write_torch_legacy
    expected = write(path, example_arrays(shape, dtype))
    state_dict = load_torchvision_state_dict(path, backend="numpy")
    assert list(state_dict) == list(expected)
    for key, value in expected.items():
        assert state_dict[key].dtype == value.dtype, key
        np.testing.assert_array_equal(state_dict[key], value, strict=True)


def test_npz_reader(tmp_path):
    arrays = example_arrays((4, 3, 3, 3), np.float32)
    np.savez(tmp_path / "weights.npz", **arrays)
    state_dict = load_torchvision_state_dict(tmp_path / "weights.npz")
    assert state_dict.keys() == arrays.keys()
    for key, value in arrays.items():
        np.testing.assert_array_equal(state_dict[key], value, strict=True)


def test_numpy_reader_refuses_other_globals(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    payload = b"\x80\x02cos\nremove\nX" + struct.pack("<I", len(str(victim))) + str(victim).encode()
    payload += b"\x85R."  # TUPLE1, REDUCE, STOP: os.remove(victim)
    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as file:
        file.writestr("archive/data.pkl", payload)
    with pytest.raises(ValueError, match=r"evil\.pth.*os\.remove is not allowed"):
        load_torchvision_state_dict(tmp_path / "evil.pth", backend="numpy")
    assert victim.read_text() == "keep me"


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_storage(path):
    # Flip bytes inside the stored (uncompressed) first storage: the zip CRC fails.
    data = bytearray(path.read_bytes())
    start = data.find(b"archive/data/0") + len("archive/data/0") + 8
    data[start : start + 4] = bytes(255 - b for b in data[start : start + 4])
    path.write_bytes(bytes(data))


def _short_storage(path):
    with zipfile.ZipFile(path, "w") as file:
        file.writestr(
            "archive/data.pkl", _pickle_tensors([("w", "0", "FloatStorage", 6, 0, (2, 3), (3, 1))])
        )
        file.writestr("archive/data/0", np.zeros(5, np.float32).tobytes())


def _out_of_bounds_view(path):
    with zipfile.ZipFile(path, "w") as file:
        file.writestr(
            "archive/data.pkl", _pickle_tensors([("w", "0", "FloatStorage", 6, 2, (2, 3), (3, 1))])
        )
        file.writestr("archive/data/0", np.zeros(6, np.float32).tobytes())


@pytest.mark.parametrize(
    ("fmt", "corrupt"),
    [
        ("zip", _truncated),
        ("legacy", _truncated),
        ("zip", _corrupt_storage),
        ("zip", _short_storage),
        ("zip", _out_of_bounds_view),
    ],
)
def test_corrupt_checkpoint_raises_naming_the_file(tmp_path, fmt, corrupt):
    path = tmp_path / "broken-checkpoint.pth"
    (write_torch_zip if fmt == "zip" else write_torch_legacy)(
        path, example_arrays((4, 3, 3, 3), np.float32)
    )
    corrupt(path)
    with pytest.raises(ValueError, match=r"broken-checkpoint\.pth"):
        load_torchvision_state_dict(path, backend="numpy")


def test_legacy_tensor_outside_the_object_raises_naming_it(tmp_path):
    # A legacy stream whose storage-key list is a pickled tensor instead of a list.
    storages, entries, _ = _layout(example_arrays((4, 3, 3, 3), np.float32))
    path = tmp_path / "broken-checkpoint.pth"
    with open(path, "wb") as file:
        file.write(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2))
        file.write(pickle.dumps(1001, protocol=2))
        file.write(pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2))
        file.write(_pickle_tensors(entries, legacy=True))
        file.write(_pickle_tensors(entries[:1], legacy=True))
    with pytest.raises(
        ValueError, match=r"broken-checkpoint\.pth.*UnpicklingError: tensor storage '0' in the"
    ):
        load_torchvision_state_dict(path, backend="numpy")


def test_missing_file_and_bad_backend(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_torchvision_state_dict(tmp_path / "nowhere.pth")
    np.savez(tmp_path / "weights.npz", w=np.zeros(2))
    with pytest.raises(ValueError, match="backend"):
        load_torchvision_state_dict(tmp_path / "weights.npz", backend="jax")


def test_without_torch_auto_reads_with_numpy_and_torch_backend_raises(tmp_path, monkeypatch):
    # An entry of None in sys.modules makes `import torch` raise ImportError.
    monkeypatch.setitem(sys.modules, "torch", None)
    path = tmp_path / "weights.pth"
    expected = write_torch_zip(path, example_arrays((2, 3, 1, 1), np.float32))
    state_dict = load_torchvision_state_dict(path)
    assert list(state_dict) == list(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(state_dict[key], value, strict=True)
    with pytest.raises(ValueError, match="needs PyTorch"):
        load_torchvision_state_dict(path, backend="torch")


# ---------------------------------------------------------------------------------------
# Conversion.


@functools.cache
def backbone_at(backbone: str, output_stride: int):
    """``(variable shapes, jitted apply)`` of ``backbone`` at ``output_stride``.

    Shared by the tests that compare it with a reference: one trace of the model's
    ``init`` per backbone and stride, and one compiled program per image shape. The
    variables' shapes do not depend on the stride; the conversion from a model is
    tested in :func:`test_conversion_maps_every_key_with_torchvision_layouts`.
    """
    model = create_resnet(backbone, output_stride=output_stride)
    images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), images), jax.jit(model.apply)


# Image sizes of the comparisons with references: one square, one non-square with an
# even and an odd side.
SIZES = ((33, 33), (40, 37))


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("size", SIZES)
def test_converted_tiny_backbone_matches_numpy_reference(output_stride, size):
    state = random_state_dict("resnet_tiny", seed=output_stride)
    shapes, apply = backbone_at("resnet_tiny", output_stride)
    variables = torchvision_to_flax_resnet(state, shapes)
    images = np.random.default_rng(1).normal(size=(2, *size, 3))
    low, high = apply(variables, jnp.asarray(images, jnp.float32))
    expected_low, expected_high = np_resnet(images, state, "resnet_tiny", output_stride)
    assert_close(low, expected_low)
    assert_close(high, expected_high)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_conversion_into_stacked_blocks_matches_numpy_reference(deep_tiny_backbone, output_stride):
    """Block b >= 1 of a stage lands in slice b - 1 of the stacked module; the backbone
    computes torchvision's function, as the unrolled one does."""
    state = random_state_dict(deep_tiny_backbone, seed=output_stride)
    model = create_resnet(deep_tiny_backbone, output_stride=output_stride)
    variables = torchvision_to_flax_resnet(state, model)
    stacked = variables["params"]["layer2_blocks"]["conv2"]["kernel"]  # [2, 3, 3, 8, 8]
    np.testing.assert_array_equal(
        stacked[1, 1, 2, 3, 4], state["layer2.2.conv2.weight"][4, 3, 1, 2]
    )
    np.testing.assert_array_equal(
        variables["batch_stats"]["layer3_blocks"]["bn1"]["var"][0],
        state["layer3.1.bn1.running_var"],
    )
    unrolled_model = create_resnet(deep_tiny_backbone, scan_blocks=False)
    unrolled = torchvision_to_flax_resnet(state, unrolled_model)
    per_block = unstack_blocks(variables)
    assert jax.tree.structure(per_block) == jax.tree.structure(unrolled)
    jax.tree.map(np.testing.assert_array_equal, per_block, unrolled)
    # From variables rather than a model: the same layout.
    from_variables = torchvision_to_flax_resnet(state, variables)
    jax.tree.map(np.testing.assert_array_equal, from_variables, variables)
    images = np.random.default_rng(1).normal(size=(2, 33, 33, 3))
    low, high = jax.jit(model.apply)(variables, jnp.asarray(images, jnp.float32))
    expected_low, expected_high = np_resnet(images, state, deep_tiny_backbone, output_stride)
    assert_close(low, expected_low)
    assert_close(high, expected_high)


def test_load_pretrained_backbone_into_stacked_deeplab(deep_tiny_backbone):
    model = DeepLabV3Plus(**{**TINY_DEEPLAB, "backbone": deep_tiny_backbone})
    variables = random_variables(model, (1, 33, 33, 3))
    state = random_state_dict(deep_tiny_backbone, seed=5)
    loaded = load_pretrained_backbone(variables, state)
    expected = torchvision_to_flax_resnet(state, create_resnet(deep_tiny_backbone))
    assert "layer3_blocks" in loaded["params"]["encoder"]
    for collection in ("params", "batch_stats"):
        jax.tree.map(
            np.testing.assert_array_equal, loaded[collection]["encoder"], expected[collection]
        )
    assert loaded["params"]["aspp"] is variables["params"]["aspp"]


def test_conversion_maps_every_key_with_torchvision_layouts():
    state = random_state_dict("resnet_tiny")
    variables = torchvision_to_flax_resnet(state, create_resnet("resnet_tiny"))
    params, stats = variables["params"], variables["batch_stats"]
    block = params["layer2_block0"]
    np.testing.assert_array_equal(
        block["conv2"]["kernel"][1, 2, 3, 4], state["layer2.0.conv2.weight"][4, 3, 1, 2]
    )
    np.testing.assert_array_equal(
        block["downsample_conv"]["kernel"][0, 0],
        state["layer2.0.downsample.0.weight"][:, :, 0, 0].T,
    )
    np.testing.assert_array_equal(params["bn1"]["scale"], state["bn1.weight"])
    np.testing.assert_array_equal(
        stats["layer4_block0"]["downsample_bn"]["var"], state["layer4.0.downsample.1.running_var"]
    )
    used = {k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert num_params(variables) == sum(state[k].size for k in used)


@pytest.mark.parametrize(
    ("backbone", "expected"), [("resnet50", 23_508_032), ("resnet101", 42_500_160)]
)
def test_full_backbone_parameter_counts(backbone, expected):
    # torchvision: 25,557,032 and 44,549,160 with the 2048 x 1000 classifier (2,049,000).
    shapes = jax.eval_shape(
        create_resnet(backbone).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
    )
    assert num_params(shapes["params"]) == expected
    assert (
        num_params(shapes["params"]) + 2048 * 1000 + 1000
        == {
            "resnet50": 25_557_032,
            "resnet101": 44_549_160,
        }[backbone]
    )
    # Every key of a torchvision state dict converts; zero-stride arrays hold no memory.
    state = {
        key: np.broadcast_to(np.float32(0), shape)
        for key, shape in random_state_shapes(backbone).items()
    }
    converted = torchvision_to_flax_resnet(state, shapes)
    assert jax.tree.map(lambda a: (a.shape, a.dtype), converted) == jax.tree.map(
        lambda a: (a.shape, a.dtype), dict(shapes)
    )


def random_state_shapes(backbone):
    """Shapes of a torchvision state dict, without drawing the weights."""
    _, width = STAGES[backbone]
    shapes = {"conv1.weight": (width, 3, 7, 7), "fc.weight": (1000, 32 * width), "fc.bias": (1000,)}

    def bn(key, channels):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{key}.{leaf}"] = (channels,)
        shapes[f"{key}.num_batches_tracked"] = ()

    bn("bn1", width)
    for name, inplanes, planes, _, _, downsample in torchvision_blocks(backbone, 16):
        shapes[f"{name}.conv1.weight"] = (planes, inplanes, 1, 1)
        shapes[f"{name}.conv2.weight"] = (planes, planes, 3, 3)
        shapes[f"{name}.conv3.weight"] = (4 * planes, planes, 1, 1)
        for i, channels in ((1, planes), (2, planes), (3, 4 * planes)):
            bn(f"{name}.bn{i}", channels)
        if downsample:
            shapes[f"{name}.downsample.0.weight"] = (4 * planes, inplanes, 1, 1)
            bn(f"{name}.downsample.1", 4 * planes)
    return shapes


def test_conversion_lists_missing_unexpected_and_mismatched_keys():
    state = random_state_dict("resnet_tiny")
    del state["layer3.0.bn2.running_var"]
    state["layer5.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
    state["layer1.0.conv2.weight"] = state["layer1.0.conv2.weight"][:, :, :2]
    state["layer2.0.bn1.weight"] = state["layer2.0.bn1.weight"].astype(np.int64)
    with pytest.raises(ValueError) as error:
        torchvision_to_flax_resnet(state, create_resnet("resnet_tiny"))
    message = str(error.value)
    assert "missing keys (1): layer3.0.bn2.running_var" in message
    assert "unexpected keys (1): layer5.0.conv1.weight" in message
    assert "mismatched keys (2)" in message
    assert "layer1.0.conv2.weight: checkpoint (4, 4, 2, 3), model (4, 4, 3, 3)" in message
    assert "layer2.0.bn1.weight: checkpoint dtype int64" in message
    assert "fc." not in message and "num_batches_tracked" not in message


def test_conversion_ignores_only_fc_and_num_batches_tracked():
    state = random_state_dict("resnet_tiny", with_fc=False)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    converted = torchvision_to_flax_resnet(state, create_resnet("resnet_tiny"))
    assert num_params(converted) == sum(v.size for v in state.values())
    state["fc_extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): fc_extra\.weight"):
        torchvision_to_flax_resnet(state, create_resnet("resnet_tiny"))


@pytest.mark.parametrize("fmt", ["zip", "npz"])
def test_load_pretrained_backbone_into_deeplab(tmp_path, fmt):
    model = DeepLabV3Plus(**TINY_DEEPLAB)
    variables = random_variables(model, (1, 33, 33, 3))
    state = random_state_dict("resnet_tiny", seed=3)
    if fmt == "zip":
        path = tmp_path / "resnet_tiny.pth"
        write_torch_zip(path, state, with_view=False)
    else:
        path = tmp_path / "resnet_tiny.npz"
        np.savez(path, **state)
    loaded = load_pretrained_backbone(variables, path, backend="numpy")
    expected = torchvision_to_flax_resnet(state, create_resnet("resnet_tiny"))
    for collection in ("params", "batch_stats"):
        jax.tree.map(
            np.testing.assert_array_equal, loaded[collection]["encoder"], expected[collection]
        )
        for name, subtree in variables[collection].items():
            if name != "encoder":
                assert loaded[collection][name] is subtree
    # The model runs with the loaded backbone and its encoder output is the backbone's.
    images = jnp.asarray(np.random.default_rng(0).normal(size=(1, 33, 33, 3)), jnp.float32)
    intermediates = jax.jit(functools.partial(model.apply, method=model.intermediates))
    low = intermediates(loaded, images)["low_level"]
    expected_low, _ = np_resnet(np.asarray(images, np.float64), state, "resnet_tiny", 16)
    assert_close(low, expected_low)


def test_load_pretrained_backbone_into_dan():
    model = DAN(**TINY_DAN)
    variables = random_variables(model, (1, 33, 33, 3))
    state = random_state_dict("resnet_tiny", seed=4)
    loaded = load_pretrained_backbone(variables, state)
    expected = torchvision_to_flax_resnet(state, create_resnet("resnet_tiny"))
    jax.tree.map(np.testing.assert_array_equal, loaded["params"]["encoder"], expected["params"])
    assert loaded["params"]["decoder"] is variables["params"]["decoder"]


def test_load_pretrained_backbone_without_backbone_raises():
    variables = {"params": {"head": {}}, "batch_stats": {}}
    with pytest.raises(ValueError, match="params/encoder"):
        load_pretrained_backbone(variables, random_state_dict("resnet_tiny"))


# ---------------------------------------------------------------------------------------
# Against PyTorch (optional).


def torch_resnet(backbone, output_stride):
    """A ``torch.nn`` ResNet with torchvision's module names and dilation rule."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Bottleneck(nn.Module):
        def __init__(self, inplanes, planes, stride, dilation, downsample):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(
                planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False
            )
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(4 * planes)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if downsample:
                self.downsample = nn.Sequential(
                    nn.Conv2d(inplanes, 4 * planes, 1, stride, bias=False),
                    nn.BatchNorm2d(4 * planes),
                )

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            identity = x if self.downsample is None else self.downsample(x)
            return self.relu(y + identity)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            _, width = STAGES[backbone]
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            layers = {}
            for name, *args in torchvision_blocks(backbone, output_stride):
                layers.setdefault(name.split(".")[0], []).append(Bottleneck(*args))
            for name, blocks in layers.items():
                setattr(self, name, nn.Sequential(*blocks))
            self.fc = nn.Linear(32 * width, 1000)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            low = self.layer1(x)
            return low, self.layer4(self.layer3(self.layer2(low)))

    return ResNet()


def _randomise_batch_norm(model, seed):
    return pytest.importorskip("benchmarks._torch_deeplab").randomise_batch_norm(model, seed)


def _compare_with_torch(tmp_path, backbone, size, output_strides, seed=0):
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    images = np.random.default_rng(seed).normal(size=(2, *size, 3)).astype(np.float32)
    path = tmp_path / f"{backbone}.pth"
    for output_stride in output_strides:
        torch.manual_seed(seed)
        reference = _randomise_batch_norm(torch_resnet(backbone, output_stride), seed)
        if output_stride == output_strides[0]:
            torch.save(reference.state_dict(), path)
        with torch.no_grad():
            low, high = reference(torch.from_numpy(images).permute(0, 3, 1, 2))
        expected = [t.permute(0, 2, 3, 1).numpy() for t in (low, high)]
        with_torch = load_torchvision_state_dict(path, backend="torch")
        without_torch = load_torchvision_state_dict(path, backend="numpy")
        assert with_torch.keys() == without_torch.keys()
        for key, value in with_torch.items():
            np.testing.assert_array_equal(without_torch[key], value, strict=True)
        shapes, apply = backbone_at(backbone, output_stride)
        variables = torchvision_to_flax_resnet(without_torch, shapes)
        actual = apply(variables, jnp.asarray(images))
        for a, e in zip(actual, expected, strict=True):
            assert_close(a, e)


@pytest.mark.parametrize("size", SIZES)  # the programs of the NumPy comparison
def test_tiny_backbone_matches_torch(tmp_path, size):
    _compare_with_torch(tmp_path, "resnet_tiny", size, (8, 16, 32))


@pytest.mark.slow
def test_resnet50_matches_torch(tmp_path):
    _compare_with_torch(tmp_path, "resnet50", (65, 65), (8, 16, 32))


@pytest.mark.parametrize(
    ("backbone", "expected"), [("resnet50", 25_557_032), ("resnet101", 44_549_160)]
)
def test_torch_reference_parameter_counts(backbone, expected):
    # torchvision's published counts: the reference model has torchvision's architecture.
    model = torch_resnet(backbone, 16)
    assert sum(p.numel() for p in model.parameters()) == expected
    shapes = random_state_shapes(backbone)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == {
        k: v for k, v in shapes.items()
    }


def test_hand_written_files_are_torch_checkpoints(tmp_path):
    torch = pytest.importorskip("torch")
    arrays = example_arrays((4, 3, 3, 3), np.float32)
    for write in (write_torch_zip, write_torch_legacy):
        path = tmp_path / f"{write.__name__}.pth"
        expected = write(path, arrays)
        loaded = torch.load(path, map_location="cpu", weights_only=True)
        assert list(loaded) == list(expected)
        for key, value in expected.items():
            np.testing.assert_array_equal(loaded[key].numpy(), value, strict=True)


@pytest.mark.parametrize("legacy", [False, True])
def test_torch_saved_state_dict_reads_the_same_without_torch(tmp_path, legacy):
    torch = pytest.importorskip("torch")
    model = _randomise_batch_norm(torch_resnet("resnet_tiny", 16), 5)
    state = model.state_dict()
    state["half"] = torch.randn(3, 2).half().t()
    path = tmp_path / "tiny.pth"
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    with_torch = load_torchvision_state_dict(path, backend="torch")
    without = load_torchvision_state_dict(path, backend="numpy")
    assert list(with_torch) == list(without) == list(state)
    for key, value in state.items():
        np.testing.assert_array_equal(without[key], value.numpy(), strict=True)
        np.testing.assert_array_equal(with_torch[key], value.numpy(), strict=True)
