"""Value tests of the ASPP and of the DeepLab v3+ and DAN decoders against float64 NumPy.

Every layer is re-implemented here from its definition, with known (random but fixed)
weights taken from the Flax variables: convolution as cross-correlation with HWIO
kernels and symmetric ``dilation * (k - 1) / 2`` zero padding ("SAME" for odd kernels),
BatchNorm in inference mode with the variables' running statistics
(``(x - mean) / sqrt(var + 1e-5) * scale + bias``), ReLU, concatenation on the channel
axis. The BatchNorm statistics and biases are random too (not the identity), so that a
skipped or misplaced normalisation shows.

The only library function the references use is
:func:`spectral_jax.truncation.resize_features`, where a test is about how the decoder
composes its layers (which array is resampled, with which method, before or after which
projection); the final up-sampling of the logits is checked against a NumPy
interpolation matrix written here.

Everything (model, variables, inputs, references) runs in float64 (the ``x64`` fixture,
models with ``dtype=jnp.float64``); the outputs are asserted to be float64. The Flax and
NumPy graphs differ only in summation order, so the tolerance is ``atol = rtol = 1e-10``
on values of order one.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.models import DAN, DeepLabV3Plus, aspp_rates
from spectral_jax.truncation import RESAMPLE_METHODS, resize_features
from tests.helpers.models import TINY_DAN, TINY_DEEPLAB

BN_EPS = 1e-5
TOL = dict(atol=1e-10, rtol=1e-10)


# --------------------------------------------------------------------------------------
# Known variables


@functools.cache
def _variables(model_class: type, seed: int = 0):
    """Random float64 NumPy variables of a tiny model, from ``jax.eval_shape`` shapes.

    He-normal kernels, random biases, BatchNorm scales in [0.5, 1.5], running means of
    scale 0.3 and running variances in [0.5, 2]. NumPy leaves (not jax arrays), so that
    they become float64 only inside the ``x64`` fixture.
    """
    settings = TINY_DEEPLAB if model_class is DeepLabV3Plus else TINY_DAN
    shapes = jax.eval_shape(
        model_class(**settings).init,
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32),
    )
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            return rng.normal(size=leaf.shape) * np.sqrt(2 / fan_in)
        if name == "scale":
            return rng.uniform(0.5, 1.5, size=leaf.shape)
        if name == "var":
            return rng.uniform(0.5, 2.0, size=leaf.shape)
        if name == "mean":
            return rng.normal(scale=0.3, size=leaf.shape)
        return rng.normal(scale=0.2, size=leaf.shape)  # bias

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _to_jax(variables):
    """The NumPy variables as float64 jax arrays (call inside the ``x64`` fixture)."""
    out = jax.tree.map(jnp.asarray, variables)
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(out))
    return out


def _submodule(variables, name):
    """``(params, batch_stats)`` of one submodule (``"aspp"``, ``"decoder"``)."""
    return variables["params"][name], variables["batch_stats"][name]


# --------------------------------------------------------------------------------------
# NumPy layers


def _conv(x: np.ndarray, kernel: np.ndarray, dilation: int = 1) -> np.ndarray:
    """Cross-correlation ``[B, H, W, I] x [k, k, I, O] -> [B, H, W, O]``, stride 1, zero
    padding ``dilation * (k - 1) / 2`` on every side (odd ``k``), by a loop over taps."""
    size = kernel.shape[0]
    assert kernel.shape[1] == size and size % 2 == 1
    pad = dilation * (size - 1) // 2
    _, height, width, _ = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.zeros((*x.shape[:3], kernel.shape[-1]))
    for i in range(size):
        for j in range(size):
            window = padded[
                :, i * dilation : i * dilation + height, j * dilation : j * dilation + width
            ]
            out += np.einsum("bhwi,io->bhwo", window, kernel[i, j])
    return out


def _batch_norm(x, params, stats):
    """Inference-mode BatchNorm with running statistics."""
    return (x - stats["mean"]) / np.sqrt(stats["var"] + BN_EPS) * params["scale"] + params["bias"]


def _conv_bn_relu(x, params, stats, name, dilation=1):
    y = _conv(x, params[f"{name}_conv"]["kernel"], dilation)
    return np.maximum(_batch_norm(y, params[f"{name}_bn"], stats[f"{name}_bn"]), 0.0)


def _classifier(x, params):
    return _conv(x, params["classifier"]["kernel"]) + params["classifier"]["bias"]


def _resize(x, size, method):
    """The library's resampling, in float64 (call inside the ``x64`` fixture)."""
    out = np.asarray(resize_features(jnp.asarray(x), size, method=method))
    assert out.dtype == np.float64
    return out


def _linear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` bilinear interpolation (half-pixel centres, no anti-aliasing):
    output ``j`` sits at input coordinate ``(j + 1/2) n_in / n_out - 1/2``; triangle
    weights on the input samples, renormalised to sum 1 (which clamps at the edges)."""
    centres = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    weights = np.maximum(0.0, 1.0 - np.abs(centres[:, None] - np.arange(n_in)[None, :]))
    return weights / weights.sum(axis=1, keepdims=True)


def _bilinear_upsample(x, size):
    rows, cols = _linear_matrix(x.shape[1], size[0]), _linear_matrix(x.shape[2], size[1])
    return np.einsum("ph,qw,bhwc->bpqc", rows, cols, x)


# --------------------------------------------------------------------------------------
# NumPy references of the modules


def _aspp_reference(x, params, stats, rates):
    """1x1, three 3x3 at ``rates``, image pooling (spatial mean, broadcast back); concat in
    that order; 1x1 projection. Every conv followed by BatchNorm and ReLU."""
    branches = [_conv_bn_relu(x, params, stats, "branch0")]
    for i, rate in enumerate(rates):
        branches.append(_conv_bn_relu(x, params, stats, f"branch{i + 1}", dilation=rate))
    pooled = _conv_bn_relu(x.mean(axis=(1, 2), keepdims=True), params, stats, "pool")
    branches.append(np.broadcast_to(pooled, (*x.shape[:3], pooled.shape[-1])))
    return _conv_bn_relu(np.concatenate(branches, axis=-1), params, stats, "project")


def _fuse_and_classify(decoder_input, params, stats):
    """Two 3x3 conv-BN-ReLU and the 1x1 classifier (with bias)."""
    y = _conv_bn_relu(decoder_input, params, stats, "fuse1")
    y = _conv_bn_relu(y, params, stats, "fuse2")
    return _classifier(y, params)


def _deeplab_decoder_reference(aspp, low_level, size, method, params, stats):
    """``(decoder_input, decoder_logits)``: low level resampled then projected, ASPP
    resampled, concatenated ``[aspp, low_level]``, fused and classified."""
    projected = _conv_bn_relu(_resize(low_level, size, method), params, stats, "low_level")
    decoder_input = np.concatenate([_resize(aspp, size, method), projected], axis=-1)
    return decoder_input, _fuse_and_classify(decoder_input, params, stats)


def _dan_decoder_reference(aspp, stages, size, method, params, stats):
    """``(decoder_input, decoder_logits)`` of DAN: each stage projected on the smaller of
    its own grid and the decoder grid, concatenated ``[aspp, stage1, stage2, stage3]``."""
    projected = []
    for k, stage in enumerate(stages):
        name = f"stage{k + 1}"
        if math.prod(stage.shape[1:3]) > math.prod(size):  # resample, then project
            projected.append(_conv_bn_relu(_resize(stage, size, method), params, stats, name))
        else:  # project, then resample
            projected.append(_resize(_conv_bn_relu(stage, params, stats, name), size, method))
    decoder_input = np.concatenate([_resize(aspp, size, method), *projected], axis=-1)
    return decoder_input, _fuse_and_classify(decoder_input, params, stats)


def _assert_float64_close(actual, expected):
    actual = np.asarray(actual)
    assert actual.dtype == np.float64
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, **TOL)


# --------------------------------------------------------------------------------------
# ASPP


@pytest.mark.parametrize(
    "output_stride, grid",
    [(16, (9, 9)), (16, (10, 13)), (32, (7, 7)), (32, (8, 6))],
)
def test_aspp_against_numpy_reference(x64, rng, output_stride, grid):
    """The model's ASPP (rates from its output stride) on random features equals the
    NumPy forward; the pooling branch is the spatial mean. At these grids the rate-3, 6
    (and 12 along the 13-wide axis) branches reach real neighbours, the others only
    padding beyond their centre tap."""
    model = DeepLabV3Plus(**TINY_DEEPLAB, output_stride=output_stride, dtype=jnp.float64)
    variables = _to_jax(_variables(DeepLabV3Plus))
    params, stats = _submodule(_variables(DeepLabV3Plus), "aspp")
    channels = params["branch0_conv"]["kernel"].shape[2]
    x = rng.normal(size=(2, *grid, channels))

    apply = jax.jit(lambda v, f: model.apply(v, f, method=lambda m, f: m.aspp(f)))
    out = apply(variables, jnp.asarray(x))
    expected = _aspp_reference(x, params, stats, aspp_rates(output_stride))
    assert expected.std() > 0.1  # not a dead (all-ReLU-zero) output
    _assert_float64_close(out, expected)


@functools.cache
def _jitted_decode(model, image_size):
    """One jitted ``model.decode`` per (model, image size): the tests of an equal model
    (the low-level-path test and the decoder test at the same grid) share its program."""
    return jax.jit(lambda v, aspp, low: model.apply(v, aspp, low, image_size, method=model.decode))


# --------------------------------------------------------------------------------------
# DeepLab v3+ decoder

# (low-level grid, ASPP grid, image size): odd square, even non-square.
DEEPLAB_SHAPES = [((9, 9), (3, 3), (33, 33)), ((10, 8), (3, 2), (40, 31))]


def _deeplab_decode(rng, feature_size, method, shapes):
    """Runs ``DeepLabV3Plus.decode`` in float64 on random features; returns
    ``(out, aspp, low_level, params, stats)`` (the last two NumPy, of the decoder)."""
    low_grid, aspp_grid, image_size = shapes
    model = DeepLabV3Plus(
        **TINY_DEEPLAB, feature_size=feature_size, resample=method, dtype=jnp.float64
    )
    numpy_variables = _variables(DeepLabV3Plus)
    params, stats = _submodule(numpy_variables, "decoder")
    low_channels = params["low_level_conv"]["kernel"].shape[2]
    aspp = rng.normal(size=(2, *aspp_grid, TINY_DEEPLAB["aspp_channels"]))
    low_level = rng.normal(size=(2, *low_grid, low_channels))
    decode = _jitted_decode(model, image_size)
    out = decode(_to_jax(numpy_variables), jnp.asarray(aspp), jnp.asarray(low_level))
    return out, aspp, low_level, params, stats


def _grid_cases(settings, shapes, default_square):
    """``(feature_size, method, shapes)`` cases: every setting on the even non-square
    grids (``shapes[1]``, where a swapped height and width shows), and on the odd square
    grids (``shapes[0]``) only ``default_square`` in the default suite, the rest slow:
    the decoder composes its layers the same way on both."""
    cases = []
    for feature_size, method in settings:
        marks = () if (feature_size, method) in default_square else pytest.mark.slow
        name = f"{feature_size}-{method}"
        cases.append(pytest.param(feature_size, method, shapes[0], marks=marks, id=f"{name}-odd"))
        cases.append(pytest.param(feature_size, method, shapes[1], id=f"{name}-even"))
    return cases


@pytest.mark.parametrize(
    "feature_size, method, shapes",
    _grid_cases(
        [
            (None, "bilinear"),
            (None, "spectral"),
            (5, "bilinear"),
            (5, "area"),
            (5, "spectral"),
            (4, "area"),
        ],
        DEEPLAB_SHAPES,
        default_square={(None, "bilinear"), (5, "spectral")},
    ),
)
def test_deeplab_decoder_against_numpy_reference(x64, rng, feature_size, method, shapes):
    """decode's decoder input, grid logits and up-sampled logits equal the NumPy decoder
    (resampling by the library's resize_features with the model's method)."""
    out, aspp, low_level, params, stats = _deeplab_decode(rng, feature_size, method, shapes)
    low_grid, _, image_size = shapes
    size = low_grid if feature_size is None else (feature_size, feature_size)
    decoder_input, logits = _deeplab_decoder_reference(aspp, low_level, size, method, params, stats)
    _assert_float64_close(out["decoder_input"], decoder_input)
    _assert_float64_close(out["decoder_logits"], logits)
    _assert_float64_close(out["logits"], _bilinear_upsample(logits, image_size))


@pytest.mark.parametrize("shapes", DEEPLAB_SHAPES)
@pytest.mark.parametrize("method", RESAMPLE_METHODS)
def test_deeplab_low_level_path_uses_model_resample(x64, rng, method, shapes):
    """At a truncated grid (5), the low-level part of the decoder input is
    ``projection(resize_features(low_level, method=model.resample))`` (resampled before
    the projection), and for "area" and "spectral" that is measurably different from
    resampling bilinearly, so that a decoder ignoring ``resample`` fails here."""
    out, _, low_level, params, stats = _deeplab_decode(rng, 5, method, shapes)
    aspp_channels = TINY_DEEPLAB["aspp_channels"]
    expected = _conv_bn_relu(_resize(low_level, 5, method), params, stats, "low_level")
    _assert_float64_close(out["decoder_input"][..., aspp_channels:], expected)
    if method != "bilinear":
        bilinear = _conv_bn_relu(_resize(low_level, 5, "bilinear"), params, stats, "low_level")
        assert np.abs(bilinear - expected).max() > 1e-2


# --------------------------------------------------------------------------------------
# DAN decoder

# (stage grids, ASPP grid, image size): odd square, even non-square.
DAN_SHAPES = [
    (((9, 9), (5, 5), (3, 3)), (3, 3), (33, 33)),
    (((10, 8), (5, 4), (3, 2)), (3, 2), (40, 31)),
]


@pytest.mark.parametrize(
    "feature_size, method, shapes",
    _grid_cases(
        [(None, "bilinear"), (None, "area"), (5, "spectral"), (5, "area"), (4, "bilinear")],
        DAN_SHAPES,
        default_square={(None, "bilinear"), (5, "spectral")},
    ),
)
def test_dan_decoder_against_numpy_reference(x64, rng, feature_size, method, shapes):
    """DAN.decode's decoder input, grid logits and up-sampled logits equal the NumPy
    aggregation decoder. At grid 5 stage 1 is resampled then projected and stages 2, 3
    projected then resampled; untruncated, stages 2 and 3 are up-sampled after their
    projection; at grid 4 stage 2 (25 or 20 positions) is resampled first too."""
    stage_grids, aspp_grid, image_size = shapes
    model = DAN(**TINY_DAN, feature_size=feature_size, resample=method, dtype=jnp.float64)
    numpy_variables = _variables(DAN)
    params, stats = _submodule(numpy_variables, "decoder")
    stages = tuple(
        rng.normal(size=(2, *grid, params[f"stage{k + 1}_conv"]["kernel"].shape[2]))
        for k, grid in enumerate(stage_grids)
    )
    aspp = rng.normal(size=(2, *aspp_grid, TINY_DAN["aspp_channels"]))
    decode = _jitted_decode(model, image_size)
    out = decode(_to_jax(numpy_variables), jnp.asarray(aspp), tuple(map(jnp.asarray, stages)))

    size = stage_grids[0] if feature_size is None else (feature_size, feature_size)
    decoder_input, logits = _dan_decoder_reference(aspp, stages, size, method, params, stats)
    _assert_float64_close(out["decoder_input"], decoder_input)
    _assert_float64_close(out["decoder_logits"], logits)
    _assert_float64_close(out["logits"], _bilinear_upsample(logits, image_size))
