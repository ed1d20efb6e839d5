"""The spectral-Jacobian cases that ``bench_spectral_jacobian`` and ``accelerator_check`` time.

A case is ``kind:size[:option]`` (``"full:129:reverse"``, ``"band_energy:257:16"``, ...);
:func:`build_case` gives its jitted computation and arguments. Nothing here is timed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import spectral_jax as sj
from spectral_jax import probes

ROWS_PER_CASE = 32


def layer_input(size: int) -> tuple[jax.Array, jax.Array]:
    """``(x [size, size, 1], kernel [3, 3, 1, 1])``: the probe's input and 3x3 kernel (seed 0)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, size=(size, size, 1)), jnp.float32)
    kernel = jnp.asarray(0.3 * rng.normal(size=(3, 3, 1, 1)), jnp.float32)
    return x, kernel


def build_case(case: str, chunk_size: int) -> tuple[Callable, tuple[jax.Array, ...]]:
    """``(compute, args)`` of one case (``"full:129:reverse"``, ``"band_energy:257:16"``, ...).

    ``compute`` is jitted; ``compute(*args)`` is what the case times. The probe is the
    paper's layer on :func:`layer_input`'s ``x`` and kernel: a 3x3 circular conv +
    softplus on one channel. ``baseline`` has no computation and raises.
    """
    kind, size, *rest = case.split(":")
    x, kernel = layer_input(int(size))
    layer = functools.partial(probes.conv_activation, kernel=kernel, padding="circular")
    if kind == "full":
        mode = rest[0] if rest else "forward"
        compute = jax.jit(
            functools.partial(sj.spectral_jacobian, layer, chunk_size=chunk_size, mode=mode)
        )
        return compute, (x,)
    if kind == "naive":

        @jax.jit
        def compute(x):
            jac = jax.jacfwd(layer)(x)[..., 0, :, :, 0]  # [H, W, H, W] real
            return jnp.fft.ifftn(jnp.fft.fftn(jac, axes=(0, 1)), axes=(2, 3))

        return compute, (x,)
    if kind == "band_energy":
        chunk = int(rest[0]) if rest else chunk_size
        compute = jax.jit(
            functools.partial(sj.spectral_jacobian_band_energy, layer, chunk_size=chunk)
        )
        return compute, (x,)
    if kind == "rows":
        m = x.shape[0] * x.shape[1]
        nu_i = jnp.asarray(np.linspace(0, m - 1, ROWS_PER_CASE).astype(np.int32))
        compute = jax.jit(
            functools.partial(sj.spectral_jacobian_rows, layer, chunk_size=ROWS_PER_CASE)
        )
        return compute, (x, nu_i)
    raise ValueError(f"unknown case {case!r}")
