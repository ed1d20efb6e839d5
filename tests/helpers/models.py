"""Helpers shared by the model tests: tiny settings and variables from shapes alone."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._variables import random_variables as random_variables
from spectral_jax.models import DAN, DeepLabV3Plus

TINY_DEEPLAB = dict(
    num_classes=3,
    backbone="resnet_tiny",
    aspp_channels=8,
    low_level_channels=4,
    decoder_channels=8,
    dropout_rate=0.0,
)
TINY_DAN = dict(
    num_classes=3,
    backbone="resnet_tiny",
    aspp_channels=8,
    projection_channels=4,
    decoder_channels=8,
    dropout_rate=0.0,
)


# A backbone with more than one block per stage, so that stages have stacked blocks
# (spectral_jax.models.resnet); register it with the `deep_tiny_backbone` fixture.
DEEP_TINY_BACKBONE = "resnet_tiny_deep"
DEEP_TINY_STAGES = (2, 3, 2, 2)


def num_params(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def tiny_variables(model_class: type) -> dict:
    """Random variables (:func:`random_variables`) of the tiny ``DeepLabV3Plus`` or ``DAN``.

    Parameter shapes depend neither on the feature size, the resampling method nor the
    output stride, so one set of variables serves every tiny model of the class.
    """
    settings = {DeepLabV3Plus: TINY_DEEPLAB, DAN: TINY_DAN}[model_class]
    return random_variables(model_class(**settings), (2, 33, 33, 3))


@functools.cache
def full_size_shapes(model_class: type) -> dict:
    """The variables' shapes (``jax.ShapeDtypeStruct``) of ``model_class()`` at 513 x 513."""
    x = jax.ShapeDtypeStruct((1, 513, 513, 3), jnp.float32)
    return jax.eval_shape(model_class().init, jax.random.key(0), x)
