"""Tests of spectral_jax.layers: a Flax model's layer by name, the rest as the head.

References: the hand-carved DeepLab v3+ head of ``experiments/spectral_gradient.py``
(``model.decode`` with the low-level features held fixed) for the CE spectral gradient at
the ASPP output, in float32 and under x64; Flax's own ``capture_intermediates`` for the
layer outputs; the compilation counter for new variables.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_jax as sj
from spectral_jax.models.deeplab import DeepLabV3Plus
from tests.helpers import compile_counting
from tests.helpers.models import TINY_DEEPLAB, random_variables

IMAGE = 33  # ASPP map 3 x 3 at output stride 16
ROWS = np.array([0, 70, 560, 1088])  # flat indices of the 33 x 33 CE components


def _deeplab():
    model = DeepLabV3Plus(**TINY_DEEPLAB)
    return model, random_variables(model, (1, IMAGE, IMAGE, 3))


def _batch(rng):
    images = rng.normal(size=(2, IMAGE, IMAGE, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, IMAGE, IMAGE))
    labels[0, :4, :4] = 255  # some ignored pixels
    return images, labels


def _hand_carved_rows(model, variables, images, labels, nu_i):
    """The head as the experiments carve it: ``decode`` with the low-level map fixed."""
    parts = model.apply(variables, jnp.asarray(images), method=DeepLabV3Plus.intermediates)

    def head_fn(low_level, features):  # [h, w, Ca] -> [H, W, C]; one compilation
        return model.apply(
            variables, features[None], low_level, (IMAGE, IMAGE), method=DeepLabV3Plus.decode
        )["logits"][0]

    rows = [
        sj.ce_spectral_gradient(
            head_fn, parts["aspp"][b], labels[b], nu_i=nu_i, params=parts["low_level"][b : b + 1]
        )
        for b in range(len(images))
    ]
    return np.stack(rows), parts


def _relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def deeplab():
    return _deeplab()


@pytest.fixture(scope="module")
def aspp_reference(deeplab):
    """The float64 DeepLab (the float32 variables, exactly), a batch, and its hand-carved
    float64 rows ``[2, len(ROWS), 9]`` and ASPP features, as NumPy arrays."""
    model, variables = deeplab
    images, labels = _batch(np.random.default_rng(7))
    with jax.enable_x64(True):
        model64 = DeepLabV3Plus(**TINY_DEEPLAB, dtype=jnp.float64)
        variables64 = jax.tree.map(lambda v: np.asarray(v, np.float64), variables)
        rows, parts = _hand_carved_rows(
            model64, variables64, images.astype(np.float64), labels, ROWS
        )
        features = np.asarray(parts["aspp"])
    return model64, variables64, images, labels, np.asarray(rows), features


def test_aspp_rows_equal_the_hand_carved_head_float32(deeplab, aspp_reference):
    # Against the float64 head of the same variables and images; also: new variables,
    # other images and a re-created partial compile nothing.
    model, variables = deeplab
    _, _, images, labels, expected, expected_features = aspp_reference
    call = functools.partial(sj.layer_spectral_gradient, layer="aspp", nu_i=ROWS)
    jax.clear_caches()  # no earlier test's compilation is reused
    with compile_counting.count_compilations() as first:
        doubled = jax.tree.map(lambda v: np.asarray(v) * np.float32(1.5), variables)
        doubled_rows = call(functools.partial(model.apply, train=False), doubled, images, labels)
        jax.block_until_ready(doubled_rows)
    assert first, "the first call compiles"
    apply_fn = functools.partial(model.apply, train=False)
    with compile_counting.count_compilations() as again:
        rows = jax.block_until_ready(call(apply_fn, variables, images[::-1], labels[::-1]))
    assert again == [], f"new variables and a re-created partial compiled {again}"
    rows = np.asarray(rows)[::-1]
    assert rows.shape == (2, len(ROWS), 9) and rows.dtype == np.complex64
    assert _relative_error(rows, expected) < 1e-5  # float32 rounding
    assert _relative_error(doubled_rows, expected) > 1e-2  # the new variables were used
    features = sj.layer_output(apply_fn, variables, images, "aspp")
    assert _relative_error(features, expected_features) < 1e-5


@pytest.mark.usefixtures("x64")
def test_aspp_rows_equal_the_hand_carved_head_float64(aspp_reference):
    model, variables, images, labels, expected, _ = aspp_reference
    apply_fn = functools.partial(model.apply, train=False)
    images = images.astype(np.float64)
    rows = sj.layer_spectral_gradient(apply_fn, variables, images, labels, "aspp", nu_i=ROWS)
    assert rows.dtype == np.complex128
    assert _relative_error(rows, expected) < 1e-12  # float64 rounding


class _Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(4, (3, 3), name="conv")(x))


class _UserNet(nn.Module):
    """A user's own model: stem, a block, and a head reading the stem (a skip)."""

    @nn.compact
    def __call__(self, x):
        stem = nn.relu(nn.Conv(4, (3, 3), name="stem")(x))
        block = _Block(name="block")(stem)
        return nn.Conv(5, (1, 1), name="classify")(block + stem)


@pytest.fixture(scope="module")
def user_net():
    net = _UserNet()
    images = np.random.default_rng(1).normal(size=(2, 9, 9, 3)).astype(np.float32)
    return net, net.init(jax.random.key(0), images), images


def test_layer_output_is_what_capture_intermediates_records(user_net):
    net, variables, images = user_net
    _, state = net.apply(variables, images, capture_intermediates=True, mutable=["intermediates"])
    captured = state["intermediates"]["block"]["conv"]["__call__"][0]
    output = sj.layer_output(net.apply, variables, images, "block/conv")
    assert _relative_error(output, captured) < 1e-6
    paths = sj.layer_paths(net.apply, variables, images)
    assert paths == ("stem", "block/conv", "block", "classify")
    logits, outputs = sj.layer_outputs(net.apply, variables, images, ["stem", "block/conv"])
    assert _relative_error(logits, net.apply(variables, images)) < 1e-6
    assert _relative_error(outputs["stem"], state["intermediates"]["stem"]["__call__"][0]) < 1e-6
    assert _relative_error(outputs["block/conv"], captured) < 1e-6


def test_layer_head_is_the_gradient_of_the_whole_model(user_net, rng):
    # Through a skip: the head of "block" keeps the stem from the image, so the
    # gradient of the summed CE with respect to the block's output is jax.grad of the
    # model with the block's output perturbed, which capture + perturbation gives too.
    net, variables, images = user_net
    labels = rng.integers(0, 5, size=(2, 9, 9))
    rows = sj.layer_spectral_gradient(net.apply, variables, images, labels, "block")
    assert rows.shape == (2, 81, 81)

    def loss_of_perturbation(delta):  # mean CE of image 0 with block += delta
        def add(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            return out + delta[None] if context.module.path == ("block",) else out

        with nn.intercept_methods(add):
            logits = net.apply(variables, images[:1])[0]
        log_probs = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(log_probs, labels[0][..., None], -1))

    grad = jax.jit(jax.grad(loss_of_perturbation))(jnp.zeros((9, 9, 4)))  # [h, w, c]
    # sum_i G[i, j] = d(mean CE)/d x_hat(nu_j) with the channel-summed direction:
    # (1/M) sum_t sum_c grad(t, c) exp(+2 pi i <nu_j, t>/N) = ifft2 of the channel sum.
    expected = np.fft.ifft2(np.asarray(grad, np.float64).sum(-1)).reshape(-1)
    actual = np.asarray(rows[0]).sum(axis=0)
    assert _relative_error(actual, expected) < 1e-5


def test_bad_layers_get_clear_errors(user_net):
    net, variables, images = user_net
    with pytest.raises(ValueError, match=r"nearest valid paths are \['stem'"):
        sj.layer_output(net.apply, variables, images, "stemm")
    with pytest.raises(TypeError, match="layer must be a module path"):
        sj.layer_output(net.apply, variables, images, 3)
    with pytest.raises(ValueError, match="layer must name a module below the root"):
        sj.layer_output(net.apply, variables, images, "")
    with pytest.raises(ValueError, match=r"images must have shape \[B, H, W, Ci\]"):
        sj.layer_output(net.apply, variables, images[0], "stem")
    with pytest.raises(ValueError, match=r"labels must have shape \[B, H, W\]"):
        sj.layer_spectral_gradient(net.apply, variables, images, np.zeros((9, 9), int), "stem")
    with pytest.raises(ValueError, match="labels must lie in"):
        sj.layer_spectral_gradient(
            net.apply, variables, images, np.full((2, 9, 9), 7), "stem", nu_i=np.array([0])
        )
    with pytest.raises(ValueError, match=r"nu_i must lie in \[0, 81\)"):
        sj.layer_spectral_gradient(
            net.apply, variables, images, np.zeros((2, 9, 9), int), "stem", nu_i=np.array([81])
        )

    class Pair(nn.Module):  # a layer with two outputs
        @nn.compact
        def __call__(self, x):
            features = nn.Conv(2, (1, 1))(x)
            return features, 2 * features

    class WithPair(nn.Module):
        @nn.compact
        def __call__(self, x):
            first, second = Pair(name="pair")(x)
            return nn.Conv(3, (1, 1))(first + second)

    with_pair = WithPair()
    pair_images = np.zeros((1, 5, 5, 3), np.float32)
    pair_variables = with_pair.init(jax.random.key(0), pair_images)
    with pytest.raises(ValueError, match="returns .* not one array"):
        sj.layer_output(with_pair.apply, pair_variables, pair_images, "pair")

    class Shared(nn.Module):  # one module called twice
        @nn.compact
        def __call__(self, x):
            conv = nn.Conv(3, (1, 1), name="shared")
            return conv(conv(x))

    shared = Shared()
    shared_variables = shared.init(jax.random.key(0), np.zeros((1, 5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="called 2 times"):
        sj.layer_output(
            shared.apply, shared_variables, np.zeros((1, 5, 5, 3), np.float32), "shared"
        )


def _ce_gradient_sum(net, variables, image, labels, path, shape):
    """``sum_i G[i, :]`` from ``jax.grad`` of the mean CE with the layer at ``path`` perturbed.

    ``(1/M) sum_t sum_c grad(t, c) exp(+2 pi i <nu_j, t>/N)``: the ``ifft2`` of the
    channel-summed gradient, float64 ``[h w]``.
    """

    def loss_of_perturbation(delta):
        def add(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            return out + delta[None] if context.module.path == path else out

        with nn.intercept_methods(add):
            logits = net.apply(variables, image[None])[0]
        log_probs = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(log_probs, labels[..., None], -1))

    grad = jax.jit(jax.grad(loss_of_perturbation))(jnp.zeros(shape))  # [h, w, c]
    return np.fft.ifft2(np.asarray(grad, np.float64).sum(-1)).reshape(-1)


def test_torch_channels_first_images(user_net, rng):
    torch = pytest.importorskip("torch")
    net, variables, images = user_net  # [B, H, W, Ci]
    nchw = torch.tensor(np.moveaxis(images, -1, 1).copy())  # [B, Ci, H, W], PyTorch's layout
    _, state = net.apply(variables, images, capture_intermediates=True, mutable=["intermediates"])
    captured = state["intermediates"]["block"]["conv"]["__call__"][0]
    output = sj.layer_output(net.apply, variables, nchw, "block/conv", data_format="NCHW")
    assert _relative_error(output, captured) < 1e-6
    paths = sj.layer_paths(net.apply, variables, nchw, data_format="NCHW")
    assert paths == ("stem", "block/conv", "block", "classify")
    labels = rng.integers(0, 5, size=(2, 9, 9))
    rows = sj.layer_spectral_gradient(
        net.apply, variables, nchw, torch.tensor(labels), "block", data_format="NCHW"
    )
    expected = _ce_gradient_sum(net, variables, images[1], labels[1], ("block",), (9, 9, 4))
    assert _relative_error(np.asarray(rows[1]).sum(axis=0), expected) < 1e-5
    with pytest.raises(ValueError, match=r"images must have shape \[B, Ci, H, W\]"):
        sj.layer_output(net.apply, variables, nchw[0], "stem", data_format="NCHW")
    with pytest.raises(ValueError, match=r"data_format must be one of \('NHWC', 'NCHW'\)"):
        sj.layer_output(net.apply, variables, nchw, "stem", data_format="CHW")
    with pytest.raises(TypeError, match=r"images of type Tensor could not be read"):
        sj.layer_output(net.apply, variables, nchw.requires_grad_(), "stem")


class _WideNet(nn.Module):
    """A layer whose output ``[B, 2, 9, 8]`` has fewer rows than columns and channels."""

    @nn.compact
    def __call__(self, x):
        wide = nn.relu(nn.Conv(8, (3, 3), name="wide")(x))
        return nn.Conv(3, (1, 1), name="classify")(wide)


def test_a_layer_of_few_rows_is_read_channels_last(rng):
    # A Flax layer's output is [h, w, c] whatever its shape: the layer functions state
    # the layout, so the Jacobian's refusal of a [C, H, W]-looking map does not apply.
    net = _WideNet()
    images = rng.normal(size=(1, 2, 9, 3)).astype(np.float32)
    variables = net.init(jax.random.key(0), images)
    labels = rng.integers(0, 3, size=(1, 2, 9))
    rows = sj.layer_spectral_gradient(net.apply, variables, images, labels, "wide")
    assert rows.shape == (1, 18, 18)
    expected = _ce_gradient_sum(net, variables, images[0], labels[0], ("wide",), (2, 9, 8))
    assert _relative_error(np.asarray(rows[0]).sum(axis=0), expected) < 1e-5
