"""Tests for spectral_jax.models.dct_deeplab: the stage plan, full-size shapes and
parameter counts (``jax.eval_shape`` only) against the RGB model, the segmentation
layout's convolutions against the RGB model's (tiny), tiny shapes for the static
patterns and the gate, exact channel selection in the gradient, training through the
gate (closed-form straight-through gradient of the regulariser), and no retracing.

The tiny model runs on 48 x 48 images: a 12 x 12 DCT grid in the segmentation layout
(``GRIDS``), 6 x 6 in the classification layout, ASPP grid 3 at output stride 16.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spectral_jax.flops import conv_layers
from spectral_jax.models.dct_deeplab import DCTDeepLabV3Plus, _dct_stage_dilations
from spectral_jax.models.dct_gate import gate_regularizer
from spectral_jax.models.deeplab import DeepLabV3Plus
from spectral_jax.models.resnet import stage_dilations
from spectral_jax.related.dct_input import selection_pattern
from tests.helpers.models import TINY_DEEPLAB, num_params, random_variables

IMAGE = 48  # pixels per side of the tiny models' images
GRIDS = {"segmentation": IMAGE // 4, "classification": IMAGE // 8}  # DCT positions per side
GRID = GRIDS["classification"]  # the tests that train use the smaller grid
CLASSIFICATION = dict(TINY_DEEPLAB, layout="classification")


def _pattern(num_channels, shape="square"):
    return tuple(int(i) for i in selection_pattern(num_channels, shape=shape))


def test_stage_plan():
    assert _dct_stage_dilations(16, input_stride=8) == ((1, 1), (2, 1), (1, 2), (1, 4))
    assert _dct_stage_dilations(8, input_stride=8) == ((1, 1), (1, 2), (1, 4), (1, 8))
    # Input at stride 8 instead of 4: the RGB plan of half the output stride.
    assert _dct_stage_dilations(16, input_stride=8) == stage_dilations(8)
    assert _dct_stage_dilations(32, input_stride=8) == stage_dilations(16)
    for output_stride in (8, 16, 32):
        # The segmentation layout enters stage 1 at the stride of the RGB stem's output.
        assert _dct_stage_dilations(output_stride, input_stride=4) == stage_dilations(output_stride)
        for input_stride in (4, 8):
            plan = _dct_stage_dilations(output_stride, input_stride=input_stride)
            assert input_stride * np.prod([s for s, _ in plan]) == output_stride
    with pytest.raises(ValueError, match="output_stride"):
        _dct_stage_dilations(4, input_stride=4)
    with pytest.raises(ValueError, match="input_stride"):
        _dct_stage_dilations(16, input_stride=2)


@functools.cache
def _full_size_params(kind, channels=None, gate=False, layout="segmentation"):
    if kind == "rgb":
        model, shape = DeepLabV3Plus(), (1, 513, 513, 3)
    else:
        grid = 512 // (4 if layout == "segmentation" else 8)
        model = DCTDeepLabV3Plus(channels=channels, gate=gate, layout=layout)
        shape = (1, grid, grid, 192)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return model, jax.eval_shape(model.init, jax.random.key(0), x)


@pytest.mark.parametrize("num_channels", [24, 64, 192])
def test_full_size_parameter_counts_against_the_rgb_model(num_channels):
    rgb = _full_size_params("rgb")[1]["params"]
    channels = None if num_channels == 192 else _pattern(num_channels)
    dct = _full_size_params("dct", channels)[1]["params"]
    # The stem (7x7x3x64 convolution, BatchNorm scale and bias) is gone; the first
    # bottleneck's 1x1 convolution (64 outputs) and projection (256) take K inputs, not 64.
    stem = 7 * 7 * 3 * 64 + 2 * 64
    want = num_params(rgb["encoder"]) - stem + (num_channels - 64) * (64 + 256)
    assert num_params(dct["encoder"]) == want
    assert num_params(dct["aspp"]) == num_params(rgb["aspp"])
    assert num_params(dct["decoder"]) == num_params(rgb["decoder"])
    # torchvision-compatible names for everything else.
    assert set(dct["encoder"]) == set(rgb["encoder"]) - {"conv1", "bn1"}


@pytest.mark.parametrize("layout, grid", [("segmentation", 128), ("classification", 64)])
def test_full_size_shapes_at_512_with_the_gate(layout, grid):
    model, variables = _full_size_params("dct", None, True, layout)
    gate = variables["params"]["frequency_gate"]
    # SE gate: a 192 x 192 fully connected layer and two logits (scale, bias) per channel.
    assert num_params(gate) == 192 * 192 + 192 + 4 * 192
    x = jax.ShapeDtypeStruct((2, grid, grid, 192), jnp.float32)
    out = jax.eval_shape(functools.partial(model.apply, method=model.intermediates), variables, x)
    assert out["aspp"].shape == (2, 32, 32, 256)
    assert out["low_level"].shape == (2, grid, grid, 256)  # stride 4 or 8
    assert out["decoder_logits"].shape == (2, grid, grid, 21)
    assert out["logits"].shape == (2, 512, 512, 21)
    assert out["gates"].shape == out["gate_probabilities"].shape == (2, 192)


def test_full_size_segmentation_layout_has_the_rgb_models_shapes():
    """[B, 128, 128, K] DCT input and a 512 x 512 image give the same intermediates."""
    rgb = DeepLabV3Plus()
    images = jax.ShapeDtypeStruct((2, 512, 512, 3), jnp.float32)
    rgb_out = jax.eval_shape(
        functools.partial(rgb.apply, method=rgb.intermediates),
        jax.eval_shape(rgb.init, jax.random.key(0), images),
        images,
    )
    model, variables = _full_size_params("dct", _pattern(6))
    x = jax.ShapeDtypeStruct((2, 128, 128, 192), jnp.float32)
    out = jax.eval_shape(functools.partial(model.apply, method=model.intermediates), variables, x)
    assert out["inputs"].shape == (2, 128, 128, 6)
    for name in ("aspp", "low_level", "decoder_input", "decoder_logits", "logits"):
        assert out[name].shape == rgb_out[name].shape, name
    assert out["low_level"].shape == (2, 128, 128, 256)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_segmentation_layout_runs_the_rgb_models_convolutions_without_the_stem(output_stride):
    """Same convolutions, shapes and MACs as the RGB model on the 4x larger image, but for
    the stem and the input width of the first bottleneck's two 1x1 convolutions."""
    channels = _pattern(24)
    rgb = conv_layers(
        DeepLabV3Plus(**TINY_DEEPLAB, output_stride=output_stride), (1, IMAGE, IMAGE, 3)
    )
    grid = GRIDS["segmentation"]
    dct = conv_layers(
        DCTDeepLabV3Plus(**TINY_DEEPLAB, output_stride=output_stride, channels=channels),
        (1, grid, grid, 192),
    )
    stem, *rgb = rgb
    assert stem.kernel_shape == (7, 7, 3, 4) and stem.out_shape == (1, 2 * grid, 2 * grid, 4)
    assert len(dct) == len(rgb)
    widened = 0
    for rgb_layer, dct_layer in zip(rgb, dct, strict=True):
        assert dct_layer.out_shape == rgb_layer.out_shape
        assert dct_layer.kernel_shape[:2] == rgb_layer.kernel_shape[:2]
        assert dct_layer.kernel_shape[3] == rgb_layer.kernel_shape[3]
        if dct_layer.lhs_shape == rgb_layer.lhs_shape:
            assert dct_layer.macs == rgb_layer.macs
            assert dct_layer.params["rhs_dilation"] == rgb_layer.params["rhs_dilation"]
            assert dct_layer.params["window_strides"] == rgb_layer.params["window_strides"]
        else:  # layer1_block0's conv1 and projection: K = 24 inputs instead of the stem's 4
            widened += 1
            assert dct_layer.lhs_shape == (1, grid, grid, 24) and rgb_layer.lhs_shape[-1] == 4
            assert 4 * dct_layer.macs == 24 * rgb_layer.macs
    assert widened == 2


@pytest.mark.parametrize(
    "layout, channels, gate, output_stride, feature_size, aspp_grid, decoder_grid",
    [
        ("classification", None, False, 16, None, 3, 6),
        ("classification", _pattern(24), False, 16, None, 3, 6),
        ("classification", _pattern(48, "triangle"), True, 16, 5, 3, 5),
        ("classification", _pattern(64), True, 8, 3, 6, 3),
        ("classification", _pattern(24, "triangle"), False, 8, None, 6, 6),
        ("segmentation", None, False, 16, None, 3, 12),
        ("segmentation", _pattern(6), False, 16, 11, 3, 11),
        ("segmentation", _pattern(48, "triangle"), True, 8, None, 6, 12),
        ("segmentation", _pattern(64), True, 32, 5, 2, 5),
    ],
)
def test_tiny_shapes(layout, channels, gate, output_stride, feature_size, aspp_grid, decoder_grid):
    model = DCTDeepLabV3Plus(
        **TINY_DEEPLAB,
        layout=layout,
        channels=channels,
        gate=gate,
        output_stride=output_stride,
        feature_size=feature_size,
    )
    grid = GRIDS[layout]
    x = jax.ShapeDtypeStruct((2, grid, grid, 192), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out = jax.eval_shape(functools.partial(model.apply, method=model.intermediates), variables, x)
    k = 192 if channels is None else len(channels)
    assert out["inputs"].shape == (2, grid, grid, k)
    assert variables["params"]["encoder"]["layer1_block0"]["conv1"]["kernel"].shape == (1, 1, k, 4)
    assert out["aspp"].shape == (2, aspp_grid, aspp_grid, 8)
    assert out["low_level"].shape == (2, grid, grid, 16)
    assert out["decoder_logits"].shape == (2, decoder_grid, decoder_grid, 3)
    assert out["logits"].shape == (2, IMAGE, IMAGE, 3)
    assert ("gates" in out) == gate


@pytest.mark.parametrize(
    "kwargs, shape, message",
    [
        (dict(channels=(0, 1, 192)), (1, GRID, GRID, 192), "channels"),
        (dict(channels=(0, 0)), (1, GRID, GRID, 192), "channels"),
        (dict(), (1, GRID, GRID, 24), "192"),
        (dict(feature_size=GRID + 1), (1, GRID, GRID, 192), "feature_size"),
        (dict(backbone="vgg"), (1, GRID, GRID, 192), "backbone"),
        (dict(layout="jpeg"), (1, GRID, GRID, 192), "layout"),
    ],
)
def test_bad_configurations_raise(kwargs, shape, message):
    model = DCTDeepLabV3Plus(**{**CLASSIFICATION, **kwargs})
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    with pytest.raises(ValueError, match=message):
        jax.eval_shape(model.init, jax.random.key(0), x)


def _loss(model, variables, x, labels, key, train):
    out, updates = model.apply(
        variables,
        x,
        train,
        method=model.intermediates,
        rngs={"gumbel": key},
        mutable=["batch_stats"],
    )
    ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels).mean()
    return ce, (out, updates)


def test_training_through_the_gate_and_exact_selection(rng):
    channels = _pattern(48, "triangle")
    model = DCTDeepLabV3Plus(**CLASSIFICATION, channels=channels, gate=True)
    variables = random_variables(model, (2, GRID, GRID, 192))
    gate = variables["params"]["frequency_gate"]
    gate["logit_scale"] = jnp.asarray(rng.normal(size=(48, 2)), jnp.float32)
    gate["logit_bias"] = jnp.asarray(rng.normal(size=(48, 2)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(2, GRID, GRID, 192)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, size=(2, 8 * GRID, 8 * GRID)))
    key = jax.random.key(0)

    def loss_and_grads(params, x, ce_weight, regularizer_weight, train):
        def loss(params, x):
            ce, (out, _) = _loss(model, {**variables, "params": params}, x, labels, key, train)
            regularizer = gate_regularizer(out["gates"])
            return ce_weight * ce + regularizer_weight * regularizer, (ce, regularizer, out)

        return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)

    # One trace for train=True and one for train=False; the weights are traced.
    loss_and_grads = jax.jit(chex.assert_max_traces(loss_and_grads, n=2), static_argnums=4)
    params = variables["params"]
    (total, (ce, regularizer, out)), (grads, x_grad) = loss_and_grads(params, x, 1.0, 0.01, True)
    gates = np.asarray(out["gates"])
    assert set(np.unique(gates)) <= {0.0, 1.0} and 0 < gates.sum() < gates.size
    np.testing.assert_allclose(regularizer, gates.sum() / 2)
    np.testing.assert_allclose(total, ce + 0.01 * regularizer, rtol=1e-6)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    for name in ("excite", "logit_scale", "logit_bias"):
        assert max(np.abs(g).max() for g in jax.tree.leaves(grads["frequency_gate"][name])) > 0
    for stage in ("layer1_block0", "layer4_block0"):
        assert np.abs(grads["encoder"][stage]["conv1"]["kernel"]).max() > 0
    # Static selection is exact: the 144 unselected channels get no gradient at all.
    x_grad = np.abs(np.asarray(x_grad)).sum(axis=(0, 1, 2))  # [192]
    np.testing.assert_array_equal(x_grad[np.setdiff1d(np.arange(192), channels)], 0.0)
    assert np.all(x_grad[list(channels)] > 0)
    # Same key, same gates: the step is reproducible.
    again = loss_and_grads(params, x, 1.0, 0.01, True)[0][1][2]["gates"]
    np.testing.assert_array_equal(again, gates)

    # Inference: argmax gates; the regulariser's gradient with respect to the logit biases
    # is the straight-through closed form mean_b p (1 - p) (+ for "on", - for "off").
    (_, (_, _, out)), (regularizer_grads, _) = loss_and_grads(params, x, 0.0, 1.0, False)
    p = np.asarray(out["gate_probabilities"], np.float64)
    np.testing.assert_array_equal(out["gates"], (p > 0.5).astype(np.float32))
    want = (p * (1 - p)).mean(0)
    got = np.asarray(regularizer_grads["frequency_gate"]["logit_bias"])
    np.testing.assert_allclose(got[:, 1], want, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(got[:, 0], -want, rtol=1e-4, atol=1e-7)


def test_apply_does_not_retrace(rng):
    model = DCTDeepLabV3Plus(**TINY_DEEPLAB, channels=_pattern(24))  # segmentation layout
    grid = GRIDS["segmentation"]
    variables = random_variables(model, (1, grid, grid, 192))

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(variables, x):
        return model.apply(variables, x)

    first = forward(variables, jnp.asarray(rng.normal(size=(1, grid, grid, 192)), jnp.float32))
    second = forward(variables, jnp.asarray(rng.normal(size=(1, grid, grid, 192)), jnp.float32))
    assert first.shape == second.shape == (1, IMAGE, IMAGE, 3)
    assert not np.allclose(first, second)


def test_gate_sows_its_weighted_regulariser_in_training(rng):
    """Training sows ``gate_weight * gate_regularizer(gates)`` and the unweighted value."""
    model = DCTDeepLabV3Plus(**CLASSIFICATION, gate=True, gate_weight=0.25)
    variables = random_variables(model, (2, GRID, GRID, 192))
    x = jnp.asarray(rng.normal(size=(2, GRID, GRID, 192)), jnp.float32)
    # Jitted: one program each instead of every operation of the model compiled eagerly.
    train = jax.jit(
        lambda variables, x: model.apply(
            variables,
            x,
            train=True,
            method=model.intermediates,
            rngs={"gumbel": jax.random.key(0), "dropout": jax.random.key(1)},
            mutable=["batch_stats", "losses", "metrics"],
        )
    )
    out, updates = train(variables, x)
    regularizer = gate_regularizer(out["gates"])
    assert updates["losses"] == {"gate": (0.25 * regularizer,)}
    assert updates["metrics"] == {"gate_regularizer": (regularizer,)}
    # Inference sows nothing, even into mutable collections.
    infer = jax.jit(lambda variables, x: model.apply(variables, x, mutable=["losses", "metrics"]))
    _, updates = infer(variables, x)
    assert not updates.get("losses") and not updates.get("metrics")
