"""Tests for spectral_jax.related.aliasing.

References: the aliasing score from NumPy's complex ``fft2`` on the ``fftshift``-ed
spectrum in float64; closed forms for pure and mixed cosines; identities (the DAF is a
self-adjoint projection: idempotent, linear, its own gradient). The per-layer probe is
checked against scores of tensors taken from the model by other means.
Tolerances: float64 1e-10; float32 1e-5 on scores in [0, 1].
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.models import DeepLabV3Plus, anti_aliasing
from spectral_jax.models.resnet import Bottleneck
from spectral_jax.related import aliasing
from tests.helpers.models import TINY_DEEPLAB, random_variables

SHAPES = [(8, 8), (9, 7), (12, 10), (5, 6)]


def _reference_score(x: np.ndarray, cutoff: float) -> np.ndarray:
    """``[B]``: power outside the centred square over total power, channels pooled."""
    spectrum = np.fft.fftshift(np.fft.fft2(np.asarray(x, np.float64), axes=(1, 2)), axes=(1, 2))
    h, w = x.shape[1:3]
    fh = np.fft.fftshift(np.fft.fftfreq(h))
    fw = np.fft.fftshift(np.fft.fftfreq(w))
    low = (np.abs(fh)[:, None] < cutoff - 1e-12) & (np.abs(fw)[None, :] < cutoff - 1e-12)
    power = np.abs(spectrum) ** 2
    total = power.sum(axis=(1, 2, 3))
    high = (power * ~low[None, :, :, None]).sum(axis=(1, 2, 3))
    return high / total


def _cosine(h, w, nu_h, nu_w, phase=0.0):
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.cos(2 * np.pi * (nu_h * i / h + nu_w * j / w) + phase)


def test_nyquist_cutoff_values():
    assert aliasing.nyquist_cutoff(2) == pytest.approx(0.35)
    assert aliasing.nyquist_cutoff(4) == pytest.approx(0.175)
    assert aliasing.nyquist_cutoff(2, equivalent_sampling_factor=1.0) == pytest.approx(0.25)
    assert aliasing.nyquist_cutoff(1) == 0.5
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match="stride"):
            aliasing.nyquist_cutoff(bad)
    with pytest.raises(ValueError, match="equivalent_sampling_factor"):
        aliasing.nyquist_cutoff(2, equivalent_sampling_factor=0.0)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stride", [2, 4])
def test_aliasing_score_matches_numpy_float64(rng, shape, stride):
    x = rng.normal(size=(3, *shape, 4)) * rng.uniform(0.1, 3, size=(1, 1, 1, 4))
    score = aliasing.aliasing_score(jnp.asarray(x), stride=stride)
    assert score.shape == (3,) and score.dtype == jnp.float64
    np.testing.assert_allclose(
        score, _reference_score(x, aliasing.nyquist_cutoff(stride)), rtol=1e-10
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_aliasing_score_float32(rng, shape):
    x = rng.normal(size=(2, *shape, 3)).astype(np.float32)
    score = aliasing.aliasing_score(jnp.asarray(x), cutoff=0.25)
    assert score.dtype == jnp.float32
    np.testing.assert_allclose(score, _reference_score(x, 0.25), atol=1e-5)


def test_constant_and_zero_maps_score_zero():
    x = jnp.concatenate([jnp.full((1, 7, 8, 2), 3.5), jnp.zeros((1, 7, 8, 2))])
    np.testing.assert_allclose(aliasing.aliasing_score(x), [0.0, 0.0], atol=1e-12)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    ("nu_h", "nu_w", "expected"),
    [
        (0, 6, 0.0),  # 6/20 = 0.30 < 0.35: below the stride-2 cutoff
        (6, 6, 0.0),
        (0, 7, 1.0),  # 7/20 = 0.35: at the cutoff, aliases
        (2, 9, 1.0),  # high along one axis is enough (square region)
        (10, 0, 1.0),  # Nyquist of the map
    ],
)
def test_pure_cosines_score_zero_or_one(nu_h, nu_w, expected):
    wave = _cosine(20, 20, nu_h, nu_w, phase=0.4)[None, :, :, None]
    score = aliasing.aliasing_score(jnp.asarray(wave), stride=2)
    np.testing.assert_allclose(score, [expected], atol=1e-12)


@pytest.mark.usefixtures("x64")
def test_mixed_cosines_score_is_the_high_energy_share():
    a, b = 1.5, 0.5
    x = a * _cosine(16, 18, 1, 2) + b * _cosine(16, 18, 3, 8)  # 8/18 > 0.35 is high
    x = np.stack([x, 2 * x], axis=-1)[None]  # two channels, energies pooled
    np.testing.assert_allclose(aliasing.aliasing_score(jnp.asarray(x)), [b**2 / (a**2 + b**2)])


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("shape", SHAPES)
def test_de_alias_removes_all_energy_above_the_cutoff(rng, shape):
    x = rng.normal(size=(2, *shape, 3))
    y = aliasing.de_alias(jnp.asarray(x), stride=2)
    spectrum = np.fft.fft2(np.asarray(y), axes=(1, 2))
    h, w = shape
    high = ~(
        (np.abs(np.fft.fftfreq(h))[:, None] < 0.35) & (np.abs(np.fft.fftfreq(w))[None, :] < 0.35)
    )
    assert np.abs(spectrum[:, high]).max() < 1e-12 * np.abs(spectrum).max()
    np.testing.assert_allclose(aliasing.aliasing_score(y), 0.0, atol=1e-28)
    # Idempotent, and the low-frequency content is untouched.
    np.testing.assert_allclose(aliasing.de_alias(y), y, atol=1e-12)
    np.testing.assert_allclose(spectrum[:, ~high], np.fft.fft2(x, axes=(1, 2))[:, ~high], atol=1e-9)


def _authors_de_alias(x, freq_thres=0.25 * 1.4):
    """Their ``FLC_Pooling(downsample=False)`` on ``x [B, C, H, W]`` in float64 NumPy:
    ``fftshift`` over every axis, the window of rows and columns
    ``round(n / 2 - n c) .. round(n / 2 + n c) - 1`` (Python's ``round``), real part."""
    _, _, h, w = x.shape
    spectrum = np.fft.fftshift(np.fft.fft2(x))
    mask = np.zeros(spectrum.shape)
    mask[
        :,
        :,
        round(h / 2 - h * freq_thres) : round(h / 2 + h * freq_thres),
        round(w / 2 - w * freq_thres) : round(w / 2 + w * freq_thres),
    ] = 1.0
    return np.fft.ifft2(np.fft.ifftshift(spectrum * mask)).real


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("shape", [(64, 64), (9, 7), (20, 24)])
def test_de_alias_against_the_authors_filter(rng, shape):
    """Both filters are Fourier multipliers: ours the 0/1 mask, theirs the symmetrised
    window ``(M(nu) + M(-nu)) / 2``. Where they differ is the module docstring's claim of
    :mod:`spectral_jax.related.frequency_masking`."""
    h, w = shape
    x = rng.normal(size=(2, 3, h, w))  # [B, C, H, W]: their shift also rolls B and C
    theirs = np.fft.fft2(_authors_de_alias(x)) / np.fft.fft2(x)  # [B, C, H, W] multiplier
    assert np.abs(theirs.imag).max() < 1e-9
    theirs = theirs.real
    np.testing.assert_allclose(theirs, np.broadcast_to(theirs[0, 0], theirs.shape), atol=1e-9)
    theirs = theirs[0, 0]
    ours_out = np.asarray(aliasing.de_alias(jnp.asarray(x.transpose(0, 2, 3, 1))))
    ours = np.fft.fft2(ours_out.transpose(0, 3, 1, 2)) / np.fft.fft2(x)
    ours = ours.real[0, 0]
    nu_h = np.fft.fftfreq(h, 1 / h).astype(int)[:, None]  # signed frequencies, DFT order
    nu_w = np.fft.fftfreq(w, 1 / w).astype(int)[None, :]
    if shape == (9, 7):  # their window -3..3 x -2..2 is our mask: identical filters
        np.testing.assert_allclose(theirs, ours, atol=1e-9)
        return
    # Even sizes: their window is -k..k-1 per axis, k = round(n c); ours |nu| < n c.
    k_h, k_w = round(h * 0.35), round(w * 0.35)
    ring = ((np.abs(nu_h) == k_h) & (np.abs(nu_w) <= k_w)) | (
        (np.abs(nu_w) == k_w) & (np.abs(nu_h) <= k_h)
    )
    anti_diagonal_corners = (nu_h == k_h) & (nu_w == -k_w) | (nu_h == -k_h) & (nu_w == k_w)
    inside = (np.abs(nu_h) < k_h) & (np.abs(nu_w) < k_w)
    want = np.where(inside, 1.0, 0.0) + np.where(ring & ~anti_diagonal_corners, 0.5, 0.0)
    np.testing.assert_allclose(theirs, want, atol=1e-9)
    differ = np.abs(theirs - ours) > 1e-9
    if shape == (64, 64):  # k = 22 < 22.4: ours keeps the whole ring, theirs halves it ...
        np.testing.assert_allclose(ours[ring], 1.0, atol=1e-9)
        np.testing.assert_array_equal(differ, ring)
        assert ring.sum() == 45**2 - 43**2 == 176
        # ... and drops the two anti-diagonal corners entirely.
        zero = ring & (np.abs(theirs) < 1e-9)
        rows, columns = np.nonzero(zero)
        assert sorted(zip(nu_h[rows, 0], nu_w[0, columns], strict=True)) == [(-22, 22), (22, -22)]
    else:  # 20 x 24: k_h = 7 = 0.35 * 20 (ours drops +-7), k_w = 8 < 8.4 (ours keeps +-8)
        np.testing.assert_allclose(ours[ring & (np.abs(nu_h) == k_h)], 0.0, atol=1e-9)
        np.testing.assert_allclose(ours[ring & (np.abs(nu_h) < k_h)], 1.0, atol=1e-9)
        np.testing.assert_array_equal(differ, ring & ~anti_diagonal_corners)


@pytest.mark.usefixtures("x64")
def test_de_alias_keeps_band_limited_maps_and_is_linear(rng):
    band_limited = 0.7 + _cosine(14, 15, 2, 4, 0.2) - 2 * _cosine(14, 15, 4, 1, 1.1)
    x = jnp.asarray(band_limited[None, :, :, None])
    np.testing.assert_allclose(aliasing.de_alias(x, stride=2), x, atol=1e-12)
    u = jnp.asarray(rng.normal(size=(2, 14, 15, 3)))
    v = jnp.asarray(rng.normal(size=(2, 14, 15, 3)))
    np.testing.assert_allclose(
        aliasing.de_alias(2.0 * u - 3.0 * v),
        2.0 * aliasing.de_alias(u) - 3.0 * aliasing.de_alias(v),
        atol=1e-12,
    )


@pytest.mark.usefixtures("x64")
def test_de_alias_is_self_adjoint_under_grad_and_jit(rng):
    x = jnp.asarray(rng.normal(size=(1, 9, 10, 2)))
    g = jnp.asarray(rng.normal(size=(1, 9, 10, 2)))
    daf = jax.jit(functools.partial(aliasing.de_alias, stride=4))
    grad = jax.grad(lambda x: jnp.sum(daf(x) * g))(x)
    np.testing.assert_allclose(grad, daf(g), atol=1e-12)


def _record_inputs(model, variables, images):
    """Inputs of the probe's layers and of every bottleneck, by two interceptors."""
    captured, blocks, strides = {}, {}, {}

    def record(name, x, stride):
        captured[name] = x
        strides[name] = stride

    def block_inputs(next_fun, args, kwargs, context):
        if isinstance(context.module, Bottleneck) and context.method_name == "__call__":
            blocks["/".join(context.module.path)] = args[0]
        return next_fun(*args, **kwargs)

    with (
        nn.intercept_methods(anti_aliasing.downsampling_inputs_interceptor(record)),
        nn.intercept_methods(block_inputs),
    ):
        model.apply(variables, images)
    return captured, blocks, strides


def _scores(model, variables, images):
    # Jitted: eager op-by-op dispatch of the model takes ~10x longer on the CPU.
    return jax.jit(functools.partial(anti_aliasing.downsampling_aliasing_scores, model))(
        variables, images
    )


def test_probe_reports_every_downsampling_input(tiny_resnet):
    model, variables, images = tiny_resnet
    scores = _scores(model, variables, images)
    expected = ["conv1", "max_pool"]
    for stage in (2, 3, 4):
        block = f"layer{stage}_block0"
        expected += [block, f"{block}/conv2", f"{block}/downsample_conv"]
    assert sorted(scores) == sorted(expected)
    strides = {}

    def record(variables, images):
        captured, blocks, layer_strides = _record_inputs(model, variables, images)
        strides.update(layer_strides)
        return captured, blocks

    captured, blocks = jax.jit(record)(variables, images)
    # conv1 sees the images; a strided block and its shortcut see the previous output.
    np.testing.assert_allclose(scores["conv1"], aliasing.aliasing_score(images), rtol=1e-6)
    np.testing.assert_allclose(captured["conv1"], images)
    for stage in (2, 3, 4):
        block = f"layer{stage}_block0"
        np.testing.assert_allclose(captured[block], blocks[block])
        np.testing.assert_allclose(captured[f"{block}/downsample_conv"], blocks[block])
        np.testing.assert_allclose(
            scores[block], aliasing.aliasing_score(blocks[block], stride=2), rtol=1e-5
        )
        assert strides[block] == 2 and strides[f"{block}/conv2"] == 2
    # The max pool's input, rebuilt from the stem BatchNorm, pools to layer1's input.
    pooled = nn.max_pool(captured["max_pool"], (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    np.testing.assert_allclose(pooled, blocks["layer1_block0"], rtol=1e-6)
    for value in scores.values():
        assert value.shape == (2,)
        assert np.all((np.asarray(value) >= 0) & (np.asarray(value) <= 1))


def test_probe_under_the_de_aliasing_filter_and_jit(tiny_resnet):
    from spectral_jax.models.anti_aliasing import insert_de_aliasing_filters

    model, variables, images = tiny_resnet

    def probe(variables, images):
        with insert_de_aliasing_filters():
            return anti_aliasing.downsampling_aliasing_scores(model, variables, images)

    filtered = jax.jit(probe)(variables, images)
    plain = _scores(model, variables, images)
    for stage in (2, 3, 4):
        block = f"layer{stage}_block0"
        assert float(jnp.max(plain[block])) > 1e-3
        np.testing.assert_allclose(filtered[block], 0.0, atol=1e-6)
        np.testing.assert_allclose(filtered[f"{block}/downsample_conv"], 0.0, atol=1e-6)
    # Layers before the first filter are unchanged.
    np.testing.assert_allclose(filtered["conv1"], plain["conv1"], rtol=1e-5)
    np.testing.assert_allclose(filtered["max_pool"], plain["max_pool"], rtol=1e-5)


def test_probe_names_deeplab_layers_by_path():
    model = DeepLabV3Plus(**TINY_DEEPLAB, feature_size=5)
    variables = random_variables(model, (1, 33, 33, 3))
    images = jnp.asarray(np.random.default_rng(2).normal(size=(1, 33, 33, 3)), jnp.float32)
    scores = _scores(model, variables, images)
    # Output stride 16: stages 2 and 3 are strided, stage 4 is dilated.
    assert sorted(scores) == [
        "encoder/conv1",
        "encoder/layer2_block0",
        "encoder/layer2_block0/conv2",
        "encoder/layer2_block0/downsample_conv",
        "encoder/layer3_block0",
        "encoder/layer3_block0/conv2",
        "encoder/layer3_block0/downsample_conv",
        "encoder/max_pool",
    ]
    encode = jax.jit(functools.partial(model.apply, method=DeepLabV3Plus.encode))
    _, low_level = encode(variables, images)
    np.testing.assert_allclose(
        scores["encoder/layer2_block0"], aliasing.aliasing_score(low_level), rtol=1e-5
    )
