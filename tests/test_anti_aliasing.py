"""Tests for spectral_jax.models.anti_aliasing.

References: closed forms for FreqMix with fixed parameters (zero kernels give gates and
attentions of sigmoid(0)); a NumPy float64 re-derivation of FreqMix from its formula with
random parameters; the de-aliasing filter as the projection of
:func:`spectral_jax.related.aliasing.de_alias`; the ResNet's block inputs seen through an
interceptor. Tolerances: float64 1e-10; float32 1e-5.
"""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.models import anti_aliasing as fmod
from spectral_jax.models import create_resnet, stack_blocks
from spectral_jax.models.resnet import Bottleneck
from spectral_jax.related import aliasing, frequency_masking
from tests.model_helpers import random_variables

SHAPES = [(2, 8, 8, 4), (1, 9, 7, 3), (3, 12, 10, 20)]


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _numpy_freqmix(params, x, cutoff, descriptor):
    """FreqMix from its docstring's formula, in float64 NumPy."""
    x = np.asarray(x, np.float64)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
    b, h, w, c = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    kernel = p["gate_conv"]["kernel"]  # [3, 3, C, 2]
    logits = p["gate_conv"]["bias"] + sum(
        np.einsum("bhwc,cg->bhwg", padded[:, i : i + h, j : j + w], kernel[i, j])
        for i in range(3)
        for j in range(3)
    )
    gates = _sigmoid(logits)
    fh = np.abs(np.fft.fftfreq(h))[:, None] < cutoff - 1e-12
    fw = np.abs(np.fft.fftfreq(w))[None, :] < cutoff - 1e-12
    mask = (fh & fw)[None, :, :, None]
    spectrum = np.fft.fft2(x, axes=(1, 2))
    low = np.fft.ifft2(spectrum * mask, axes=(1, 2)).real
    high = x - low

    def se(name, d):
        q = p[name]
        hidden = np.maximum(d @ q["squeeze"]["kernel"] + q["squeeze"]["bias"], 0)
        return _sigmoid(hidden @ q["excite"]["kernel"] + q["excite"]["bias"])

    out = np.zeros_like(x)
    for k, (name, part_mask, part) in enumerate(
        (("low_attention", mask, low), ("high_attention", ~mask, high))
    ):
        part_spectrum = spectrum * part_mask
        if descriptor == "spectrum_mean":
            d = part_spectrum.mean(axis=(1, 2))
            a = np.sqrt(se(name, d.real) ** 2 + se(name, d.imag) ** 2 + 1e-8)
        else:
            a = se(name, np.abs(part_spectrum).mean(axis=(1, 2)))
        out += gates[..., k : k + 1] * a[:, None, None, :] * part
    return out


def _params(module, x, fill):
    """Variables of ``module`` from shapes alone (no compiled init), each leaf ``fill(shape)``."""
    shapes = jax.eval_shape(module.init, jax.random.key(0), x)
    return jax.tree.map(lambda leaf: jnp.asarray(fill(leaf.shape), leaf.dtype), shapes)


def test_de_aliasing_filter_module_is_the_function(rng):
    x = jnp.asarray(rng.normal(size=(2, 10, 9, 3)), jnp.float32)
    module = fmod.DeAliasingFilter(stride=2)
    variables = module.init(jax.random.key(0), x)
    assert jax.tree.leaves(variables) == []
    np.testing.assert_array_equal(module.apply(variables, x), aliasing.de_alias(x, stride=2))
    np.testing.assert_array_equal(
        fmod.DeAliasingFilter(cutoff=0.2).apply({}, x), aliasing.de_alias(x, cutoff=0.2)
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    ("descriptor", "attention"),
    [("spectrum_mean", np.sqrt(0.5 + 1e-8)), ("spectrum_magnitude", 0.5)],
)
def test_freqmix_with_zero_parameters_scales_the_input(shape, descriptor, attention, rng):
    # Zero kernels and biases: gates sigmoid(0) = 1/2 on both parts, attentions
    # sqrt(1/4 + 1/4 + 1e-8) ("spectrum_mean") or 1/2; low + high = x.
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    module = fmod.FreqMix(descriptor=descriptor)
    zeros = _params(module, x, np.zeros)
    np.testing.assert_allclose(module.apply(zeros, x), 0.5 * attention * x, rtol=1e-5, atol=1e-6)


def test_freqmix_gates_select_a_part(rng):
    # Gate biases +-30: the output is the low part times its attention (1/sqrt 2).
    x = jnp.asarray(rng.normal(size=(1, 10, 10, 4)), jnp.float32)
    module = fmod.FreqMix()
    variables = _params(module, x, np.zeros)
    variables["params"]["gate_conv"]["bias"] = jnp.array([30.0, -30.0])
    low, _ = frequency_masking.split_frequencies(x, cutoff=0.35)
    np.testing.assert_allclose(module.apply(variables, x), np.sqrt(0.5) * low, atol=1e-5)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    ("shape", "descriptor"),
    [(SHAPES[0], "spectrum_mean"), (SHAPES[1], "spectrum_mean"), (SHAPES[1], "spectrum_magnitude")],
)
def test_freqmix_matches_its_formula_in_numpy(rng, shape, descriptor):
    x = jnp.asarray(rng.normal(size=shape))
    module = fmod.FreqMix(stride=2, descriptor=descriptor, reduction=2, dtype=jnp.float64)
    variables = _params(module, x, lambda shape: rng.normal(size=shape) * 0.5)
    expected = _numpy_freqmix(variables, x, 0.35, descriptor)
    np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-10, atol=1e-12)


def test_freqmix_grad_and_jit(rng):
    x = jnp.asarray(rng.normal(size=(2, 9, 8, 16)), jnp.float32)
    module = fmod.FreqMix()
    variables = _params(module, x, lambda shape: rng.normal(size=shape) * 0.3)
    assert variables["params"]["low_attention"]["squeeze"]["kernel"].shape == (16, 1)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss(variables, x):
        return jnp.sum(module.apply(variables, x) ** 2)

    grads = jax.grad(loss, argnums=(0, 1))(variables, x)
    for leaf in jax.tree.leaves(grads):
        assert np.all(np.isfinite(leaf))
    assert float(jnp.abs(grads[0]["params"]["gate_conv"]["kernel"]).max()) > 0
    assert float(jnp.abs(grads[0]["params"]["high_attention"]["excite"]["bias"]).max()) > 0
    # Same shapes again: no retrace; value equals the eager one.
    np.testing.assert_allclose(
        loss(variables, x), jnp.sum(module.apply(variables, x) ** 2), rtol=1e-5
    )
    chex.clear_trace_counter()


def test_freqmix_rejects_bad_settings():
    x = jnp.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match="descriptor"):
        fmod.FreqMix(descriptor="phase").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="cutoff"):
        fmod.FreqMix(cutoff=0.7).init(jax.random.key(0), x)


def _block_inputs(model, variables, images, **filters):
    """Inputs of every bottleneck as the model sees them, optionally under the DAF."""
    seen = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, Bottleneck) and context.method_name == "__call__":
            seen["/".join(context.module.path)] = args[0]
        return next_fun(*args, **kwargs)

    def run(variables, images):
        seen.clear()
        if filters:
            # The recorder is inside (after) the filter: it sees the filtered input.
            with fmod.insert_de_aliasing_filters(**filters), nn.intercept_methods(record):
                out = model.apply(variables, images)
        else:
            with nn.intercept_methods(record):
                out = model.apply(variables, images)
        return out, dict(seen)

    return jax.jit(run)(variables, images)


@pytest.fixture(scope="module")
def tiny_resnet():
    model = create_resnet("resnet_tiny", output_stride=32)
    shape = (1, 30, 27, 3)
    variables = random_variables(model, shape, seed=3)
    images = jnp.asarray(np.random.default_rng(4).normal(size=shape), jnp.float32)
    return model, variables, images


def test_insert_de_aliasing_filters_at_block_inputs(tiny_resnet):
    model, variables, images = tiny_resnet
    (plain_low, plain_high), plain = _block_inputs(model, variables, images)
    (low, high), filtered = _block_inputs(
        model, variables, images, placement="block_input", cutoff=0.3
    )
    # Stage 1 runs unfiltered; the filter sits on the input of every strided block.
    np.testing.assert_allclose(low, plain_low, rtol=1e-6)
    np.testing.assert_allclose(filtered["layer1_block0"], plain["layer1_block0"], rtol=1e-6)
    np.testing.assert_allclose(
        filtered["layer2_block0"], aliasing.de_alias(plain["layer2_block0"], cutoff=0.3), atol=1e-5
    )
    assert float(jnp.max(jnp.abs(filtered["layer2_block0"] - plain["layer2_block0"]))) > 1e-3
    for stage in (3, 4):
        np.testing.assert_allclose(
            aliasing.aliasing_score(filtered[f"layer{stage}_block0"], cutoff=0.3), 0, atol=1e-6
        )
    assert float(jnp.max(jnp.abs(high - plain_high))) > 1e-4


def test_insert_de_aliasing_filters_at_strided_convs(tiny_resnet):
    model, variables, images = tiny_resnet
    probe = functools.partial(fmod.downsampling_aliasing_scores, model)

    def scores(variables, images):
        with fmod.insert_de_aliasing_filters(placement="strided_conv_input"):
            return probe(variables, images)

    filtered = jax.jit(scores)(variables, images)
    # The probe is inside the filter: every strided convolution sees filtered input.
    for name, value in filtered.items():
        if name.endswith("conv1") or name.endswith("conv2") or name.endswith("downsample_conv"):
            np.testing.assert_allclose(value, 0.0, atol=1e-6, err_msg=name)
    with pytest.raises(ValueError, match="placement"):
        with fmod.insert_de_aliasing_filters(placement="everywhere"):
            pass


def test_de_aliasing_filters_and_scores_with_stacked_blocks(deep_tiny_backbone):
    """The strided blocks are the first of their stages, never stacked: the interceptors
    filter and score the same inputs in the stacked backbone as in the unrolled one."""
    stacked = create_resnet(deep_tiny_backbone, output_stride=32)
    unrolled = stacked.clone(scan_blocks=False)
    shape = (1, 30, 27, 3)
    variables = random_variables(unrolled, shape, seed=7)
    images = jnp.asarray(np.random.default_rng(8).normal(size=shape), jnp.float32)

    def run(model, variables):
        with fmod.insert_de_aliasing_filters(placement="block_input", cutoff=0.3):
            scores = fmod.downsampling_aliasing_scores(model, variables, images)
            return model.apply(variables, images), scores

    (low, high), scores = jax.jit(functools.partial(run, stacked))(stack_blocks(variables))
    (expected_low, expected_high), expected_scores = jax.jit(functools.partial(run, unrolled))(
        variables
    )
    np.testing.assert_allclose(low, expected_low, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(high, expected_high, rtol=1e-5, atol=1e-5)
    assert sorted(scores) == sorted(expected_scores)
    assert "layer3_block0" in scores
    for name, value in expected_scores.items():
        np.testing.assert_allclose(scores[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("model_name", ["deeplab", "dan"])
def test_downsample_filter_attribute_equals_the_interceptor(model_name):
    """The model attribute places the DAF where the interceptor does, with equal outputs."""
    from spectral_jax.models import DAN, DeepLabV3Plus
    from tests.model_helpers import TINY_DEEPLAB

    cls = DeepLabV3Plus if model_name == "deeplab" else DAN
    settings = dict(TINY_DEEPLAB)
    if model_name == "dan":
        settings = dict(num_classes=3, backbone="resnet_tiny", aspp_channels=8, dropout_rate=0.0)
    shape = (1, 33, 29, 3)
    plain = cls(**settings)
    variables = random_variables(plain, shape, seed=5)
    images = jnp.asarray(np.random.default_rng(6).normal(size=shape), jnp.float32)
    filtered = cls(**settings, downsample_filter=functools.partial(fmod.DeAliasingFilter))
    # The DAF has no parameters: the same variables fit both models.
    assert jax.tree.structure(
        jax.eval_shape(filtered.init, jax.random.key(0), images)
    ) == jax.tree.structure(variables)
    with fmod.insert_de_aliasing_filters(placement="block_input"):
        expected = plain.apply(variables, images)
    np.testing.assert_allclose(filtered.apply(variables, images), expected, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(plain.apply(variables, images) - expected))) > 1e-4


def test_freqmix_as_downsample_filter_trains():
    from spectral_jax.models import DeepLabV3Plus
    from tests.model_helpers import TINY_DEEPLAB

    model = DeepLabV3Plus(
        **TINY_DEEPLAB, downsample_filter=functools.partial(fmod.FreqMix, reduction=4)
    )
    images = jnp.asarray(np.random.default_rng(7).normal(size=(2, 33, 33, 3)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0), images)
    strided = [k for k, v in variables["params"]["encoder"].items() if "downsample_filter" in v]
    assert strided == ["layer2_block0", "layer3_block0"]  # output stride 16

    def loss(params):
        logits, _ = model.apply(
            {**variables, "params": params}, images, train=True, mutable=["batch_stats"]
        )
        return jnp.mean(logits**2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    gate = grads["encoder"]["layer2_block0"]["downsample_filter"]["gate_conv"]["kernel"]
    assert np.all(np.isfinite(gate)) and float(jnp.max(jnp.abs(gate))) > 0
