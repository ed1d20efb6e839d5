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
from tests.helpers.models import random_variables

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
    out = jax.jit(module.apply)(zeros, x)  # one program, not each operation
    np.testing.assert_allclose(out, 0.5 * attention * x, rtol=1e-5, atol=1e-6)


def test_freqmix_gates_select_a_part(rng):
    # Gate biases +-30: the output is the low part times its attention (1/sqrt 2).
    x = jnp.asarray(rng.normal(size=(1, 10, 10, 4)), jnp.float32)
    module = fmod.FreqMix()
    variables = _params(module, x, np.zeros)
    variables["params"]["gate_conv"]["bias"] = jnp.array([30.0, -30.0])
    low, _ = frequency_masking.split_frequencies(x, cutoff=0.35)
    out = jax.jit(module.apply)(variables, x)  # one program, not each operation
    np.testing.assert_allclose(out, np.sqrt(0.5) * low, atol=1e-5)


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
    out = jax.jit(module.apply)(variables, x)  # one program, not each operation
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


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
    from tests.helpers.models import TINY_DEEPLAB

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
    # One jitted program per call (not every operation compiled eagerly); three distinct
    # functions, because jit's cache does not see the interceptor.

    def intercepted(variables, images):
        with fmod.insert_de_aliasing_filters(placement="block_input"):
            return plain.apply(variables, images)

    expected = jax.jit(intercepted)(variables, images)
    np.testing.assert_allclose(
        jax.jit(filtered.apply)(variables, images), expected, rtol=1e-5, atol=1e-6
    )
    unfiltered = jax.jit(lambda variables, images: plain.apply(variables, images))
    assert float(jnp.max(jnp.abs(unfiltered(variables, images) - expected))) > 1e-4


def test_freqmix_as_downsample_filter_trains():
    from spectral_jax.models import DeepLabV3Plus
    from tests.helpers.models import TINY_DEEPLAB

    model = DeepLabV3Plus(
        **TINY_DEEPLAB, downsample_filter=functools.partial(fmod.FreqMix, reduction=4)
    )
    images = jnp.asarray(np.random.default_rng(7).normal(size=(2, 33, 33, 3)), jnp.float32)
    variables = random_variables(model, images.shape)  # from shapes: no compiled init
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


class _SharedStridedConv(nn.Module):
    """One strided convolution applied to two different inputs."""

    @nn.compact
    def __call__(self, x):
        down = nn.Conv(2, (3, 3), strides=2, name="down")
        return down(x) + down(jnp.flip(x, axis=1) ** 2)


def test_probe_reports_every_call_of_a_shared_module(rng):
    model = _SharedStridedConv()
    images = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), images)
    scores = fmod.downsampling_aliasing_scores(model, variables, images)
    assert sorted(scores) == ["down", "down#1"]
    cutoff = aliasing.nyquist_cutoff(2)
    second = jnp.flip(images, axis=1) ** 2
    np.testing.assert_allclose(scores["down"], aliasing.aliasing_score(images, cutoff=cutoff))
    np.testing.assert_allclose(scores["down#1"], aliasing.aliasing_score(second, cutoff=cutoff))
    assert not np.allclose(scores["down"], scores["down#1"])


# ---------------------------------------------------------------------------------------
# The authors' FreqMix (Seg-Aliasing, ``_FrequencyMix``) in their PyTorch layout.

AUTHORS_FREQ_THRES = 0.25 * 1.4  # their ``self.freq_thres``


def _authors_freqmix_numpy(state, x, freq_thres=AUTHORS_FREQ_THRES):
    """Their ``_FrequencyMix.forward`` (``freq_channel_att``, sigmoid, no residual) on
    ``x [B, C, H, W]`` in float64 NumPy, keeping their ``fftshift`` over every axis."""
    w = {k: np.asarray(v, np.float64) for k, v in state.items()}
    b, c, h, wd = x.shape
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = w["freq_weight_conv.weight"]  # [2, C, 3, 3], cross-correlation as torch
    freq_weight = w["freq_weight_conv.bias"][None, :, None, None] + sum(
        np.einsum("bchw,gc->bghw", padded[:, :, i : i + h, j : j + wd], conv[:, :, i, j])
        for i in range(3)
        for j in range(3)
    )
    freq_weight = _sigmoid(freq_weight)
    x_fft = np.fft.fftshift(np.fft.fft2(x))  # fft2 over (H, W); fftshift over ALL axes
    low_mask = np.zeros(x_fft.shape)
    rows = slice(round(h / 2 - h * freq_thres), round(h / 2 + h * freq_thres))
    columns = slice(round(wd / 2 - wd * freq_thres), round(wd / 2 + wd * freq_thres))
    low_mask[:, :, rows, columns] = 1.0
    high_mask = 1.0 - low_mask
    low_part = np.fft.ifft2(np.fft.ifftshift(x_fft * low_mask)).real
    high_part = x - low_part

    def attention(part, v):  # AdaptiveAvgPool2d(1), 1x1 conv, ReLU, 1x1 conv, sigmoid
        pooled = v.mean(axis=(2, 3))  # [B, C]
        squeeze = w[f"channel_att_{part}.1.weight"][:, :, 0, 0]
        excite = w[f"channel_att_{part}.3.weight"][:, :, 0, 0]
        hidden = np.maximum(pooled @ squeeze.T + w[f"channel_att_{part}.1.bias"], 0)
        return _sigmoid(hidden @ excite.T + w[f"channel_att_{part}.3.bias"])[:, :, None, None]

    low_x_fft, high_x_fft = x_fft * low_mask, x_fft * high_mask
    low_att = np.sqrt(
        attention("low", low_x_fft.real) ** 2 + attention("low", low_x_fft.imag) ** 2 + 1e-8
    )
    high_att = np.sqrt(
        attention("high", high_x_fft.real) ** 2 + attention("high", high_x_fft.imag) ** 2 + 1e-8
    )
    return low_part * freq_weight[:, 0:1] * low_att + high_part * freq_weight[:, 1:2] * high_att


def _authors_freqmix_state(rng, channels, compress_ratio, prefix=""):
    hidden = channels // compress_ratio
    state = {
        "freq_weight_conv.weight": rng.normal(scale=0.3, size=(2, channels, 3, 3)),
        "freq_weight_conv.bias": rng.normal(size=2),
    }
    for part in ("low", "high"):
        state[f"channel_att_{part}.1.weight"] = rng.normal(size=(hidden, channels, 1, 1))
        state[f"channel_att_{part}.1.bias"] = rng.normal(size=hidden)
        state[f"channel_att_{part}.3.weight"] = rng.normal(size=(channels, hidden, 1, 1))
        state[f"channel_att_{part}.3.bias"] = rng.normal(size=channels)
    # float32 as a checkpoint holds them, so that the float64 comparison is exact.
    return {prefix + k: v.astype(np.float32) for k, v in state.items()}


# Odd C pins the direction of the roll (for even C a roll by C / 2 either way is the
# same); the even case runs the same code and is slow.
@pytest.mark.parametrize("channels", [5, pytest.param(6, marks=pytest.mark.slow)])
def test_freqmix_from_the_authors_weights_computes_their_function(x64, rng, channels):
    """At 9 x 7 and the cutoff 0.35 their window equals our mask (|nu_h| <= 3, |nu_w| <= 2),
    so the converted module must reproduce their forward pass exactly; odd C pins the
    direction of the roll."""
    prefix = "backbone.layer2.0.att."
    state = _authors_freqmix_state(rng, channels, 2, prefix)
    state["backbone.layer2.0.conv1.weight"] = np.zeros((1, 1, 1, 1))  # outside the prefix
    params = fmod.freqmix_params_from_torch(state, prefix=prefix)
    x = rng.normal(size=(1, 9, 7, channels))  # one image: their batch roll is the identity
    theirs = _authors_freqmix_numpy(
        {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)},
        x.transpose(0, 3, 1, 2),
    ).transpose(0, 2, 3, 1)
    model = fmod.FreqMix(reduction=2, dtype=jnp.float64)
    apply = jax.jit(model.apply)  # two programs (one per batch size), not each operation
    f64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    ours = apply({"params": f64}, jnp.asarray(x))
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10)
    # Without the roll the attentions read the wrong channels.
    for part in ("low", "high"):
        kernel = f64[f"{part}_attention"]["squeeze"]["kernel"]
        f64[f"{part}_attention"]["squeeze"]["kernel"] = jnp.roll(kernel, channels // 2, axis=0)
    unrolled = apply({"params": f64}, jnp.asarray(x))
    assert np.abs(np.asarray(unrolled) - theirs).max() > 1e-3
    # Their batch roll: with two images, each is attended with the other's spectrum.
    pair = rng.normal(size=(2, 9, 7, channels))
    theirs_pair = _authors_freqmix_numpy(
        {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)},
        pair.transpose(0, 3, 1, 2),
    ).transpose(0, 2, 3, 1)
    ours_pair = apply({"params": jax.tree.map(jnp.asarray, params)}, jnp.asarray(pair))
    assert np.abs(np.asarray(ours_pair) - theirs_pair).max() > 1e-3


def test_freqmix_conversion_rejects_other_state_dicts(rng):
    state = _authors_freqmix_state(rng, 6, 2)
    with pytest.raises(ValueError, match="missing keys.*channel_att_high.3.bias"):
        fmod.freqmix_params_from_torch({k: v for k, v in state.items() if "high.3.bias" not in k})
    with pytest.raises(ValueError, match="unexpected keys.*extra"):
        fmod.freqmix_params_from_torch({**state, "extra": np.zeros(1)})
    with pytest.raises(ValueError, match="channel_att_low.3.bias"):
        fmod.freqmix_params_from_torch({**state, "channel_att_low.3.bias": np.zeros(5)})
