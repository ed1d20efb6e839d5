"""Tests of the stacked ResNet blocks (``scan_blocks``, spectral_jax.models.resnet), of
the conversion of their variables (spectral_jax.models.block_stacking) and of the
convolution they run (spectral_jax.models.loop_friendly_conv).

The reference is the unrolled model (``scan_blocks=False``, one module per block) with
the same per-block variables: both run the same operations on the same values, so
outputs, BatchNorm updates and gradients agree to float32 rounding (1e-5 relative to the
largest value; in practice they are equal or nearly so). Layouts are checked exactly:
:func:`unstack_blocks` and :func:`stack_blocks` only move values. Full-size backbones are
checked by shape (``jax.eval_shape``) and by the size of their traced programs, which is
what the compile time follows, not by timing.
"""

from __future__ import annotations

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.models import loop_friendly_conv, stack_blocks, unstack_blocks
from spectral_jax.models import resnet as resnet_lib
from tests.helpers.models import DEEP_TINY_STAGES, num_params, random_variables

SHAPE = (2, 33, 33, 3)
TOLERANCE = 1e-5


def _models(**kwargs):
    """``(stacked, unrolled)`` ResNets with (2, 3, 2, 2) blocks, 4 channels wide."""
    make = lambda scan: resnet_lib.ResNet(DEEP_TINY_STAGES, width=4, scan_blocks=scan, **kwargs)
    return make(True), make(False)


def _per_block_variables(model, rng):
    """Random per-block variables: He-normal kernels, random BatchNorm parameters and
    statistics (so that a mixed-up block would change the outputs)."""
    variables = random_variables(model, SHAPE, seed=int(rng.integers(1 << 30)))

    def fill(path, leaf):
        name = path[-1].key
        if name == "scale":
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        if name == "var":
            return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), leaf.dtype)
        if name in ("bias", "mean"):
            return jnp.asarray(0.1 * rng.normal(size=leaf.shape), leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(fill, variables)


def _assert_close(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = max(float(np.max(np.abs(expected))), 1.0)
    np.testing.assert_allclose(actual, expected, rtol=TOLERANCE, atol=TOLERANCE * scale)


def _shapes(tree):
    return jax.tree.map(lambda leaf: (tuple(leaf.shape), jnp.dtype(leaf.dtype)), tree)


def test_stacked_layout_and_its_per_block_view():
    stacked_model, unrolled_model = _models()
    x = jax.ShapeDtypeStruct(SHAPE, jnp.float32)
    stacked = jax.eval_shape(stacked_model.init, jax.random.key(0), x)
    unrolled = jax.eval_shape(unrolled_model.init, jax.random.key(0), x)
    assert sorted(stacked["params"]) == [
        "bn1",
        "conv1",
        "layer1_block0",
        "layer1_blocks",
        "layer2_block0",
        "layer2_blocks",
        "layer3_block0",
        "layer3_blocks",
        "layer4_block0",
        "layer4_blocks",
    ]
    # Stage 2 has 3 blocks: blocks 1 and 2 stacked; 8 bottleneck channels.
    assert stacked["params"]["layer2_blocks"]["conv2"]["kernel"].shape == (2, 3, 3, 8, 8)
    assert stacked["batch_stats"]["layer2_blocks"]["bn3"]["mean"].shape == (2, 32)
    assert _shapes(unstack_blocks(stacked)) == _shapes(unrolled)
    assert _shapes(stack_blocks(unrolled)) == _shapes(stacked)
    assert _shapes(stack_blocks(unrolled, like=stacked)) == _shapes(stacked)
    assert _shapes(stack_blocks(unrolled, like=unrolled)) == _shapes(unrolled)


@pytest.mark.parametrize("name, expected", [("resnet50", 23_508_032), ("resnet101", 42_500_160)])
def test_full_size_stacked_backbones_have_torchvision_layers(name, expected):
    x = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32)
    stacked = jax.eval_shape(resnet_lib.create_resnet(name).init, jax.random.key(0), x)
    unrolled_model = resnet_lib.create_resnet(name, scan_blocks=False)
    unrolled = jax.eval_shape(unrolled_model.init, jax.random.key(0), x)
    stages = resnet_lib.RESNET_CONFIGS[name].stage_sizes
    assert stacked["params"]["layer3_blocks"]["conv1"]["kernel"].shape == (stages[2] - 1,) + (
        1,
        1,
        1024,
        256,
    )
    assert num_params(stacked["params"]) == expected
    assert _shapes(unstack_blocks(stacked)) == _shapes(unrolled)


def test_stack_and_unstack_move_values_exactly(rng):
    _, unrolled_model = _models()
    per_block = _per_block_variables(unrolled_model, rng)
    stacked = stack_blocks(per_block)
    for stage, num_blocks in enumerate(DEEP_TINY_STAGES):
        for block in range(1, num_blocks):
            for collection, module, leaf in (
                ("params", "conv2", "kernel"),
                ("params", "bn3", "bias"),
                ("batch_stats", "bn1", "mean"),
            ):
                np.testing.assert_array_equal(
                    stacked[collection][f"layer{stage + 1}_blocks"][module][leaf][block - 1],
                    per_block[collection][f"layer{stage + 1}_block{block}"][module][leaf],
                )
    round_trip = unstack_blocks(stacked)
    assert jax.tree.structure(round_trip) == jax.tree.structure(per_block)
    jax.tree.map(np.testing.assert_array_equal, round_trip, per_block)
    # Per-block variables are left alone; FrozenDicts stay frozen.
    jax.tree.map(np.testing.assert_array_equal, unstack_blocks(per_block), per_block)
    frozen = stack_blocks(flax.core.freeze(per_block))
    assert isinstance(frozen, flax.core.FrozenDict)
    assert isinstance(unstack_blocks(frozen), flax.core.FrozenDict)


def _apply(model, train):
    def apply(variables, x):
        if train:
            return model.apply(variables, x, train=True, mutable=["batch_stats"])
        return model.apply(variables, x), None

    return jax.jit(apply)


@pytest.mark.parametrize("train, output_stride", [(False, 32), (True, 8)])
def test_stacked_blocks_compute_the_unrolled_function(rng, train, output_stride):
    stacked_model, unrolled_model = _models(output_stride=output_stride)
    per_block = _per_block_variables(unrolled_model, rng)
    x = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
    expected, expected_updates = _apply(unrolled_model, train)(per_block, x)
    actual, actual_updates = _apply(stacked_model, train)(stack_blocks(per_block), x)
    for a, e in zip(actual, expected, strict=True):  # low-level and high-level features
        _assert_close(a, e)
    if train:
        # The running statistics of every block follow the same batch.
        updates = unstack_blocks(actual_updates)
        assert jax.tree.structure(updates) == jax.tree.structure(expected_updates)
        jax.tree.map(_assert_close, updates, expected_updates)
        assert not np.allclose(
            expected_updates["batch_stats"]["layer3_block1"]["bn2"]["mean"],
            per_block["batch_stats"]["layer3_block1"]["bn2"]["mean"],
        )


def _stem_loss(model, params, batch_stats, x):
    (low, high), _ = model.apply(
        {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    return jnp.mean(low**2) + jnp.mean(jnp.sin(high))


def _gradients(model, variables, x):
    loss = lambda p: _stem_loss(model, p, variables["batch_stats"], x)
    return jax.jit(jax.grad(loss))(variables["params"])


@functools.cache
def _unrolled_gradient_case():
    """``(per_block variables, x, gradients of the unrolled model)``, computed once: the
    reference of every gradient branch. Without recomputation: ``remat_blocks`` changes
    how the backward pass gets its activations, not the gradient."""
    rng = np.random.default_rng(20240601)
    _, unrolled_model = _models()
    per_block = _per_block_variables(unrolled_model, rng)
    x = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
    return per_block, x, _gradients(unrolled_model, per_block, x)


@pytest.mark.parametrize(
    "remat, branch",
    [
        (False, None),
        (True, None),
        # Slow: the native branch is checked against the native convolution in every
        # padding, dilation and stride (test_loop_friendly_conv_has_the_native_values_and_
        # gradients), and the stacking's gradient path by the cases above.
        pytest.param(False, "native", marks=pytest.mark.slow),
    ],
)
def test_gradients_of_stacked_blocks_are_the_unrolled_ones(remat, branch, monkeypatch):
    """``branch``: the gradient the stacked blocks' convolutions take (None: the
    platform's, the forward-style one on the CPU). ``"native"`` runs on the CPU the
    branch that GPUs and TPUs take
    (:data:`spectral_jax.models.loop_friendly_conv._FORCED_GRADIENT`)."""
    monkeypatch.setattr(loop_friendly_conv, "_FORCED_GRADIENT", branch)
    stacked_model, _ = _models(remat_blocks=remat)
    per_block, x, expected = _unrolled_gradient_case()
    actual = unstack_blocks(_gradients(stacked_model, stack_blocks(per_block), x))
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    jax.tree.map(_assert_close, actual, expected)


def _equation_count(jaxpr) -> int:
    """Equations of a jaxpr and of every jaxpr nested in it (scan bodies, remat, ...)."""
    count = 0
    for eqn in jaxpr.eqns:
        count += 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, list | tuple) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    count += _equation_count(inner)
    return count


def _train_program_size(depth: str | tuple[int, ...], scan_blocks: bool) -> tuple[int, int]:
    """``(equations, bottleneck traces)`` of one training-mode gradient of a backbone:
    ``depth`` a name of :data:`RESNET_CONFIGS` or the stage sizes of a 4-channel ResNet
    (the traced program does not depend on the width)."""
    if isinstance(depth, str):
        model = resnet_lib.create_resnet(depth, scan_blocks=scan_blocks)
    else:
        model = resnet_lib.ResNet(depth, width=4, scan_blocks=scan_blocks)
    x = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    traces = []

    def count(next_fun, args, kwargs, context):
        if isinstance(context.module, resnet_lib.Bottleneck) and context.method_name == "__call__":
            traces.append(context.module.name)
        return next_fun(*args, **kwargs)

    def loss(params, batch_stats, images):
        (_, high), _ = model.apply(
            {"params": params, "batch_stats": batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.sum(high)

    with nn.intercept_methods(count):
        jaxpr = jax.make_jaxpr(jax.grad(loss))(variables["params"], variables["batch_stats"], x)
    return _equation_count(jaxpr.jaxpr), len(traces)


@pytest.mark.parametrize(
    "shallow, deep",
    [
        # Stage 3 deepened by 9 blocks, as ResNet-50 -> ResNet-101 deepens it by 17: the
        # same check at a third of the tracing (18 and 9 blocks unrolled, not 33 and 16).
        ((2, 2, 3, 2), (2, 2, 12, 2)),
        pytest.param("resnet50", "resnet101", marks=pytest.mark.slow),
    ],
)
def test_traced_program_does_not_grow_with_depth(shallow, deep):
    """What XLA compiles: the deeper backbone's program (ResNet-101's) is as large as the
    shallower one's (ResNet-50's) when stacked (one traced block per stage), larger in
    proportion to the blocks when unrolled (33 blocks against 16)."""
    stacked_shallow, traces_shallow = _train_program_size(shallow, scan_blocks=True)
    stacked_deep, traces_deep = _train_program_size(deep, scan_blocks=True)
    unrolled_shallow, unrolled_traces_shallow = _train_program_size(shallow, scan_blocks=False)
    unrolled_deep, unrolled_traces_deep = _train_program_size(deep, scan_blocks=False)
    assert traces_deep == traces_shallow  # block0 and one scanned body per stage
    blocks = lambda depth: sum(
        resnet_lib.RESNET_CONFIGS[depth].stage_sizes if isinstance(depth, str) else depth
    )
    assert (unrolled_traces_shallow, unrolled_traces_deep) == (blocks(shallow), blocks(deep))
    assert stacked_deep <= 1.05 * stacked_shallow
    assert unrolled_deep >= 1.5 * unrolled_shallow  # the count does see depth
    assert stacked_deep < 0.7 * unrolled_deep


def test_widths_select_the_unrolled_form():
    model = resnet_lib.create_resnet("resnet50", widths=(("layer3_block4/conv1", 100),))
    assert model.scan_blocks and not model.stacks_blocks
    x = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert "layer3_blocks" not in variables["params"]
    assert variables["params"]["layer3_block4"]["conv1"]["kernel"].shape == (1, 1, 1024, 100)
    assert variables["params"]["layer3_block5"]["conv1"]["kernel"].shape == (1, 1, 1024, 256)
    # Blocks of different widths cannot be stacked.
    with pytest.raises(ValueError, match="differ in structure or shape"):
        stack_blocks(variables)


def test_bad_layouts_raise():
    leaf = np.zeros((2, 3))
    with pytest.raises(ValueError, match="not 1, 2"):
        stack_blocks({"params": {"layer1_block1": {"w": leaf}, "layer1_block3": {"w": leaf}}})
    with pytest.raises(ValueError, match="both"):
        unstack_blocks({"params": {"layer1_blocks": {"w": leaf}, "layer1_block1": {"w": leaf}}})
    with pytest.raises(ValueError, match="leading sizes"):
        unstack_blocks({"params": {"layer1_blocks": {"w": leaf, "v": np.zeros((3,))}}})
    with pytest.raises(ValueError, match="scan_blocks=False"):
        jax.eval_shape(
            lambda x: resnet_lib.bottleneck_stage(
                x,
                False,
                stage=0,
                num_blocks=2,
                features=4,
                strides=1,
                dilation=1,
                first_dilation=1,
                widths={"layer1_block1/conv1": 2},
            ),
            jax.ShapeDtypeStruct((1, 8, 8, 16), jnp.float32),
        )


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("branch", [None, "native"])
@pytest.mark.parametrize(
    "kernel, padding, dilation, strides",
    [
        (1, ((0, 0), (0, 0)), 1, 1),
        (3, ((1, 1), (1, 1)), 1, 1),
        (3, ((2, 2), (2, 2)), 2, 1),
        (3, ((0, 2), (1, 0)), 1, 1),  # asymmetric: not "same"
        (3, "SAME", 2, 1),  # nn.Conv's default padding
        (1, "SAME", 1, 1),
        (3, ((1, 1), (1, 1)), 1, 2),  # strided: the native convolution
    ],
)
def test_loop_friendly_conv_has_the_native_values_and_gradients(
    rng, kernel, padding, dilation, strides, branch, monkeypatch
):
    """Its gradients (on the CPU a forward convolution and a patch product; with
    ``branch="native"`` the other platforms' branch, forced) equal the native ones to
    float64 rounding."""
    monkeypatch.setattr(loop_friendly_conv, "_FORCED_GRADIENT", branch)
    x = jnp.asarray(rng.normal(size=(2, 9, 8, 5)))
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 5, 4)))
    numbers = jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

    def conv(function, x, w):
        return function(
            x,
            w,
            (strides, strides),
            padding,
            rhs_dilation=(dilation, dilation),
            dimension_numbers=numbers,
        )

    native = lambda x, w: conv(jax.lax.conv_general_dilated, x, w)
    friendly = lambda x, w: conv(loop_friendly_conv.loop_friendly_conv_general_dilated, x, w)
    expected, native_vjp = jax.vjp(native, x, w)
    actual, friendly_vjp = jax.vjp(friendly, x, w)
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)
    dy = jnp.asarray(rng.normal(size=expected.shape))
    for a, e in zip(friendly_vjp(dy), native_vjp(dy), strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-11, atol=1e-11)
