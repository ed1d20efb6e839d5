"""FLOPs of Flax models: XLA's compiled cost analysis and an analytic count of convolutions.

Conventions. XLA's ``cost_analysis()["flops"]`` counts a multiply-add as 2 FLOPs. The
paper's "FLOPs" (DeepLab v3+ ResNet-101 at 513 x 513: 139 G) behave like
multiply-accumulates (MACs), so :class:`FlopCount` reports both, with
``macs = flops / 2``. XLA counts only the kernel taps that land inside the (unpadded)
input; :class:`ConvLayer` gives that count (``macs``) and the usual counters' dense
count (``dense_macs``, every tap at every output position, as if the padding were
data), which is larger for small maps.

Loops. XLA's cost analysis counts the body of a loop once, whatever its trip count, so
:func:`count_flops` counts a model with a ``scan_blocks`` attribute (the ResNet
backbones, whose identical blocks run under ``nn.scan``) in its unrolled form, which
computes the same function; :func:`conv_layers` repeats the convolutions of a ``scan``
body once per iteration.

Nothing here runs the model: shapes come from ``jax.eval_shape`` and the program from
``jax.jit(...).lower(...)``, so no parameters are allocated. Compiling a full-size model
on the CPU takes minutes; the tests use the tiny variants.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class FlopCount:
    """XLA's FLOP count of one compiled call.

    Attributes:
      flops: ``cost_analysis()["flops"]`` (a multiply-add counts 2).
    """

    flops: float

    @property
    def macs(self) -> float:
        """Multiply-accumulates, the paper's "FLOPs": ``flops / 2``."""
        return self.flops / 2


def _abstract_call(
    model: nn.Module, input_shape: Sequence[int], method: str | Callable | None, dtype
) -> tuple[Callable, Any, jax.ShapeDtypeStruct]:
    x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    apply = functools.partial(model.apply, method=method)
    return apply, variables, x


def _xla_flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    # jax 0.10 returns a dict; older versions returned a one-element list of dicts.
    if isinstance(analysis, list | tuple):
        analysis = analysis[0]
    return float(analysis.get("flops", 0.0))


def count_flops(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    method: str | Callable | None = None,
    dtype=jnp.float32,
) -> FlopCount:
    """FLOPs of ``model.apply(variables, x, method=method)`` in inference mode, from XLA.

    The call is lowered and compiled for abstract inputs and XLA's cost analysis read
    from the compiled executable. A model with ``scan_blocks=True`` is counted as its
    clone with ``scan_blocks=False`` (module docstring: XLA counts a loop body once). For DeepLab v3+, ``method="encode"`` counts the
    encoder (backbone and ASPP); the decoder is the total minus the encoder.

    Args:
      model: a Flax linen module.
      input_shape: ``[B, H, W, 3]``; static.
      method: passed to ``apply`` (``None`` for ``__call__``).
      dtype: input dtype.

    Returns:
      :class:`FlopCount` (``.flops`` as XLA counts, ``.macs`` as the paper counts).

    Example:
      >>> import flax.linen as nn
      >>> conv = nn.Conv(features=4, kernel_size=(3, 3), padding="VALID", use_bias=False)
      >>> count_flops(conv, (1, 8, 8, 2)).macs  # 6 x 6 outputs, 4 features, 3 x 3 x 2 taps
      2592.0
    """
    if getattr(model, "scan_blocks", False):
        model = model.clone(scan_blocks=False)
    apply, variables, x = _abstract_call(model, input_shape, method, dtype)
    return FlopCount(_xla_flops(jax.jit(apply).lower(variables, x).compile()))


def _valid_taps(
    in_size: int, out_size: int, kernel: int, stride: int, pad_low: int, dilation: int
) -> int:
    """Number of (output position, kernel tap) pairs whose input index lies in the input."""
    return sum(
        0 <= o * stride - pad_low + k * dilation < in_size
        for o in range(out_size)
        for k in range(kernel)
    )


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One ``conv_general_dilated`` of a traced program, with its analytic MAC counts.

    Attributes:
      lhs_shape: input shape, e.g. ``[B, H, W, Cin]``.
      kernel_shape: kernel shape, e.g. ``[Kh, Kw, Cin, Cout]``.
      out_shape: output shape, e.g. ``[B, Ho, Wo, Cout]``.
      macs: ``B * Cout * Cin / groups * prod_axes(valid taps)``, the taps that land inside
        the unpadded input (what XLA counts).
      dense_macs: ``B * Ho * Wo * Cout * Kh * Kw * Cin / groups``, every tap counted.
      params: the primitive's parameters (to recompile the layer alone).
    """

    lhs_shape: tuple[int, ...]
    kernel_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    macs: int
    dense_macs: int
    params: dict = dataclasses.field(repr=False, compare=False)
    dtype: Any = jnp.float32

    def xla_flops(self) -> float:
        """XLA's cost analysis of this convolution compiled on its own."""
        conv = functools.partial(jax.lax.conv_general_dilated_p.bind, **self.params)
        lhs = jax.ShapeDtypeStruct(self.lhs_shape, self.dtype)
        rhs = jax.ShapeDtypeStruct(self.kernel_shape, self.dtype)
        return _xla_flops(jax.jit(conv).lower(lhs, rhs).compile())


def _conv_layer(eqn) -> ConvLayer:
    params = dict(eqn.params)
    lhs, rhs = (v.aval for v in eqn.invars)
    out = eqn.outvars[0].aval
    numbers = params["dimension_numbers"]
    if any(d != 1 for d in params["lhs_dilation"]) or params["batch_group_count"] != 1:
        raise NotImplementedError("transposed or batch-grouped convolutions are not counted.")
    batch = lhs.shape[numbers.lhs_spec[0]]
    cin_per_group = rhs.shape[numbers.rhs_spec[1]]
    cout = rhs.shape[numbers.rhs_spec[0]]
    valid = dense = batch * cout * cin_per_group
    for axis, (stride, (pad_low, _), dilation) in enumerate(
        zip(params["window_strides"], params["padding"], params["rhs_dilation"], strict=True)
    ):
        in_size = lhs.shape[numbers.lhs_spec[2 + axis]]
        kernel = rhs.shape[numbers.rhs_spec[2 + axis]]
        out_size = out.shape[numbers.out_spec[2 + axis]]
        valid *= _valid_taps(in_size, out_size, kernel, stride, pad_low, dilation)
        dense *= out_size * kernel
    return ConvLayer(
        tuple(lhs.shape), tuple(rhs.shape), tuple(out.shape), valid, dense, params, lhs.dtype
    )


def _sub_jaxprs(value):
    if hasattr(value, "eqns"):
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
        yield value.jaxpr
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _sub_jaxprs(item)


def _walk(jaxpr) -> list[ConvLayer]:
    layers = []
    for eqn in jaxpr.eqns:
        if eqn.primitive is jax.lax.conv_general_dilated_p:
            layers.append(_conv_layer(eqn))
        elif eqn.primitive.name == "scan":
            # The body runs `length` times, the same convolutions each time.
            layers.extend(_walk(eqn.params["jaxpr"].jaxpr) * eqn.params["length"])
            continue
        elif eqn.primitive.name == "while":
            # Its trip count is not static.
            raise NotImplementedError("cannot count convolutions inside a while loop.")
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                layers.extend(_walk(sub))
    return layers


def conv_layers(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    method: str | Callable | None = None,
    dtype=jnp.float32,
) -> list[ConvLayer]:
    """Every convolution that ``model.apply(..., method=method)`` runs, in program order.

    The convolutions of a ``scan`` body (stacked ResNet blocks) appear once per
    iteration, as the unrolled model runs them.

    Args:
      model: a Flax linen module.
      input_shape: ``[B, H, W, 3]``; static.
      method: passed to ``apply``.
      dtype: input dtype.

    Returns:
      A list of :class:`ConvLayer`; ``sum(layer.macs)`` is the analytic convolution count
      in XLA's convention, ``sum(layer.dense_macs)`` the dense one.
    """
    apply, variables, x = _abstract_call(model, input_shape, method, dtype)
    return _walk(jax.make_jaxpr(apply)(variables, x).jaxpr)


def conv_macs(layers: Sequence[ConvLayer], *, dense: bool = False) -> int:
    """Total multiply-accumulates of ``layers`` (valid taps, or every tap if ``dense``)."""
    return sum(layer.dense_macs if dense else layer.macs for layer in layers)


def flops_per_iou(flops: float, mean_iou: float) -> float:
    """FLOPs per IoU score (the paper's FPI, Sec. 3.2): ``flops / mean_iou``.

    Lower is more efficient. The paper divides its "FLOPs" (Table 2: 139e9 for DeepLab
    v3+ at 513 x 513) by the mIoU as a fraction (0.786), giving 177e9.

    Args:
      flops: the model's cost in any unit (FLOPs or MACs; the result has the same unit).
      mean_iou: mIoU as a fraction in (0, 1].

    Raises:
      ValueError: for a negative cost or an mIoU outside (0, 1] (a percentage, e.g. 78.6,
        is rejected rather than silently giving a 100x smaller FPI).
    """
    if not flops >= 0:
        raise ValueError(f"flops must be non-negative, got {flops!r}.")
    if not 0 < mean_iou <= 1:
        raise ValueError(f"mean_iou must be a fraction in (0, 1], got {mean_iou!r}.")
    return flops / mean_iou
