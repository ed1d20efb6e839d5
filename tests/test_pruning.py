"""Tests for spectral_jax.models.pruning: the prunable layers, smallest-L2 selection against a
NumPy reference, exact counts, the zeroed BatchNorm, soft-pruned == hard-pruned outputs,
gradients reaching pruned filters, FLOPs of the hard-pruned models and bad input.

Tolerances: outputs of the soft- and hard-pruned model (same function, different
summation order) agree to 1e-5 in float32 and 1e-12 in float64.
"""

from __future__ import annotations

import fractions
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax import flops
from spectral_jax.models import DAN, DeepLabV3Plus, pruning, stack_blocks, unstack_blocks
from tests.helpers.models import TINY_DAN, TINY_DEEPLAB, random_variables

MODELS = {"deeplab": (DeepLabV3Plus, TINY_DEEPLAB), "dan": (DAN, TINY_DAN)}
SHAPE = (2, 33, 33, 3)
RATES = pruning.PruningRates(encoder=0.4, decoder=0.2)
TOLERANCE = {jnp.float32: 1e-5, jnp.float64: 1e-12}
# As the training loop calls it (compiling once beats dispatching its ops one by one).
soft_prune = jax.jit(pruning.soft_prune, static_argnums=1)


def _floor(rate, channels):
    """floor(rate * channels) in exact rational arithmetic (rate as written in decimal)."""
    return int(fractions.Fraction(str(rate)) * channels)


def _flat(tree):
    return {
        "/".join(str(getattr(key, "key", key)) for key in path): leaf
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _variables(model, rng, dtype=jnp.float32):
    """He-normal kernels and random BatchNorm parameters and statistics.

    With random_variables' identity BatchNorm (zero bias and mean) a kernel-only pruning
    would already give zero channels; random ones make the BatchNorm zeroing matter.
    """
    variables = random_variables(model, SHAPE, seed=int(rng.integers(1 << 30)))

    def fill(path, leaf):
        name = path[-1].key
        if name == "scale":
            leaf = rng.uniform(0.5, 1.5, leaf.shape)
        elif name == "var":
            leaf = rng.uniform(0.5, 2.0, leaf.shape)
        elif name in ("bias", "mean"):
            leaf = rng.normal(size=leaf.shape)
        return jnp.asarray(leaf, dtype)

    return jax.tree_util.tree_map_with_path(fill, variables)


def _full_size_params(model):
    """Variable shapes with per-block paths (the stacked blocks split), as plans use."""
    x = jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.float32)
    return unstack_blocks(jax.eval_shape(model.init, jax.random.key(0), x))


@pytest.mark.parametrize("name", ["deeplab", "dan"])
@pytest.mark.parametrize("backbone", ["resnet_tiny", "resnet101"])
def test_plan_classifies_every_convolution(name, backbone):
    cls, _ = MODELS[name]
    model = cls(backbone=backbone)
    variables = _full_size_params(model)
    kernels = {
        path.removeprefix("params/").removesuffix("/kernel"): leaf.shape
        for path, leaf in _flat(variables).items()
        if path.endswith("/kernel")
    }
    plan = pruning.pruning_plan(model)
    prunable = {conv.path for conv in plan.convs}
    # Prunable: everything but the residual path (conv3, projection shortcuts) and the
    # classifier.
    excluded = {p for p in kernels if p.endswith(("/conv3", "/downsample_conv", "/classifier"))}
    assert prunable == set(kernels) - excluded
    blocks = sum(1 for p in kernels if p.endswith("/conv3"))
    decoder = 3 if name == "deeplab" else 5
    assert len(plan.convs) == 1 + 2 * blocks + 6 + decoder
    assert blocks == (4 if backbone == "resnet_tiny" else 3 + 4 + 23 + 3)
    flat = _flat(variables)
    for conv in plan.convs:
        assert flat[f"batch_stats/{conv.batch_norm}/mean"].shape == (kernels[conv.path][-1],)
        assert conv.group == ("decoder" if conv.path.startswith("decoder/") else "encoder")
    # Every consumer reads exactly the concatenated outputs of its producers.
    for consumer in plan.inputs:
        produced = sum(kernels[p][-1] for p in consumer.producers)
        assert kernels[consumer.path][-2] == produced


@pytest.mark.parametrize("channels", [7, 8, 33])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4, 0.6, 0.99])
def test_pruning_mask_matches_numpy_reference(rng, channels, rate):
    kernel = rng.normal(size=(3, 3, 5, channels)).astype(np.float32)
    kernel *= rng.uniform(0.1, 3.0, size=channels).astype(np.float32)
    # Exact copies make exact ties in the norms; the lower index must be pruned first.
    kernel[..., channels - 1] = kernel[..., 1]
    kernel[..., channels - 2] = kernel[..., 0]
    norms = np.sqrt((kernel.astype(np.float64) ** 2).sum(axis=(0, 1, 2)))
    order = np.lexsort((np.arange(channels), norms))  # by norm, then by index
    expected = np.ones(channels, bool)
    expected[order[: _floor(rate, channels)]] = False
    np.testing.assert_allclose(pruning.filter_norms(jnp.asarray(kernel)), norms, rtol=1e-6)
    keep = np.asarray(pruning.pruning_mask(jnp.asarray(kernel), rate))
    np.testing.assert_array_equal(keep, expected)
    assert keep.sum() == channels - _floor(rate, channels)


@pytest.mark.parametrize(
    "rate, channels", [(0.29, 100), (0.2, 5), (0.6, 5), (0.4, 4), (0.7, 10), (0.99, 3)]
)
def test_num_pruned_is_exact_floor(rate, channels):
    assert pruning.num_pruned(rate, channels) == _floor(rate, channels)


@pytest.mark.parametrize("name", ["deeplab", "dan"])
def test_soft_prune_zeroes_filters_and_batch_norm(rng, name):
    cls, settings = MODELS[name]
    model = cls(**settings, feature_size=5)
    variables = _variables(model, rng)
    plan = pruning.pruning_plan(model, RATES)
    pruned, masks = soft_prune(variables, plan)
    before, after = _flat(variables), _flat(pruned)
    touched = set()
    for conv in plan.convs:
        kernel = np.asarray(before[f"params/{conv.path}/kernel"])
        channels = kernel.shape[-1]
        keep = np.asarray(masks[conv.path])
        rate = RATES.encoder if conv.group == "encoder" else RATES.decoder
        assert keep.sum() == channels - _floor(rate, channels)
        norms = np.linalg.norm(kernel.reshape(-1, channels), axis=0)
        if not keep.all():  # the removed filters are the smallest
            assert norms[~keep].max() <= norms[keep].min()
        removed = ~keep
        new_kernel = np.asarray(after[f"params/{conv.path}/kernel"])
        np.testing.assert_array_equal(new_kernel[..., removed], 0.0)
        np.testing.assert_array_equal(new_kernel[..., keep], kernel[..., keep])
        for key in (f"params/{conv.batch_norm}/bias", f"batch_stats/{conv.batch_norm}/mean"):
            np.testing.assert_array_equal(np.asarray(after[key])[removed], 0.0)
            np.testing.assert_array_equal(after[key][keep], before[key][keep])
        for key in (f"params/{conv.batch_norm}/scale", f"batch_stats/{conv.batch_norm}/var"):
            np.testing.assert_array_equal(after[key], before[key])  # kept: see module doc
        touched |= {
            f"params/{conv.path}/kernel",
            f"params/{conv.batch_norm}/bias",
            f"batch_stats/{conv.batch_norm}/mean",
        }
    pruned_counts = [int((~np.asarray(m)).sum()) for m in masks.values()]
    assert sum(pruned_counts) > 0
    for key in set(before) - touched:  # conv3, shortcuts, classifier, ...
        np.testing.assert_array_equal(after[key], before[key])


def test_rate_zero_is_identity(rng):
    model = DAN(**TINY_DAN, feature_size=5)
    variables = _variables(model, rng)
    plan = pruning.pruning_plan(model, pruning.PruningRates())
    pruned, masks = soft_prune(variables, plan)
    assert all(bool(np.all(mask)) for mask in masks.values())
    for key, value in _flat(variables).items():
        np.testing.assert_array_equal(_flat(pruned)[key], value)
    small_model, small_variables = pruning.hard_prune(model, variables, plan)
    assert small_model == model and small_model.widths is None
    assert jax.tree.map(jnp.shape, small_variables) == jax.tree.map(jnp.shape, variables)


@functools.cache
def _jitted_apply(model):
    """One jitted ``model.apply`` per model (models are hashable), so that tests running
    an equal model on variables of the same shapes share its compiled program."""
    return jax.jit(model.apply)


def _intermediate_logits(model, variables, x):
    return _jitted_apply(model)(variables, x)


@pytest.mark.parametrize(
    "name, feature_size, resample, output_stride, dtype",
    [
        # The model (and hard-pruned model) of the test that zeroes only the filters: the
        # same two compiled programs.
        ("deeplab", 5, "bilinear", 16, jnp.float32),
        ("dan", 4, "spectral", 16, jnp.float32),
        # Slow: the same pruning code on the same layer graph (the resampling and the
        # output stride do not change which channels are kept or how the consumers are
        # sliced). In float64 the agreement is 1e-12 instead of 1e-5; a pruning error is
        # of the order of the outputs (above 1e-2 when only the BatchNorm zeroing is
        # left out: test_zeroing_only_the_filters_would_change_the_hard_pruned_outputs),
        # so the float32 cases above already fail on one.
        pytest.param("deeplab", None, "bilinear", 8, jnp.float32, marks=pytest.mark.slow),
        pytest.param("deeplab", 5, "spectral", 16, jnp.float64, marks=pytest.mark.slow),
        pytest.param("dan", None, "area", 16, jnp.float64, marks=pytest.mark.slow),
    ],
)
def test_soft_pruned_equals_hard_pruned(rng, name, feature_size, resample, output_stride, dtype):
    cls, settings = MODELS[name]
    model = cls(
        **settings, feature_size=feature_size, resample=resample, output_stride=output_stride
    )
    with jax.enable_x64(dtype == jnp.float64):
        model = model.clone(dtype=dtype)
        x = jnp.asarray(rng.normal(size=SHAPE), dtype)
        variables = _variables(model, rng, dtype)
        plan = pruning.pruning_plan(model, RATES)
        soft, masks = soft_prune(variables, plan)
        small_model, small_variables = pruning.hard_prune(model, soft, masks)
        expected = _intermediate_logits(model, soft, x)
        actual = _intermediate_logits(small_model, small_variables, x)
        assert pruning.hard_pruned_model(model, plan) == small_model  # from the plan alone
    assert actual.dtype == dtype
    # The pruned model is genuinely narrower ...
    widths = dict(small_model.widths)
    assert widths["encoder/layer4_block0/conv2"] == 32 - _floor(0.4, 32)
    assert widths["decoder/fuse1_conv"] == 8 - _floor(0.2, 8)
    small_params = _flat(small_variables)
    for path, keep in masks.items():
        assert small_params[f"params/{path}/kernel"].shape[-1] == int(np.sum(keep))
    # ... and computes the soft-pruned function.
    np.testing.assert_allclose(actual, expected, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


def test_soft_prune_of_stacked_blocks_zeroes_the_per_block_filters(rng, deep_tiny_backbone):
    """A model with stacked blocks is pruned as its per-block view: the same filters,
    the same masks, and variables that keep their stacked layout."""
    model = DAN(**{**TINY_DAN, "backbone": deep_tiny_backbone}, feature_size=5)
    per_block = _variables(model.clone(scan_blocks=False), rng)
    stacked = stack_blocks(per_block)
    assert "layer3_blocks" in stacked["params"]["encoder"]
    plan = pruning.pruning_plan(model, RATES)
    expected, expected_masks = soft_prune(per_block, plan)
    actual, actual_masks = soft_prune(stacked, plan)
    assert jax.tree.structure(actual) == jax.tree.structure(stacked)
    assert set(actual_masks) == set(expected_masks)
    assert "encoder/layer2_block2/conv1" in actual_masks
    for path, mask in expected_masks.items():
        np.testing.assert_array_equal(actual_masks[path], mask)
    jax.tree.map(np.testing.assert_array_equal, unstack_blocks(actual), expected)


@pytest.mark.parametrize("rates", [RATES, pruning.PruningRates(decoder=0.2)])
def test_hard_prune_of_stacked_blocks(rng, deep_tiny_backbone, rates):
    """A pruned backbone runs unrolled; a backbone that lost nothing stays stacked."""
    model = DeepLabV3Plus(**{**TINY_DEEPLAB, "backbone": deep_tiny_backbone}, feature_size=5)
    x = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
    variables = stack_blocks(_variables(model.clone(scan_blocks=False), rng))
    plan = pruning.pruning_plan(model, rates)
    soft, masks = soft_prune(variables, plan)
    small_model, small_variables = pruning.hard_prune(model, soft, masks)
    assert pruning.hard_pruned_model(model, plan) == small_model
    encoder = small_variables["params"]["encoder"]
    if rates.encoder:
        assert "layer3_blocks" not in encoder
        assert encoder["layer2_block2"]["conv1"]["kernel"].shape[-1] == 8 - _floor(0.4, 8)
    else:
        assert "layer2_block2" not in encoder
        assert encoder["layer2_blocks"]["conv1"]["kernel"].shape == (2, 1, 1, 32, 8)
    expected = _intermediate_logits(model, soft, x)
    actual = _intermediate_logits(small_model, small_variables, x)
    np.testing.assert_allclose(actual, expected, atol=TOLERANCE[jnp.float32], rtol=1e-5)


def test_hard_prune_from_plan_and_in_training_mode(rng):
    model = DAN(**TINY_DAN, feature_size=5)
    x = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
    variables = _variables(model, rng)
    soft, _ = soft_prune(variables, pruning.pruning_plan(model, RATES))
    small_model, small_variables = pruning.hard_prune(
        model, variables, pruning.pruning_plan(model, RATES)
    )

    def train_apply(model, variables):
        return model.apply(variables, x, train=True, mutable=["batch_stats"])

    expected, expected_stats = jax.jit(functools.partial(train_apply, model))(soft)
    actual, actual_stats = jax.jit(functools.partial(train_apply, small_model))(small_variables)
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-5)
    # The running statistics of the kept channels follow the same batch.
    keep = np.asarray(
        pruning.pruning_mask(variables["params"]["aspp"]["project_conv"]["kernel"], 0.4)
    )
    stats = lambda s: np.asarray(s["batch_stats"]["aspp"]["project_bn"]["mean"])
    np.testing.assert_allclose(
        stats(actual_stats), stats(expected_stats)[keep], atol=1e-5, rtol=1e-5
    )


def test_zeroing_only_the_filters_would_change_the_hard_pruned_outputs(rng):
    """Why soft_prune zeroes BatchNorm's bias and mean: without them, a zero filter still
    gives the constant scale * (0 - mean) / sqrt(var + eps) + bias after BatchNorm."""
    model = DeepLabV3Plus(**TINY_DEEPLAB, feature_size=5)
    x = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
    variables = _variables(model, rng)
    soft, masks = soft_prune(variables, pruning.pruning_plan(model, RATES))
    # The soft-pruned kernels with the original BatchNorm parameters and statistics.
    filters_only = jax.tree_util.tree_map_with_path(
        lambda path, new, old: new if path[-1].key == "kernel" else old, soft, variables
    )
    small_model, small_variables = pruning.hard_prune(model, filters_only, masks)
    expected = _intermediate_logits(model, filters_only, x)
    actual = _intermediate_logits(small_model, small_variables, x)
    assert np.abs(np.asarray(actual - expected)).max() > 1e-2


def test_pruned_filters_regrow_after_one_optimizer_step(rng):
    """Right after soft_prune a pruned channel is exactly 0 before the ReLU, whose
    derivative there is 0: no gradient reaches the filter. One optimizer step with the
    stale momentum moves the filter off zero; BatchNorm (scale kept) then amplifies the
    small output and the gradient flows again. With the scale zeroed as well, it still
    would not."""
    model = DAN(**TINY_DAN, feature_size=5)
    x = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, size=SHAPE[:3]))
    soft, masks = soft_prune(_variables(model, rng), pruning.pruning_plan(model, RATES))
    removed = ~np.asarray(masks["decoder/fuse1_conv"])
    assert removed.any()

    @jax.jit
    def pruned_filter_grad(params):
        def loss(params):
            logits, _ = model.apply(
                {"params": params, "batch_stats": soft["batch_stats"]},
                x,
                train=True,
                mutable=["batch_stats"],
            )
            onehot = jax.nn.one_hot(labels, 3)
            return -jnp.mean(jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1))

        return jax.grad(loss)(params)["decoder"]["fuse1_conv"]["kernel"][..., removed]

    def with_fuse1(params, kernel=None, scale=None):
        fuse1 = {**params["decoder"]["fuse1_conv"]}
        bn = {**params["decoder"]["fuse1_bn"]}
        if kernel is not None:
            fuse1["kernel"] = kernel
        if scale is not None:
            bn["scale"] = scale
        decoder = {**params["decoder"], "fuse1_conv": fuse1, "fuse1_bn": bn}
        return {**params, "decoder": decoder}

    params = soft["params"]
    np.testing.assert_array_equal(pruned_filter_grad(params), 0.0)
    kernel = params["decoder"]["fuse1_conv"]["kernel"]
    step = jnp.asarray(1e-3 * rng.normal(size=kernel.shape), kernel.dtype)
    moved = jnp.where(removed, step, kernel)  # a small update of the pruned filters only
    assert np.abs(np.asarray(pruned_filter_grad(with_fuse1(params, kernel=moved)))).max() > 1e-4
    scale = jnp.where(removed, 0.0, params["decoder"]["fuse1_bn"]["scale"])
    dead = pruned_filter_grad(with_fuse1(params, kernel=moved, scale=scale))
    np.testing.assert_array_equal(dead, 0.0)


def _conv_paths(model, shape):
    """Parameter paths of the nn.Conv calls of a forward pass, in program order."""
    paths = []

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
            paths.append("/".join(context.module.path))
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    with nn.intercept_methods(interceptor):
        jax.make_jaxpr(model.apply)(variables, x)
    return paths


# DeepLab v3+ has consumers of several producers too (the ASPP projection, the decoder's
# first fusion), and the pruned DAN's shapes are checked by test_soft_pruned_equals_hard_pruned
# (its outputs) and test_pruning_twice_composes_widths: the DAN count is slow.
@pytest.mark.parametrize("name", ["deeplab", pytest.param("dan", marks=pytest.mark.slow)])
def test_hard_pruned_flops_equal_analytic_count(rng, name):
    cls, _ = MODELS[name]
    # 256-channel heads, so that the convolutions dominate the compiled program, as in
    # tests/test_flops.py.
    model = cls(num_classes=3, backbone="resnet_tiny", dropout_rate=0.0, feature_size=5)
    if name == "dan":
        model = model.clone(decoder_channels=256)
    variables = random_variables(model, SHAPE)
    plan = pruning.pruning_plan(model, RATES)
    small_model, _ = pruning.hard_prune(model, variables, plan)
    masks = soft_prune(variables, plan)[1]
    kept = {path: int(np.sum(mask)) for path, mask in masks.items()}
    producers = {consumer.path: consumer.producers for consumer in plan.inputs}

    layers = flops.conv_layers(model, SHAPE)
    small_layers = flops.conv_layers(small_model, SHAPE)
    paths = _conv_paths(model, SHAPE)
    assert len(paths) == len(layers) == len(small_layers)
    expected = 0
    for path, layer in zip(paths, layers, strict=True):
        cin, cout = layer.kernel_shape[-2:]
        new_cout = kept.get(path, cout)
        new_cin = sum(kept[p] for p in producers[path]) if path in producers else cin
        # MACs are proportional to Cin * Cout at fixed spatial taps.
        assert layer.macs * new_cin * new_cout % (cin * cout) == 0
        expected += layer.macs * new_cin * new_cout // (cin * cout)
    analytic = flops.conv_macs(small_layers)
    assert analytic == expected
    assert expected < 0.8 * flops.conv_macs(layers)
    # XLA counts the compiled pruned model's convolutions exactly as the analytic count,
    # and the whole model within 2 % of it.
    xla_convs = sum(layer.xla_flops() for layer in small_layers)
    np.testing.assert_allclose(xla_convs, 2 * expected, rtol=1e-9)
    total = flops.count_flops(small_model, SHAPE)
    assert 2 * expected <= total.flops <= 1.02 * 2 * expected
    # Below the unpruned model's convolutions alone (its compiled count is larger still).
    assert total.flops < 2 * flops.conv_macs(layers)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(encoder=1.0), "encoder"),
        (dict(encoder=-0.1), "encoder"),
        (dict(decoder=1.5), "decoder"),
        (dict(decoder=float("nan")), "decoder"),
        (dict(layers=(("decoder/fuse1_conv", 1.0),)), "decoder/fuse1_conv"),
        (dict(layers=("decoder/fuse1_conv",)), "layers"),
    ],
)
def test_bad_rates_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pruning.PruningRates(**kwargs)


def test_bad_plans_and_masks_raise(rng):
    model = DeepLabV3Plus(**TINY_DEEPLAB)
    with pytest.raises(ValueError, match="encoder/layer1_block0/conv3"):
        pruning.pruning_plan(
            model, pruning.PruningRates(layers=(("encoder/layer1_block0/conv3", 0.5),))
        )
    with pytest.raises(ValueError, match="model"):
        pruning.pruning_plan(nn.Dense(3))
    with pytest.raises(ValueError, match="rate"):
        pruning.num_pruned(1.0, 8)
    variables = random_variables(model, SHAPE)
    bad_masks = [
        ({"decoder/classifier": np.ones(3, bool)}, "classifier"),
        ({"decoder/fuse1_conv": np.ones(7, bool)}, "shape"),
        ({"decoder/fuse1_conv": np.zeros(8, bool)}, "every filter"),
    ]
    for masks, match in bad_masks:
        with pytest.raises(ValueError, match=match):
            pruning.hard_prune(model, variables, masks)
    with pytest.raises(ValueError, match="batch_stats"):
        soft_prune({"params": variables["params"]}, pruning.pruning_plan(model))
    with pytest.raises(ValueError, match="pruning"):
        pruning.hard_prune(model, variables, 0.4)


def test_pruning_twice_composes_widths(rng):
    model = DAN(**TINY_DAN, feature_size=5)
    variables = _variables(model, rng)
    first_model, first_variables = pruning.hard_prune(
        model, variables, pruning.pruning_plan(model, RATES)
    )
    rates = pruning.PruningRates(layers=(("decoder/fuse1_conv", 0.5),))
    second_model, second_variables = pruning.hard_prune(
        first_model, first_variables, pruning.pruning_plan(first_model, rates)
    )
    widths = dict(second_model.widths)
    assert widths["decoder/fuse1_conv"] == 7 - _floor(0.5, 7)
    assert (
        widths["encoder/layer4_block0/conv1"]
        == dict(first_model.widths)["encoder/layer4_block0/conv1"]
    )
    # The second model's parameters have the shapes its widths imply.
    x = jax.ShapeDtypeStruct(SHAPE, jnp.float32)
    shapes = jax.eval_shape(second_model.init, jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, second_variables) == jax.tree.map(jnp.shape, shapes)
    assert second_variables["params"]["decoder"]["fuse2_conv"]["kernel"].shape == (3, 3, 4, 7)


def test_imported_reference_deeplab_layout_prunes_exactly(rng, deep_tiny_backbone):
    """The reference DeepLab v3+ repository's options (multi-grid, aligned corners, every
    block of a stage at its dilation) keep the layer graph: soft equals hard pruning."""
    model = DeepLabV3Plus(
        **{**TINY_DEEPLAB, "backbone": deep_tiny_backbone},
        align_corners=True,
        first_block_dilation="stage",
        multi_grid=(1, 2),
    )
    x = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
    variables = stack_blocks(_variables(model.clone(scan_blocks=False), rng))
    plan = pruning.pruning_plan(model, RATES)
    soft, masks = soft_prune(variables, plan)
    small_model, small_variables = pruning.hard_prune(model, soft, masks)
    assert small_model.multi_grid == (1, 2) and small_model.align_corners
    expected = _intermediate_logits(model, soft, x)
    actual = _intermediate_logits(small_model, small_variables, x)
    np.testing.assert_allclose(actual, expected, atol=TOLERANCE[jnp.float32], rtol=1e-5)


@pytest.mark.parametrize(
    "options",
    [dict(separable_aspp=True), dict(separable_decoder=True), dict(decoder_convs=1)],
)
def test_pruning_refuses_heads_it_does_not_know(options):
    model = DeepLabV3Plus(**TINY_DEEPLAB, **options)
    with pytest.raises(ValueError, match=f"the model sets {{'{next(iter(options))}'"):
        pruning.pruning_plan(model, RATES)


@pytest.mark.parametrize("head", ["deeplabv3", "fcn"])
def test_deeplabv3_and_fcn_heads_with_aux_head_prune_exactly(rng, head):
    """torchvision's DeepLab v3 and FCN layouts: the heads' 3x3 convolutions (main and
    auxiliary) are in the decoder group, and soft pruning equals hard pruning."""
    model = DeepLabV3Plus(**TINY_DEEPLAB, head=head, output_stride=8, aux_head=True)
    x = jnp.asarray(rng.normal(size=SHAPE), jnp.float32)
    variables = _variables(model, rng)
    plan = pruning.pruning_plan(model, RATES)
    paths = {conv.path for conv in plan.convs}
    assert {"decoder/hidden_conv", "aux_decoder/hidden_conv"} <= paths
    assert ("aspp/project_conv" in paths) == (head == "deeplabv3")
    soft, masks = soft_prune(variables, plan)
    small_model, small_variables = pruning.hard_prune(model, soft, masks)
    widths = dict(small_model.widths)
    hidden = 8 if head == "deeplabv3" else 32  # decoder_channels, or Cin / 4 for FCN
    assert widths["decoder/hidden_conv"] == hidden - _floor(0.2, hidden)
    assert widths["aux_decoder/hidden_conv"] == 16 - _floor(0.2, 16)
    apply = functools.partial(small_model.apply, method=small_model.intermediates)
    actual = jax.jit(apply)(small_variables, x)
    expected = jax.jit(functools.partial(model.apply, method=model.intermediates))(soft, x)
    for key in ("logits", "aux_logits"):
        np.testing.assert_allclose(
            actual[key], expected[key], atol=TOLERANCE[jnp.float32], rtol=1e-5
        )
