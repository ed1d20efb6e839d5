"""Tests for spectral_jax.models.dan: parameter counts, shapes at every feature size, the
aggregation decoder against a NumPy reference, the encode/decode split, gradients,
retracing and bad configurations.

Full-size models are checked with ``jax.eval_shape`` only (no compilation). The tiny
model runs on 33 x 33 inputs: stage grids 9, 5, 3 (16, 32, 64 channels) and ASPP grid 3
at output stride 16. Tolerance for two float32 evaluations of the same graph: 1e-5.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax import truncation
from spectral_jax.models import DAN, DeepLabV3Plus
from tests.helpers.models import (
    TINY_DAN,
    full_size_shapes,
    num_params,
    tiny_variables,
)

# ASPP channels + three projections.
TINY_DECODER_INPUT = 8 + 3 * 4
BN_EPS = 1e-5


def test_full_size_decoder_parameter_count():
    params = full_size_shapes(DAN)["params"]
    projection, fuse, classes = 48, 64, 21
    stage_channels = (256, 512, 1024)  # ResNet-101 stages 1-3
    aspp = 256
    expected_decoder = (
        sum(c * projection + 2 * projection for c in stage_channels)  # 1x1 conv + BN
        + 3 * 3 * (aspp + 3 * projection) * fuse
        + 2 * fuse  # fuse1 + BN
        + 3 * 3 * fuse * fuse
        + 2 * fuse  # fuse2 + BN
        + fuse * classes
        + classes  # classifier with bias
    )
    assert expected_decoder == 355_189  # "0.4 M parameters" (paper Sec. 3.2)
    assert num_params(params["decoder"]) == expected_decoder


def test_encoder_is_deeplab_encoder():
    # Same backbone and ASPP, with the same parameter names and shapes.
    x = jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.float32)
    deeplab = jax.eval_shape(DeepLabV3Plus().init, jax.random.key(0), x)["params"]
    dan = full_size_shapes(DAN)["params"]
    shapes = lambda tree: jax.tree.map(lambda leaf: leaf.shape, tree)
    for name in ("encoder", "aspp"):
        assert shapes(dan[name]) == shapes(deeplab[name])
    assert num_params(dan["encoder"]) + num_params(dan["aspp"]) == 42_500_160 + 15_535_104


@pytest.mark.parametrize("feature_size, decoder_size", [(None, 129), (65, 65), (33, 33)])
def test_full_size_shapes_at_513(feature_size, decoder_size):
    model = DAN(feature_size=feature_size, resample="spectral")
    x = jax.ShapeDtypeStruct((2, 513, 513, 3), jnp.float32)
    out = jax.eval_shape(
        functools.partial(model.apply, method=model.intermediates), full_size_shapes(DAN), x
    )
    assert out["aspp"].shape == (2, 33, 33, 256)
    assert [s.shape for s in out["low_level"]] == [
        (2, 129, 129, 256),
        (2, 65, 65, 512),
        (2, 33, 33, 1024),
    ]
    assert out["decoder_input"].shape == (2, decoder_size, decoder_size, 256 + 3 * 48)
    assert out["decoder_logits"].shape == (2, decoder_size, decoder_size, 21)
    assert out["logits"].shape == (2, 513, 513, 21)


@functools.cache
def _tiny_variable_shapes():
    """The tiny DAN's variable shapes, which depend neither on the output stride, the
    feature size nor the resampling (tests.helpers.models.tiny_variables)."""
    x = jax.ShapeDtypeStruct((2, 33, 33, 3), jnp.float32)
    return jax.eval_shape(DAN(**TINY_DAN).init, jax.random.key(0), x)


# Every grid at output stride 16; at output stride 8 (which changes only the stage-3 and
# ASPP grids, checked by the untruncated case) the other grids are slow.
TINY_GRIDS = [(None, 9), (9, 9), (6, 6), (5, 5), (4, 4), (3, 3)]


@pytest.mark.parametrize("method", truncation.RESAMPLE_METHODS)
@pytest.mark.parametrize(
    "output_stride, feature_size, decoder_size",
    [(16, *grid) for grid in TINY_GRIDS]
    + [(8, *TINY_GRIDS[0])]
    + [pytest.param(8, *grid, marks=pytest.mark.slow) for grid in TINY_GRIDS[1:]],
)
def test_tiny_shapes(method, feature_size, decoder_size, output_stride):
    model = DAN(**TINY_DAN, output_stride=output_stride, feature_size=feature_size, resample=method)
    x = jax.ShapeDtypeStruct((2, 33, 33, 3), jnp.float32)
    variables = _tiny_variable_shapes()  # apply checks every parameter's shape
    out = jax.eval_shape(functools.partial(model.apply, method=model.intermediates), variables, x)
    aspp_size = 33 // output_stride + 1
    stage3_size = 5 if output_stride == 8 else 3
    assert out["aspp"].shape == (2, aspp_size, aspp_size, 8)
    assert [s.shape for s in out["low_level"]] == [
        (2, 9, 9, 16),
        (2, 5, 5, 32),
        (2, stage3_size, stage3_size, 64),
    ]
    assert out["decoder_input"].shape == (2, decoder_size, decoder_size, TINY_DECODER_INPUT)
    assert out["decoder_logits"].shape == (2, decoder_size, decoder_size, 3)
    assert out["logits"].shape == (2, 33, 33, 3)


@pytest.mark.parametrize("feature_size, decoder_shape", [(None, (9, 5)), (4, (4, 4))])
def test_non_square_input(feature_size, decoder_shape):
    model = DAN(**TINY_DAN, feature_size=feature_size)
    x = jax.ShapeDtypeStruct((1, 33, 17, 3), jnp.float32)
    variables = _tiny_variable_shapes()
    out = jax.eval_shape(functools.partial(model.apply, method=model.intermediates), variables, x)
    assert out["decoder_input"].shape == (1, *decoder_shape, TINY_DECODER_INPUT)
    assert out["logits"].shape == (1, 33, 17, 3)


@functools.cache
def _jitted_intermediates(model):
    """One jitted ``intermediates`` per model (models are hashable): tests of an equal
    model share its compiled program."""
    return jax.jit(functools.partial(model.apply, method="intermediates"))


def _projection_reference(stage, params, name):
    """relu(BN(conv1x1(stage))) in float64 NumPy, for random_variables' identity BatchNorm."""
    kernel = np.asarray(params["decoder"][f"{name}_conv"]["kernel"], np.float64)[0, 0]
    y = np.asarray(stage, np.float64) @ kernel / np.sqrt(1 + BN_EPS)
    return np.maximum(y, 0.0)


@pytest.mark.parametrize(
    "feature_size, method",
    [
        (None, "bilinear"),
        (5, "spectral"),
        (4, "area"),
        # Slow: the branches of grid 4 (stages 1 and 2 resampled first, stage 3 projected
        # first); tests/test_decoder_values.py checks the decoder at grids 4 and 5 too.
        pytest.param(3, "bilinear", marks=pytest.mark.slow),
    ],
)
def test_decoder_input_against_numpy_reference(rng, feature_size, method):
    """The decoder input is [aspp, stage1, stage2, stage3], each stage projected on the
    smaller of its own grid and the decoder grid (stage grids 9, 5, 3)."""
    model = DAN(**TINY_DAN, feature_size=feature_size, resample=method)
    x = jnp.asarray(rng.normal(size=(2, 33, 33, 3)), jnp.float32)
    variables = tiny_variables(DAN)
    out = _jitted_intermediates(model)(variables, x)
    size = 9 if feature_size is None else feature_size
    resize = lambda y: np.asarray(
        truncation.resize_features(jnp.asarray(y, jnp.float32), size, method=method)
    )
    expected = [resize(out["aspp"])]
    for k, stage in enumerate(out["low_level"]):
        name = f"stage{k + 1}"
        if stage.shape[1] > size:  # resample, then project
            expected.append(_projection_reference(resize(stage), variables["params"], name))
        else:  # project, then resample
            expected.append(resize(_projection_reference(stage, variables["params"], name)))
    np.testing.assert_allclose(
        out["decoder_input"], np.concatenate(expected, axis=-1), atol=1e-5, rtol=1e-5
    )


def test_encode_decode_split_equals_call_and_grad(rng):
    model = DAN(**TINY_DAN, feature_size=5, resample="spectral")
    x = jnp.asarray(rng.normal(size=(2, 33, 33, 3)), jnp.float32)
    variables = tiny_variables(DAN)
    # The compiled intermediates of test_decoder_input_against_numpy_reference[5-spectral].
    logits = _jitted_intermediates(model)(variables, x)["logits"]
    aspp, low_level = jax.jit(functools.partial(model.apply, method="encode"))(variables, x)
    decode = functools.partial(model.apply, method=model.decode, image_size=(33, 33))
    decoded = jax.jit(decode)(variables, aspp, low_level)
    np.testing.assert_allclose(decoded["logits"], logits, atol=1e-5)
    assert logits.shape == (2, 33, 33, 3) and np.isfinite(np.asarray(logits)).all()

    # d(loss)/d(aspp) through the decoder alone, as the spectral Jacobians take it.
    def loss(aspp):
        return jnp.mean(jax.nn.logsumexp(decode(variables, aspp, low_level)["logits"], axis=-1))

    grad = jax.jit(jax.grad(loss))(aspp)
    assert grad.shape == aspp.shape
    assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).max() > 0
    # A central difference along the gradient agrees with it (float32: 2 % relative).
    step = 1e-2 * grad / jnp.linalg.norm(grad)
    loss = jax.jit(loss)  # one program for both points, not each operation eagerly
    difference = (loss(aspp + step) - loss(aspp - step)) / 2
    np.testing.assert_allclose(difference, jnp.vdot(grad, step), rtol=2e-2)


def test_untruncated_equals_explicit_stride4_size(rng):
    x = jnp.asarray(rng.normal(size=(2, 33, 33, 3)), jnp.float32)
    variables = tiny_variables(DAN)
    # The first is compiled by test_decoder_input_against_numpy_reference[None-bilinear].
    untruncated = _jitted_intermediates(DAN(**TINY_DAN, feature_size=None))(variables, x)
    explicit = _jitted_intermediates(DAN(**TINY_DAN, feature_size=9))(variables, x)
    assert untruncated["decoder_input"].shape[1:3] == (9, 9)
    np.testing.assert_allclose(untruncated["logits"], explicit["logits"], atol=1e-5)


def test_dan_train_mode_updates_batch_stats_without_retracing(rng):
    # chex identifies a function by its call stack and source: the names differ from
    # tests/test_deeplab.py's, so that the two trace counters stay apart in one session.
    model = DAN(**TINY_DAN, feature_size=5, resample="area")
    x = jnp.asarray(rng.normal(size=(2, 33, 33, 3)), jnp.float32)
    variables = tiny_variables(DAN)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def dan_train_apply(variables, x):
        return model.apply(variables, x, train=True, mutable=["batch_stats"])

    for _ in range(2):
        logits, updates = dan_train_apply(variables, x)
        before = variables["batch_stats"]["decoder"]["stage3_bn"]["mean"]
        variables = {**variables, **updates}
    assert logits.shape == (2, 33, 33, 3)
    assert set(updates) == {"batch_stats"}
    assert not np.allclose(before, updates["batch_stats"]["decoder"]["stage3_bn"]["mean"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(feature_size=10), "feature_size"),
        (dict(feature_size=0), "feature_size"),
        (dict(resample="nearest"), "resample"),
        (dict(output_stride=4), "output_stride"),
        (dict(backbone="resnet18"), "backbone"),
        (dict(widths=(("decoder/classifier", 2),)), "widths"),
        (dict(widths=(("head/fuse1_conv", 2),)), "widths"),
        (dict(widths=(("decoder/fuse1_conv", 0),)), "widths"),
    ],
)
def test_bad_configuration_raises(kwargs, match):
    model = DAN(**{**TINY_DAN, **kwargs})
    x = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(model.init, jax.random.key(0), x)


def test_widths_narrow_single_layers():
    widths = (("decoder/stage2_conv", 3), ("aspp/branch1_conv", 5), ("encoder/conv1", 2))
    model = DAN(**TINY_DAN, widths=widths)
    x = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    assert params["decoder"]["stage2_conv"]["kernel"].shape == (1, 1, 32, 3)
    assert params["decoder"]["fuse1_conv"]["kernel"].shape == (3, 3, 8 + 4 + 3 + 4, 8)
    assert params["aspp"]["branch1_conv"]["kernel"].shape == (3, 3, 128, 5)
    assert params["aspp"]["project_conv"]["kernel"].shape == (1, 1, 8 + 5 + 8 + 8 + 8, 8)
    assert params["encoder"]["conv1"]["kernel"].shape == (7, 7, 3, 2)
    assert params["encoder"]["layer1_block0"]["conv1"]["kernel"].shape == (1, 1, 2, 4)
    assert params["encoder"]["layer1_block0"]["downsample_conv"]["kernel"].shape == (1, 1, 2, 16)
