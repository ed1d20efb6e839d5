"""Tests for spectral_jax.models.deeplab: shapes at every feature size, the encode/decode
split, gradients with respect to the ASPP features, retracing and bad configurations.

Full-size models are checked with ``jax.eval_shape`` only (no compilation). The tiny
model runs on 33 x 33 inputs: low-level grid 9, ASPP grid 3 at output stride 16.
Tolerance for comparing two float32 evaluations of the same graph: 1e-5.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax import truncation
from spectral_jax.models import DeepLabV3Plus, aspp_rates
from tests.helpers.models import (
    TINY_DEEPLAB,
    full_size_shapes,
    num_params,
    tiny_variables,
)


def test_full_size_parameter_counts():
    params = full_size_shapes(DeepLabV3Plus)["params"]
    # ResNet-101 as torchvision counts it (no classifier); ASPP and decoder of the
    # paper's 256-channel DeepLab v3+ (decoder: "1.3 million parameters", Sec. 3.2).
    assert num_params(params["encoder"]) == 42_500_160
    assert num_params(params["aspp"]) == 15_535_104
    assert num_params(params["decoder"]) == 1_309_045


@pytest.mark.parametrize(
    "feature_size, decoder_size", [(None, 129), (129, 129), (65, 65), (33, 33)]
)
def test_full_size_shapes_at_513(feature_size, decoder_size):
    model = DeepLabV3Plus(feature_size=feature_size, resample="spectral")
    x = jax.ShapeDtypeStruct((2, 513, 513, 3), jnp.float32)
    out = jax.eval_shape(
        functools.partial(model.apply, method=model.intermediates),
        full_size_shapes(DeepLabV3Plus),
        x,
    )
    assert out["aspp"].shape == (2, 33, 33, 256)
    assert out["low_level"].shape == (2, 129, 129, 256)
    assert out["decoder_input"].shape == (2, decoder_size, decoder_size, 304)
    assert out["decoder_logits"].shape == (2, decoder_size, decoder_size, 21)
    assert out["logits"].shape == (2, 513, 513, 21)


@functools.cache
def _tiny_variable_shapes():
    """The tiny model's variable shapes, which depend neither on the output stride, the
    feature size nor the resampling (tests.helpers.models.tiny_variables)."""
    x = jax.ShapeDtypeStruct((2, 33, 33, 3), jnp.float32)
    return jax.eval_shape(DeepLabV3Plus(**TINY_DEEPLAB).init, jax.random.key(0), x)


# Every grid at output stride 16; at output stride 8 (which changes only the ASPP grid,
# checked by the untruncated case) the other grids are slow.
TINY_GRIDS = [(None, 9), (9, 9), (5, 5), (3, 3)]


@pytest.mark.parametrize("method", truncation.RESAMPLE_METHODS)
@pytest.mark.parametrize(
    "output_stride, feature_size, decoder_size",
    [(16, *grid) for grid in TINY_GRIDS]
    + [(8, *TINY_GRIDS[0])]
    + [pytest.param(8, *grid, marks=pytest.mark.slow) for grid in TINY_GRIDS[1:]],
)
def test_tiny_shapes(method, feature_size, decoder_size, output_stride):
    model = DeepLabV3Plus(
        **TINY_DEEPLAB, output_stride=output_stride, feature_size=feature_size, resample=method
    )
    x = jax.ShapeDtypeStruct((2, 33, 33, 3), jnp.float32)
    variables = _tiny_variable_shapes()  # apply checks every parameter's shape
    out = jax.eval_shape(functools.partial(model.apply, method=model.intermediates), variables, x)
    aspp_size = 33 // output_stride + 1
    assert out["aspp"].shape == (2, aspp_size, aspp_size, 8)
    assert out["decoder_input"].shape == (2, decoder_size, decoder_size, 12)
    assert out["logits"].shape == (2, 33, 33, 3)


@pytest.mark.parametrize("feature_size, decoder_shape", [(None, (9, 5)), (5, (5, 5)), (3, (3, 3))])
def test_non_square_input(feature_size, decoder_shape):
    model = DeepLabV3Plus(**TINY_DEEPLAB, feature_size=feature_size)
    x = jax.ShapeDtypeStruct((1, 33, 17, 3), jnp.float32)
    variables = _tiny_variable_shapes()
    out = jax.eval_shape(functools.partial(model.apply, method=model.intermediates), variables, x)
    assert out["decoder_input"].shape == (1, *decoder_shape, 12)
    assert out["logits"].shape == (1, 33, 17, 3)


@pytest.mark.parametrize("method", truncation.RESAMPLE_METHODS)
def test_tiny_forward_encode_decode_and_grad(rng, method):
    model = DeepLabV3Plus(**TINY_DEEPLAB, feature_size=5, resample=method)
    x = jnp.asarray(rng.normal(size=(2, 33, 33, 3)), jnp.float32)
    variables = tiny_variables(DeepLabV3Plus)
    out = jax.jit(functools.partial(model.apply, method="intermediates"))(variables, x)
    assert out["logits"].shape == (2, 33, 33, 3)
    assert np.isfinite(np.asarray(out["logits"])).all()
    aspp, low_level = out["aspp"], out["low_level"]
    # The decoder input starts with the ASPP features resampled to the decoder grid.
    expected = truncation.resize_features(aspp, 5, method=method)
    np.testing.assert_allclose(out["decoder_input"][..., :8], expected, atol=1e-5)

    # The split at the ASPP output: d(loss)/d(aspp) through the decoder alone.
    def loss(aspp):
        decoded = model.apply(variables, aspp, low_level, (33, 33), method=model.decode)
        return jnp.mean(jax.nn.logsumexp(decoded["logits"], axis=-1))

    grad = jax.jit(jax.grad(loss))(aspp)
    assert grad.shape == aspp.shape
    assert np.isfinite(np.asarray(grad)).all() and np.abs(np.asarray(grad)).max() > 0


def test_untruncated_equals_explicit_low_level_size(rng):
    x = jnp.asarray(rng.normal(size=(2, 33, 33, 3)), jnp.float32)
    untruncated = DeepLabV3Plus(**TINY_DEEPLAB, feature_size=None)
    explicit = DeepLabV3Plus(**TINY_DEEPLAB, feature_size=9)
    variables = tiny_variables(DeepLabV3Plus)
    np.testing.assert_allclose(
        jax.jit(untruncated.apply)(variables, x), jax.jit(explicit.apply)(variables, x), atol=1e-5
    )


def test_train_mode_updates_batch_stats_and_no_retrace(rng):
    model = DeepLabV3Plus(**TINY_DEEPLAB, feature_size=5, resample="spectral")
    x = jnp.asarray(rng.normal(size=(2, 33, 33, 3)), jnp.float32)
    variables = tiny_variables(DeepLabV3Plus)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def train_apply(variables, x):
        return model.apply(variables, x, train=True, mutable=["batch_stats"])

    for _ in range(2):
        logits, updates = train_apply(variables, x)
        variables = {**variables, **updates}
    assert logits.shape == (2, 33, 33, 3)
    assert set(updates) == {"batch_stats"}


def test_aspp_rates():
    assert aspp_rates(16) == (6, 12, 18)
    assert aspp_rates(8) == (12, 24, 36)
    assert aspp_rates(32) == (3, 6, 9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(feature_size=17), "feature_size"),
        (dict(feature_size=0), "feature_size"),
        (dict(resample="nearest"), "resample"),
        (dict(output_stride=4), "output_stride"),
        (dict(backbone="resnet18"), "backbone"),
    ],
)
def test_bad_configuration_raises(kwargs, match):
    model = DeepLabV3Plus(**{**TINY_DEEPLAB, **kwargs})
    x = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32)
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(model.init, jax.random.key(0), x)
