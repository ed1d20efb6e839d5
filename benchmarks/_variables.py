"""Random variables of a Flax model from its shapes only (shared by the benchmarks and the
test helpers)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def random_variables(model, shape: tuple[int, ...], seed: int = 0) -> Any:
    """He-normal kernels, zero biases, identity BatchNorm, for input ``shape`` (float32).

    ``model.init`` compiles the random initialisers and a forward pass (seconds on the
    CPU); filling ``jax.eval_shape``'s shapes with NumPy draws takes milliseconds.
    """
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(size=leaf.shape) * np.sqrt(2 / fan_in), leaf.dtype)
        # From NumPy: jnp.ones and jnp.zeros would compile one program per shape.
        if name in ("scale", "var"):
            return jnp.asarray(np.ones(leaf.shape), leaf.dtype)
        return jnp.asarray(np.zeros(leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)
