"""Tests for spectral_jax.models.resnet: shapes, parameter counts, dilation, BatchNorm.

Full-size backbones are checked with ``jax.eval_shape`` only (no compilation); the
parameter counts are torchvision's ResNet-50/101 without the classifier
(25,557,032 - 2,049,000 and 44,549,160 - 2,049,000).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.models import resnet as resnet_lib  # the module
from tests.helpers.models import num_params, random_variables


@pytest.mark.parametrize("name, expected", [("resnet50", 23_508_032), ("resnet101", 42_500_160)])
def test_parameter_counts_match_torchvision(name, expected):
    model = resnet_lib.create_resnet(name)
    x = jax.ShapeDtypeStruct((1, 65, 65, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert num_params(variables["params"]) == expected


@pytest.mark.parametrize("output_stride, high_size", [(8, 65), (16, 33), (32, 17)])
def test_full_size_shapes_at_513(output_stride, high_size):
    model = resnet_lib.create_resnet("resnet101", output_stride=output_stride)
    x = jax.ShapeDtypeStruct((2, 513, 513, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    low, high = jax.eval_shape(model.apply, variables, x)
    assert low.shape == (2, 129, 129, 256)
    assert high.shape == (2, high_size, high_size, 2048)


def test_stage_dilations():
    assert resnet_lib.stage_dilations(16) == ((1, 1), (2, 1), (2, 1), (1, 2))
    assert resnet_lib.stage_dilations(8) == ((1, 1), (2, 1), (1, 2), (1, 4))
    with pytest.raises(ValueError, match="output_stride"):
        resnet_lib.stage_dilations(4)


@pytest.mark.parametrize("scan_blocks", [False, True])
def test_first_block_of_dilated_stage_keeps_previous_dilation(scan_blocks):
    # torchvision's replace_stride_with_dilation: at stride 8, layer3 is (1, 2, 2, ...)
    # and layer4 is (2, 4, 4).
    model = resnet_lib.create_resnet("resnet50", output_stride=8, scan_blocks=scan_blocks)
    x = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32)
    dilations = {}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, resnet_lib.Bottleneck) and context.method_name == "__call__":
            dilations[module.name] = module.dilation
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(model.init, jax.random.key(0), x)
    if scan_blocks:  # the stacked blocks after the first share one module
        expected = {"layer2_block0": 1, "layer2_blocks": 1, "layer3_block0": 1}
        expected |= {"layer3_blocks": 2, "layer4_block0": 2, "layer4_blocks": 4}
        assert {k: v for k, v in dilations.items() if k[5] != "1"} == expected
        return
    assert [dilations[f"layer3_block{i}"] for i in range(6)] == [1, 2, 2, 2, 2, 2]
    assert [dilations[f"layer4_block{i}"] for i in range(3)] == [2, 4, 4]
    assert [dilations[f"layer2_block{i}"] for i in range(4)] == [1, 1, 1, 1]


@pytest.mark.parametrize("output_stride, size", [(8, 33), (16, 32), (32, 33)])
def test_tiny_forward_shapes_and_batch_norm(rng, output_stride, size):
    model = resnet_lib.create_resnet("resnet_tiny", output_stride=output_stride)
    x = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
    variables = random_variables(resnet_lib.create_resnet("resnet_tiny"), x.shape)
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    (low, high), updates = apply(variables, x, train=True, mutable=("batch_stats",))
    low_size = math.ceil(math.ceil(size / 2) / 2)
    high_size = math.ceil(size / output_stride)
    assert low.shape == (2, low_size, low_size, 16)
    assert high.shape == (2, high_size, high_size, 128)
    assert np.isfinite(np.asarray(high)).all()
    # Training updates the running statistics.
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_unknown_backbone_raises():
    with pytest.raises(ValueError, match="backbone"):
        resnet_lib.create_resnet("resnet18")
