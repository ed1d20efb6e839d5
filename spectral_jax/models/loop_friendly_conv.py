"""A convolution whose gradient runs at full speed inside loops on the CPU.

XLA:CPU runs the native gradient convolutions many times slower inside a while loop
(the body of an ``nn.scan``) than outside it, the kernel gradient most.
:func:`loop_friendly_conv_general_dilated` is ``lax.conv_general_dilated`` with a custom
VJP that, on the CPU, computes the input gradient as a forward convolution with the
flipped kernel and the kernel gradient as matrix products; other platforms keep the
native gradient. The stacked ResNet blocks (:mod:`spectral_jax.models.resnet`) use it
through ``nn.Conv(conv_general_dilated=...)``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["loop_friendly_conv_general_dilated"]

_NHWC = ("NHWC", "HWIO", "NHWC")


def _stride_one_conv(x, kernel, padding, dilation, precision):
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        padding,
        rhs_dilation=dilation,
        dimension_numbers=_NHWC,
        precision=precision,
    )


def _forward_style_gradients(x, kernel, dy, padding, dilation, precision):
    r"""Gradients of a stride-1 NHWC convolution, written as a forward convolution and a
    matrix product.

    .. math::

       \partial x = \partial y \star \operatorname{flip}(W)^{\top}, \qquad
       \partial W[a, b, i, o] = \sum_{n, h, w} \bar x[n, h + d a, w + d b, i]\,
       \partial y[n, h, w, o]

    with the transposed convolution's padding ``d (K - 1) - p`` and ``\bar x`` the input
    padded by ``p``.
    """
    kh, kw, cin, cout = kernel.shape
    transposed_padding = tuple(
        (d * (k - 1) - low, d * (k - 1) - high)
        for k, d, (low, high) in zip((kh, kw), dilation, padding, strict=True)
    )
    flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)  # [Kh, Kw, Cout, Cin]
    dx = _stride_one_conv(dy, flipped, transposed_padding, dilation, precision)
    # The kernel gradient tap by tap: the padded input shifted by the tap, against dy.
    # (lax.conv_general_dilated_patches would be a convolution with an identity kernel,
    # Kh Kw Cin times the work of the layer.)
    _, height, width, _ = dy.shape
    padded = jax.lax.pad(
        x, jnp.zeros((), x.dtype), ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0))
    )
    taps = [
        [
            jnp.einsum(
                "nhwi,nhwo->io",
                padded[
                    :,
                    a * dilation[0] : a * dilation[0] + height,
                    b * dilation[1] : b * dilation[1] + width,
                ],
                dy,
                precision=precision,
            )
            for b in range(kw)
        ]
        for a in range(kh)
    ]
    dkernel = jnp.stack([jnp.stack(row) for row in taps])  # [Kh, Kw, Cin, Cout]
    return dx, dkernel.astype(kernel.dtype)


#: Which gradient :func:`_loop_friendly_conv`'s VJP takes: None chooses by platform
#: (the forward-style gradient on the CPU, the native one elsewhere); ``"native"`` or
#: ``"forward_style"`` forces one on every platform. For tests only: the native branch
#: is what every GPU and TPU user trains with, and it never runs on a CPU otherwise.
#: Read when a function is traced (a jitted function keeps the branch it was traced with).
_FORCED_GRADIENT: str | None = None


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _loop_friendly_conv(x, kernel, padding, dilation, precision):
    return _stride_one_conv(x, kernel, padding, dilation, precision)


def _loop_friendly_conv_forward(x, kernel, padding, dilation, precision):
    return _stride_one_conv(x, kernel, padding, dilation, precision), (x, kernel)


def _loop_friendly_conv_backward(padding, dilation, precision, residuals, dy):
    x, kernel = residuals

    def native(x, kernel, dy):
        _, vjp = jax.vjp(
            lambda x, kernel: _stride_one_conv(x, kernel, padding, dilation, precision), x, kernel
        )
        return vjp(dy)

    def forward_style(x, kernel, dy):
        return _forward_style_gradients(x, kernel, dy, padding, dilation, precision)

    # XLA:CPU runs the native gradient convolutions many times slower inside a while
    # loop (an `nn.scan` body) than outside it, the kernel gradient most (measured 22x
    # for 22 stacked 3x3 convolutions; benchmarks/README.md); as a forward convolution
    # and a matrix product they run at full speed there. Other platforms keep theirs.
    if _FORCED_GRADIENT is not None:
        return {"native": native, "forward_style": forward_style}[_FORCED_GRADIENT](x, kernel, dy)
    return jax.lax.platform_dependent(x, kernel, dy, cpu=forward_style, default=native)


_loop_friendly_conv.defvjp(_loop_friendly_conv_forward, _loop_friendly_conv_backward)


def loop_friendly_conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """``lax.conv_general_dilated`` whose gradient runs fast inside loops on the CPU.

    Stride-1, undilated-input, ungrouped NHWC/HWIO convolutions (every convolution of
    the stacked bottlenecks) get a custom VJP that, on the CPU,
    computes the input gradient as a forward convolution with the flipped kernel and
    the kernel gradient as a product of the input's patches with the output gradient
    (:func:`_forward_style_gradients`); on other platforms the native gradient. The
    values are those of ``lax.conv_general_dilated`` (float32 rounding aside); anything
    else is passed to it unchanged. For ``nn.Conv(conv_general_dilated=...)``.
    """
    nhwc = jax.lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), _NHWC)
    simple = (
        jnp.ndim(lhs) == 4
        and tuple(window_strides) == (1, 1)
        and (lhs_dilation is None or tuple(lhs_dilation) == (1, 1))
        and feature_group_count == 1
        and batch_group_count == 1
        and preferred_element_type is None
        and jax.lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), dimension_numbers)
        == nhwc
    )
    if not simple:
        return jax.lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    dilation = (1, 1) if rhs_dilation is None else tuple(int(d) for d in rhs_dilation)
    if isinstance(padding, str):  # "SAME" or "VALID" (nn.Conv's default is "SAME")
        window = [d * (k - 1) + 1 for d, k in zip(dilation, jnp.shape(rhs)[:2], strict=True)]
        padding = jax.lax.padtype_to_pads(jnp.shape(lhs)[1:3], window, (1, 1), padding)
    padding = tuple((int(low), int(high)) for low, high in padding)
    return _loop_friendly_conv(lhs, rhs, padding, dilation, precision)
