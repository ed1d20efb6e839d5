"""The paper's operations to probe with spectral Jacobians (Sec. 2.3, 3.1, Fig. 4).

Every function takes one map ``[H, W, C]`` (or a 1-D signal ``[L, C]``) without a batch
axis and returns one map, so that it can be passed to
:func:`spectral_jax.spectral_jacobian` directly: bind its parameters with
``functools.partial`` (its arrays are traced, so a partial re-created with a new kernel
compiles nothing) or write ``lambda params, x: conv(x, params["kernel"])`` and pass
``params=``. :class:`DecoderHead` is a Flax module on batches ``[B, H, W, C]``
with pure ``init``/``apply``; :func:`decoder_head_fn` turns it into such a function.

Convolutions are cross-correlations, as ``jax.lax.conv_general_dilated`` computes them:
``y[t] = sum_s k[s] x[t + s - p]`` with ``p = (K - 1) // 2`` (the ``"SAME"`` offset), so
with circular padding the spectrum is ``y_hat(nu) = conj(k_hat(nu)) x_hat(nu)`` for a
single channel, ``k_hat`` the DFT of the kernel placed at offsets ``s - p`` modulo the
grid (:func:`embedded_kernel`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Literal

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Padding = Literal["zero", "circular"]
Activation = Literal["relu", "softplus"]
_PADDINGS = ("zero", "circular")
_ACTIVATIONS = ("relu", "softplus")


def _check_map_and_kernel(x, kernel) -> int:
    if jnp.ndim(x) not in (2, 3):
        raise ValueError(f"x must have shape [H, W, Cin] or [L, Cin], got {jnp.shape(x)}.")
    spatial = jnp.ndim(x) - 1
    if jnp.ndim(kernel) != spatial + 2:
        raise ValueError(
            f"kernel must have shape [Kh, Kw, Cin, Cout] (or [K, Cin, Cout] in 1-D) for x of "
            f"shape {jnp.shape(x)}, got {jnp.shape(kernel)}."
        )
    if jnp.shape(kernel)[-2] != jnp.shape(x)[-1]:
        raise ValueError(
            f"kernel input channels {jnp.shape(kernel)[-2]} != x channels {jnp.shape(x)[-1]}."
        )
    return spatial


def conv(x: chex.Array, kernel: chex.Array, *, padding: Padding = "circular") -> jax.Array:
    """Stride-1 "same" cross-correlation with zero or circular padding.

    Args:
      x: ``[H, W, Cin]`` (or ``[L, Cin]``) map.
      kernel: ``[Kh, Kw, Cin, Cout]`` (or ``[K, Cin, Cout]``).
      padding: ``"zero"`` (``"SAME"``) or ``"circular"`` (periodic: the layer is
        diagonal in frequency).

    Returns:
      ``[H, W, Cout]`` (or ``[L, Cout]``).
    """
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}.")
    spatial = _check_map_and_kernel(x, kernel)
    sizes = jnp.shape(kernel)[:spatial]
    pads = [((k - 1) // 2, k // 2) for k in sizes]
    conv_padding: str | list[tuple[int, int]]
    if padding == "circular":
        x = jnp.pad(x, [*pads, (0, 0)], mode="wrap")
        conv_padding = "VALID"
    else:
        conv_padding = pads
    letters = "HW"[:spatial] if spatial == 2 else "H"
    numbers = (f"N{letters}C", f"{letters}IO", f"N{letters}C")
    y = jax.lax.conv_general_dilated(
        x[None],
        jnp.asarray(kernel, x.dtype),
        window_strides=(1,) * spatial,
        padding=conv_padding,
        dimension_numbers=numbers,
        precision=jax.lax.Precision.HIGHEST,
    )
    return y[0]


def embedded_kernel(kernel: chex.Array, shape: tuple[int, ...]) -> np.ndarray:
    """Kernel ``[Kh, Kw, Cin, Cout]`` placed on an ``H x W`` grid at offsets ``s - p``.

    With it, circular :func:`conv` of a map is ``ifft(conj(fft(k_emb)) * fft(x))``
    summed over input channels: the closed form that tests the spectral Jacobian.

    Args:
      kernel: ``[Kh, Kw, Cin, Cout]`` (or ``[K, Cin, Cout]``), concrete.
      shape: spatial grid ``(H, W)`` (or ``(L,)``), at least the kernel size.

    Returns:
      NumPy ``[H, W, Cin, Cout]`` (or ``[L, Cin, Cout]``).
    """
    kernel = np.asarray(kernel)
    spatial = len(shape)
    out = np.zeros((*shape, *kernel.shape[spatial:]), kernel.dtype)
    for offset in np.ndindex(*kernel.shape[:spatial]):
        target = tuple(
            (s - (k - 1) // 2) % n
            for s, k, n in zip(offset, kernel.shape[:spatial], shape, strict=True)
        )
        out[target] += kernel[offset]
    return out


def relu(x: chex.Array) -> jax.Array:
    """ReLU: diagonal in space, so its spectral Jacobian is ``F diag(x > 0) F^{-1}``."""
    return jax.nn.relu(x)


def softplus(x: chex.Array) -> jax.Array:
    """Softplus ``log(1 + e^x)``, the paper's activation in Eq. 9."""
    return jax.nn.softplus(x)


def conv_activation(
    x: chex.Array,
    kernel: chex.Array,
    *,
    activation: Activation = "softplus",
    padding: Padding = "circular",
) -> jax.Array:
    """A convolutional layer of Eq. 9: ``sigma(K conv X)``.

    Args:
      x, kernel, padding: as in :func:`conv`.
      activation: ``"softplus"`` (the paper's choice, Lemma 3) or ``"relu"``.

    Returns:
      ``[H, W, Cout]`` (or ``[L, Cout]``).
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}.")
    z = conv(x, kernel, padding=padding)
    return softplus(z) if activation == "softplus" else relu(z)


def upsample_bilinear(x: chex.Array, *, factor: int = 2) -> jax.Array:
    """Bilinear up-sampling by an integer factor (``jax.image.resize``, half-pixel centres).

    As DeepLab v3+'s decoder does (align_corners=False); at the borders the sample
    positions are clamped to the edge pixels.

    Args:
      x: ``[H, W, C]`` (or ``[L, C]``: linear interpolation).
      factor: static positive int (the paper uses 2 and 4).

    Returns:
      ``[factor H, factor W, C]`` (or ``[factor L, C]``).
    """
    if isinstance(factor, bool) or not isinstance(factor, int | np.integer) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}.")
    if jnp.ndim(x) not in (2, 3):
        raise ValueError(f"x must have shape [H, W, C] or [L, C], got {jnp.shape(x)}.")
    shape = tuple(n * factor for n in jnp.shape(x)[:-1]) + (jnp.shape(x)[-1],)
    return jax.image.resize(x, shape, method="linear", antialias=False)


class DecoderHead(nn.Module):
    """A small DeepLab v3+-style decoder head: ASPP features to up-sampled logits.

    ``1x1 conv -> ReLU -> 3x3 conv -> ReLU -> 1x1 conv (classes) -> bilinear x upsample``,
    zero padding, as DeepLab v3+ reduces the ASPP output, refines it and up-samples the
    logits (without the low-level skip connection, whose path differs by one bilinear
    up-sampling, Sec. 3.1).

    Attributes:
      num_classes: ``C``.
      features: channels of the hidden layers.
      upsample: integer up-sampling factor of the logits (DeepLab uses 4).
    """

    num_classes: int = 3
    features: int = 8
    upsample: int = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits ``[B, upsample H, upsample W, C]`` of features ``[B, H, W, Cin]``."""
        chex.assert_rank(x, 4)
        x = nn.relu(nn.Conv(self.features, (1, 1), name="reduce")(x))
        x = nn.relu(nn.Conv(self.features, (3, 3), padding="SAME", name="refine")(x))
        x = nn.Conv(self.num_classes, (1, 1), name="classify")(x)
        batch, height, width, channels = x.shape
        shape = (batch, height * self.upsample, width * self.upsample, channels)
        return jax.image.resize(x, shape, method="linear", antialias=False)


@functools.cache
def _decoder_head_apply(module: DecoderHead) -> Callable[[Any, jax.Array], jax.Array]:
    """``(variables, x) -> logits``; one function per (equal) module, for ``params=``."""

    def head(variables, x):
        return module.apply(variables, x[None])[0]

    return head


def decoder_head_fn(module: DecoderHead, variables=None) -> Callable:
    """The head applied to one map (no batch axis): ``x [H, W, Cin] -> logits [H', W', C]``.

    Args:
      module: the :class:`DecoderHead`.
      variables: its variables, bound into a closure ``head(x)``; None returns the
        parameter form ``head(variables, x)`` for the Jacobian functions' ``params=``
        argument (the same function for equal modules: new variables compile nothing).
    """
    if variables is None:
        return _decoder_head_apply(module)
    apply = _decoder_head_apply(module)
    return lambda x: apply(variables, x)


def init_decoder_head(
    key: chex.PRNGKey,
    in_shape: tuple[int, int, int],
    *,
    num_classes: int = 3,
    features: int = 8,
    upsample: int = 4,
):
    """Initialises a :class:`DecoderHead` for features ``[H, W, Cin]``.

    Returns:
      ``(module, variables)``; :func:`decoder_head_fn` binds them.
    """
    module = DecoderHead(num_classes=num_classes, features=features, upsample=upsample)
    variables = module.init(key, jnp.zeros((1, *in_shape), jnp.float32))
    return module, variables


def random_kernel(
    key: chex.PRNGKey, size: tuple[int, ...], channels: tuple[int, int] = (1, 1), *, scale=1.0
) -> jax.Array:
    """A Gaussian kernel ``[*size, Cin, Cout]`` with std ``scale / sqrt(prod(size) Cin)``."""
    fan_in = math.prod(size) * channels[0]
    return scale * jax.random.normal(key, (*size, *channels)) / math.sqrt(fan_in)
