r"""Exact spectral Jacobians of real functions of feature maps (main paper, Sec. 2.3, 3.1).

For a real function ``fn`` of a feature map ``x`` (``[H, W, Cin]``, or ``[L, Cin]`` for
1-D signals) returning ``y = fn(x)`` (``[H', W', Cout]``, or ``[L', Cout]``), with ``A``
its real Jacobian at ``x``, the *spectral Jacobian* is the complex-linear map between
the spectra ``x_hat = DFT(x)`` and ``y_hat = DFT(y)``:

.. math::

   J = F_{out}\, (v^\top \otimes I)\, A\, (I \otimes u)\, F_{in}^{-1}, \qquad
   J[\nu_i, \nu_j] = \frac{\partial \hat y(\nu_i)}{\partial \hat x(\nu_j)},

where ``F`` is the unnormalised forward DFT over the spatial axes
(``F[nu, t] = exp(-2 pi i <nu, t / N>)``, ``jnp.fft.fftn``) and ``F^{-1} = F^H / N``.
Channels are contracted with projection vectors: the input direction perturbs every
input channel ``c`` by ``u[c]`` times the same spatial pattern, and the output spectrum
is ``sum_c v[c] y_hat(., c)``. ``u`` and ``v`` default to all ones (for single-channel
maps this is the plain Jacobian); one-hot ``u = e_cin``, ``v = e_cout`` give the
``(cout, cin)`` block. ``M_in = H W`` and ``M_out = H' W'`` frequencies are flattened in
C order of the DFT (unshifted) layout: index ``j = kh * W + kw`` is the frequency
``(kh, kw)`` (``np.ravel_multi_index``); in 1-D, ``j = k``.

**Complex directions through a real function.** ``F_in^{-1} e_j`` is complex while ``fn``
is real. ``A`` is real-linear, so its complex-linear extension is
``A (a + i b) = A a + i A b``: column ``j`` is ``F_out (A a_j + i A b_j)`` with the two real
directions ``a_j = cos(theta_j) / N``, ``b_j = sin(theta_j) / N``,
``theta_j(t) = 2 pi <nu_j, t / N>``, pushed forward by ``jax.jvp`` (``jax.linearize``
once, then ``vmap`` over chunks of directions). **Rows** go backwards: row ``i`` is
``g_i (I \otimes u) F_in^{-1}`` with the complex row ``g_i = F_out[i, :] A
= cos(theta_i)^T A - i sin(theta_i)^T A``, two real pullbacks (``jax.vjp``) with the
cotangents ``cos(theta_i)`` and ``sin(theta_i)``; then
``J[i, j] = (1 / N) sum_t q(t) exp(+i theta_j(t))`` with ``q = g_i u``, which is
``ifftn(q)[j]``.

**Chunking.** Whole matrices are built by one ``jax.lax.scan`` over chunks of
``chunk_size`` basis directions (columns, ``mode="forward"``) or output frequencies
(rows, ``mode="reverse"``), each chunk ``vmap``-ed and written in place into the
preallocated result: one compiled loop body, memory ``~ chunk_size x (map size)`` beyond
the result, never one graph with ``M`` directions. Rows and columns at given indices use
``jax.lax.map(..., batch_size=chunk_size)``.

**Parameters are arguments.** Every Jacobian function takes the function in two forms:
``fn(x)`` (a closure or a ``functools.partial``) or, with ``params=``, ``fn(params, x)``
with ``params`` any pytree of arrays (a Flax model's variables, a kernel), differentiated
at ``x`` only. ``batched=True`` takes a batch ``x [B, ...]`` (and ``labels [B, ...]``)
and maps the computation over it with ``jax.vmap`` in one compiled program, the
parameters shared; the result gets a leading ``B`` axis.

**Inputs as users hold them.** ``x`` (``features``), ``labels``, the projections,
``params`` and the arrays of a ``functools.partial`` may be JAX or NumPy arrays or CPU
PyTorch tensors (read through ``__array__`` or ``__dlpack__``). ``data_format="CHW"``
states channels-first maps: ``fn`` then maps ``[Cin, H, W]`` to ``[Cout, H', W']`` and
the axis is moved inside the compiled program (the frequencies, and so the result, are
those of the channels-last map). An unbatched map ``[a, b, c]`` with ``a`` smaller than
both ``b`` and ``c`` is refused unless ``data_format`` is stated: it is most likely
``[Cin, H, W]``, which would silently be read with ``H = Cin``.

**Compilation.** Every public function checks its arguments in Python (concrete
frequency indices and labels by value) and then runs one module-level ``jax.jit``. What
is static: the function ``fn`` itself (for ``fn(params, x)``, or a plain ``fn(x)``,
keyed by ``hash`` and ``==``: a function by identity), the shape-setting settings
(``chunk_size``, ``mode``, ``radius``, ``ignore_index``, ``batched``) and the shapes.
What is traced: ``params``, the arrays, and the array arguments of a
``functools.partial``, which is opened into its function (static), its non-array
arguments (static: strings and Python numbers may set shapes) and its arrays (traced).
So new weights of the same structure, passed as ``params`` or in a re-created
``partial(conv, kernel=new_kernel)``, compile nothing: a repeated eager call costs what a
call jitted by the caller costs (``benchmarks/bench_jacobian_params.py``). A *new
closure* (a ``lambda`` defined again, a function closing over new weights) is a new
static ``fn`` and compiles again: pass the weights as ``params`` instead. Under the
caller's ``jit``, ``vmap`` or ``grad`` the inner ``jit`` is inlined. An unhashable ``fn``
(or a partial with unhashable non-array arguments) cannot be static: it is run without
the inner ``jit`` (as eager JAX, compiling op by op).

Frequency indices must be concrete to be range-checked; traced indices are not checked
(an out-of-range index then wraps: index ``j`` is the frequency ``j mod M``, the
DFT being periodic; a negative index counts from the end).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import _checks
from spectral_jax import bands as bands_lib
from spectral_jax import frequencies as frequencies_lib
from spectral_jax._checks import IGNORE_INDEX
from spectral_jax.loss_spectrum import (
    DEFAULT_IGNORE_MODE,
    IgnoreMode,
    ce_spectrum,
)

Mode = Literal["forward", "reverse"]
#: Layout of one map: channels last (``"HWC"``, Flax's) or first (``"CHW"``, PyTorch's).
MapFormat = Literal["HWC", "CHW"]
_MODES = ("forward", "reverse")


# ---------------------------------------------------------------------------------------
# Checks.


def _check_x(x, name: str = "x") -> None:
    dtype = jnp.result_type(x)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(
            f"{name} must be a real floating array (the spectral Jacobian is defined for "
            f"real feature maps), got complex dtype {dtype}."
        )
    _checks.check_floating(x, name)
    if jnp.ndim(x) not in (2, 3):
        raise ValueError(
            f"{name} must have shape [H, W, Cin] or [L, Cin] (one map, no batch axis), "
            f"got shape {jnp.shape(x)}."
        )
    if any(n < 1 for n in jnp.shape(x)):
        raise ValueError(f"{name} must have non-empty axes, got shape {jnp.shape(x)}.")


def _as_compute_dtype(x) -> jax.Array:
    """``x`` in the dtype of the computation: float64 stays, anything else is float32."""
    return jnp.asarray(x, _checks.compute_dtype(jnp.result_type(x)))


def _is_hashable(fn) -> bool:
    try:
        hash(fn)
    except TypeError:
        return False
    return True


# ---------------------------------------------------------------------------------------
# What of a function is static and what is traced.


def _is_array(leaf) -> bool:
    return isinstance(leaf, jax.Array | np.ndarray)


@dataclasses.dataclass(frozen=True)
class _StaticFunction:
    """The static part of ``fn``: the compiled computation is keyed on it.

    ``function`` is ``fn`` itself or, for a ``functools.partial``, the function it wraps;
    the partial's array arguments (leaves of its ``args`` and ``keywords``) are traced,
    its other arguments (strings, Python numbers: settings that may set a shape) are
    static in ``static_leaves``. :meth:`__call__` calls
    ``function(*args, [params,] x, **keywords)`` with the arguments rebuilt. For a
    function of channels-first maps (``data_format="CHW"``) it takes and returns
    channels-last maps, moving the axis on the way in and out, so that the computation
    only ever sees ``[H, W, C]``.

    Attributes:
      function: the user's function, or the function a partial wraps.
      takes_params: ``fn(params, x)`` (a ``params=`` argument was given) or ``fn(x)``.
      treedef: tree of the partial's ``(args, keywords)`` (empty for a plain function).
      static_leaves: ``((position, value), ...)`` the partial's non-array leaves.
      channels_first: ``fn`` maps ``[C, H, W]`` to ``[C', H', W']``.
    """

    function: Callable
    takes_params: bool
    treedef: Any
    static_leaves: tuple[tuple[int, Any], ...]
    channels_first: bool = False

    def __call__(self, traced, x):
        """``fn(x)`` or ``fn(params, x)`` from ``traced = (partial_arrays, params)``."""
        partial_arrays, params = traced
        static, arrays = dict(self.static_leaves), iter(partial_arrays)
        leaves = [
            static[i] if i in static else next(arrays) for i in range(self.treedef.num_leaves)
        ]
        args, keywords = jax.tree.unflatten(self.treedef, leaves)
        if self.channels_first:
            x = jnp.moveaxis(x, -1, 0)  # [H, W, C] -> [C, H, W]
        if self.takes_params:
            out = self.function(*args, params, x, **keywords)
        else:
            out = self.function(*args, x, **keywords)
        return jnp.moveaxis(out, 0, -1) if self.channels_first else out  # [H', W', C']

    def map_to_channels_last(self, x):
        """One map as :meth:`__call__` takes it: ``[C, H, W]`` moved to ``[H, W, C]``."""
        return jnp.moveaxis(x, 0, -1) if self.channels_first else x


_NO_ARGUMENTS = jax.tree.structure(((), {}))


def _read_arrays(tree, name: str):
    """``tree`` with its array-likes (CPU PyTorch tensors) read as arrays (``as_array``)."""
    return jax.tree.map(lambda leaf: _checks.as_array(leaf, name), tree)


def _split_function(
    fn, params, takes_params: bool, channels_first: bool = False
) -> tuple[_StaticFunction, Any]:
    """``(static, traced)`` with ``static(traced, x)`` equal to ``fn([params,] x)``.

    A ``functools.partial`` is opened: its function and non-array arguments are static,
    its arrays traced, so that a partial re-created with new array values (new weights)
    is the same static function and compiles nothing new. Any other ``fn`` is static as
    it is (hashed by identity for a plain function). A partial whose non-array
    arguments are unhashable stays whole. Array-likes (CPU PyTorch tensors) in
    ``params`` or in the partial's arguments are read as arrays first.
    """
    params = _read_arrays(params, "params")
    if isinstance(fn, functools.partial):
        leaves, treedef = jax.tree.flatten(_read_arrays((fn.args, fn.keywords), "fn"))
        static_leaves = tuple((i, leaf) for i, leaf in enumerate(leaves) if not _is_array(leaf))
        arrays = tuple(leaf for leaf in leaves if _is_array(leaf))
        static = _StaticFunction(fn.func, takes_params, treedef, static_leaves, channels_first)
        if _is_hashable(static):
            return static, (arrays, params)
    return _StaticFunction(fn, takes_params, _NO_ARGUMENTS, (), channels_first), ((), params)


def _struct(x) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))


@functools.lru_cache(maxsize=256)
def _cached_eval_shape(static: _StaticFunction, traced_treedef, traced_structs, x):
    traced = jax.tree.unflatten(traced_treedef, traced_structs)
    return jax.eval_shape(static, traced, x)


def _output_of(static: _StaticFunction, traced, x):
    """``jax.eval_shape`` of ``static(traced, x)`` at ``x`` in the compute dtype.

    Cached per static function and the shapes and dtypes of ``traced`` and ``x``, for a
    hashable ``static``: tracing ``fn`` on every eager call would cost more than the rows
    of a small Jacobian. Errors are not cached.
    """
    struct = jax.ShapeDtypeStruct(jnp.shape(x), _checks.compute_dtype(jnp.result_type(x)))
    leaves, treedef = jax.tree.flatten(traced)
    if _is_hashable(static):
        return _cached_eval_shape(static, treedef, tuple(map(_struct, leaves)), struct)
    return jax.eval_shape(static, traced, struct)


def _check_output(static, traced, x, *, fn_name: str = "fn", x_name: str = "x"):
    """Returns the output shape of ``fn(x)`` after checking its structure and dtype."""
    try:
        out = _output_of(static, traced, x)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{fn_name} could not be evaluated on {x_name} of shape {jnp.shape(x)}: {error}"
        ) from error
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            f"{fn_name} must return a single array, got {jax.tree.structure(out)} "
            f"for {x_name} of shape {jnp.shape(x)}."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            f"{fn_name} must return a real floating array, got dtype {out.dtype} "
            "(complex outputs are not supported: pass a real function)."
        )
    if len(out.shape) != jnp.ndim(x):
        raise ValueError(
            f"{fn_name} must map one map to one map with the same spatial rank: "
            f"{x_name} of shape {jnp.shape(x)} ([H, W, Cin] or [L, Cin]) gave shape "
            f"{out.shape}; expected [H', W', Cout] or [L', Cout] (did {fn_name} add or "
            "drop a batch axis?)."
        )
    return out.shape


def _check_projection(projection, size: int, name: str) -> None:
    if projection is None:
        return
    if jnp.iscomplexobj(projection):
        raise TypeError(f"{name} must be real, got dtype {jnp.result_type(projection)}.")
    if jnp.shape(projection) != (size,):
        raise ValueError(
            f"{name} must have shape [{size}] (one weight per channel), got shape "
            f"{jnp.shape(projection)}."
        )


def _projection_or_ones(projection, size: int, dtype) -> jax.Array:
    if projection is None:
        return jnp.ones((size,), dtype)
    return jnp.asarray(projection, dtype)


def _check_chunk_and_mode(chunk_size, mode) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size}.")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")


def _jit_with_static_fn(compute, static_argnames: tuple[str, ...], batched_args: tuple[int, ...]):
    """The one checked-jit path of the Jacobian functions.

    Returns ``call(static, traced, *args, batched, **settings)`` running
    ``compute(fn, *args, **settings)`` with ``fn = partial(static, traced)``, under one
    module-level ``jax.jit`` with ``static`` (:class:`_StaticFunction`), ``batched`` and
    the settings static and ``traced`` (the parameters) an argument. With ``batched``
    the arguments at ``batched_args`` carry a leading batch axis and ``compute`` is
    ``vmap``-ed over it inside the same program. The first argument is the map ``x``,
    moved channels last inside the program for a channels-first ``static`` (an eager
    transpose would compile on its own). An unhashable ``static`` cannot be a
    static argument: then the computation runs unjitted (module docstring,
    "Compilation").
    """

    def run(static, traced, *args, batched: bool, **settings):
        def one(x, *one_args):  # x: one map in the user's layout
            x = static.map_to_channels_last(x)
            return compute(functools.partial(static, traced), x, *one_args, **settings)

        if not batched:
            return one(*args)
        in_axes = tuple(0 if i in batched_args else None for i in range(len(args)))
        return jax.vmap(one, in_axes=in_axes)(*args)

    jitted = jax.jit(run, static_argnums=0, static_argnames=(*static_argnames, "batched"))

    @functools.wraps(compute)
    def call(static, traced, *args, **settings):
        return (jitted if _is_hashable(static) else run)(static, traced, *args, **settings)

    return call


def _check_batched(x, batched: bool, name: str):
    """``x`` itself, or for ``batched`` the shape and dtype of one element (checked)."""
    if not isinstance(batched, bool):
        raise ValueError(f"batched must be a bool, got {batched!r}.")
    if not batched:
        return x
    if jnp.ndim(x) < 1 or jnp.shape(x)[0] < 1:
        raise ValueError(
            f"{name} must have a non-empty leading batch axis with batched=True, got shape "
            f"{jnp.shape(x)}."
        )
    return jax.ShapeDtypeStruct(jnp.shape(x)[1:], jnp.result_type(x))


# ---------------------------------------------------------------------------------------
# Fourier basis.


def _phases(indices, shape: tuple[int, ...], dtype) -> jax.Array:
    """``theta[k, t] = 2 pi <nu_k, t / N>`` for flat indices ``[K]``: ``[K, *shape]``.

    The products ``nu * t`` are reduced modulo the axis length in integers first, so the
    angle stays in ``[0, 2 pi)`` and accurate for large maps.
    """
    # jnp.unravel_index clamps an out-of-range index; the DFT is periodic, so a traced
    # index outside [0, M) wraps onto its frequency mod M, as the module docstring says.
    coords = jnp.unravel_index(indices % math.prod(shape), shape)  # len(shape) arrays [K]
    theta: jax.Array | float = 0.0
    for axis, (nu, n) in enumerate(zip(coords, shape, strict=True)):
        t = jnp.arange(n, dtype=jnp.int32)
        product = (nu[:, None] * t[None, :]) % n  # [K, n]
        expand: list[slice | None] = [None] * len(shape)
        expand[axis] = slice(None)
        theta = theta + (product.astype(dtype) / n)[(slice(None), *expand)]
    return (2 * jnp.pi) * jnp.asarray(theta)  # [K, *shape]


def _fftn(z, ndim: int):
    return jnp.fft.fftn(z, axes=tuple(range(-ndim, 0)))


def _ifftn(z, ndim: int):
    return jnp.fft.ifftn(z, axes=tuple(range(-ndim, 0)))


# ---------------------------------------------------------------------------------------
# The two building blocks: columns (jvp) and rows (vjp) of J for a projected function.


def _projected(fn, out_projection):
    """``x -> sum_c v[c] fn(x)[..., c]``: a real map over the output spatial axes."""
    return lambda x: jnp.tensordot(fn(x), out_projection, axes=1)


def _column_fn(out_fn, x, in_projection, *, fft_out: bool):
    """``j -> J[:, j]`` (``[M_out]``) for a real ``out_fn`` of ``x [*S, Cin]``."""
    spatial = x.shape[:-1]
    n_in = math.prod(spatial)
    _, push = jax.linearize(out_fn, x)

    def column(j):  # one index; lax.map(batch_size=...) vmaps it over a chunk
        theta = _phases(j[None], spatial, x.dtype)[0]  # [*S]
        directions = jnp.stack([jnp.cos(theta), jnp.sin(theta)]) / n_in  # [2, *S]
        directions = directions[..., None] * in_projection  # [2, *S, Cin]
        real, imag = jax.vmap(push)(directions)  # [*S'] each
        out = jax.lax.complex(real, imag)
        if fft_out:
            out = _fftn(out, out.ndim)
        return out.reshape(-1)  # [M_out]

    return column


def _row_fn(out_fn, x, in_projection, *, fft_out: bool):
    """``i -> J[i, :]`` (``[M_in]``) for a real ``out_fn`` of ``x [*S, Cin]``."""
    spatial = x.shape[:-1]
    out_shape = jax.eval_shape(out_fn, x).shape
    _, pull = jax.vjp(out_fn, x)

    def row(i):
        if fft_out:
            theta = _phases(i[None], out_shape, x.dtype)[0]  # [*S']
            cotangents = jnp.stack([jnp.cos(theta), jnp.sin(theta)])  # [2, *S']
        else:
            one_hot = jax.nn.one_hot(i, math.prod(out_shape), dtype=x.dtype)
            cotangents = one_hot.reshape((1, *out_shape))  # [1, *S']
        (grads,) = jax.vmap(pull)(cotangents)  # [P, *S, Cin]
        grads = jnp.tensordot(grads, in_projection, axes=1)  # [P, *S]
        # Row of F_out A: cos^T A - i sin^T A (or the real row itself without F_out).
        q = jax.lax.complex(grads[0], -grads[1]) if fft_out else grads[0].astype(_cdtype(x))
        return _ifftn(q, len(spatial)).reshape(-1)  # [M_in]

    return row


def _cdtype(x):
    return jnp.complex128 if x.dtype == jnp.float64 else jnp.complex64


def _assemble(vector_fn, count: int, length: int, chunk_size: int, dtype, *, as_rows: bool):
    """The ``[count, length]`` (or transposed) matrix of ``vector_fn(k)``, chunk by chunk.

    Each chunk is written in place into the preallocated result (``dynamic_update_slice``
    on the ``scan`` carry), so the peak memory is the result plus one chunk: no
    concatenation of chunk outputs, and columns are written transposed, with no final
    transpose of the whole matrix. The last chunk is shifted back to end at ``count``; it
    recomputes a few vectors rather than padding (which would need a copy to slice).
    """
    chunk = min(chunk_size, count)

    def write(out, c):
        start = jnp.minimum(c * chunk, count - chunk).astype(jnp.int32)
        zero = jnp.zeros((), jnp.int32)  # indices of one integer type, also under x64
        block = jax.vmap(vector_fn)(start + jnp.arange(chunk, dtype=jnp.int32))  # [chunk, L]
        if as_rows:
            return jax.lax.dynamic_update_slice(out, block, (start, zero)), None
        return jax.lax.dynamic_update_slice(out, block.T, (zero, start)), None

    shape = (count, length) if as_rows else (length, count)
    out = jnp.zeros(shape, dtype)
    out, _ = jax.lax.scan(write, out, jnp.arange(-(-count // chunk), dtype=jnp.int32))
    return out


# ---------------------------------------------------------------------------------------
# Public API.


_MAP_FORMAT_HINT = "the layout of one map; with batched=True the batch axis comes first"


def _check_function_and_input(
    fn,
    x,
    params,
    batched,
    data_format,
    *,
    fn_name: str = "fn",
    x_name: str = "x",
    two_d_only: bool = False,
):
    """The one place where every Jacobian function checks its function and input.

    Reads ``x`` (a CPU PyTorch tensor too, :func:`spectral_jax._checks.as_array`),
    splits ``fn`` (:func:`_split_function`), takes one map of a batch, checks its dtype,
    rank and layout (``data_format``; an unstated ``[C, H, W]``-looking map is refused)
    and evaluates ``fn``'s output shape.

    Returns:
      ``(static, traced, x, one, out_shape)``: the split function, ``x`` as an array,
      the shape and dtype of one map channels last (``[H, W, Cin]`` or ``[L, Cin]``) and
      the output shape of one map, channels last.
    """
    x = _checks.as_array(x, x_name)
    one = _check_batched(x, batched, x_name)
    _check_x(one, x_name)
    if data_format is not None and data_format not in _checks.MAP_FORMATS:
        raise ValueError(
            f"data_format must be one of {_checks.MAP_FORMATS} or None ({_MAP_FORMAT_HINT}), "
            f"got {data_format!r}."
        )
    if data_format == "CHW" and jnp.ndim(one) != 3:
        raise ValueError(
            f"data_format='CHW' is for 2-D maps [Cin, H, W]; {x_name} has one map of shape "
            f"{jnp.shape(one)} ([L, Cin] 1-D signals are channels last)."
        )
    shape = _checks.unbatched_map_shape(jnp.shape(one), x_name, data_format)
    one = jax.ShapeDtypeStruct(shape, jnp.result_type(one))
    if two_d_only and len(shape) != 3:
        raise ValueError(f"{x_name} must have shape [H, W, Cin], got shape {jnp.shape(x)}.")
    static, traced = _split_function(fn, params, params is not None, data_format == "CHW")
    out_shape = _check_output(static, traced, one, fn_name=fn_name, x_name=x_name)
    return static, traced, x, one, out_shape


class _Checked(NamedTuple):
    """The checked arguments of a Jacobian function (:func:`_check_inputs`)."""

    static: _StaticFunction
    traced: Any
    x: Any  # the map(s) as an array, in the user's layout
    one: jax.ShapeDtypeStruct  # one map, channels last
    out_shape: tuple[int, ...]  # fn's output for one map, channels last
    in_projection: Any
    out_projection: Any


def _check_inputs(fn, x, params, batched, data_format, in_projection, out_projection):
    """Checks ``x``, ``fn(x)`` and the projections (read as arrays, PyTorch tensors too)."""
    static, traced, x, one, out_shape = _check_function_and_input(
        fn, x, params, batched, data_format
    )
    in_projection = _checks.as_array(in_projection, "in_projection")
    out_projection = _checks.as_array(out_projection, "out_projection")
    _check_projection(in_projection, one.shape[-1], "in_projection")
    _check_projection(out_projection, out_shape[-1], "out_projection")
    return _Checked(static, traced, x, one, out_shape, in_projection, out_projection)


def _prepare(fn, x, in_projection, out_projection):
    """Checked arguments in the compute dtype, and the projected real output function."""
    x = _as_compute_dtype(x)
    out_shape = jax.eval_shape(fn, x).shape
    in_projection = _projection_or_ones(in_projection, x.shape[-1], x.dtype)
    out_projection = _projection_or_ones(out_projection, out_shape[-1], x.dtype)
    # Output in x's dtype, so that float64 stays float64 and bfloat16 layers are upcast.
    out_fn = _projected(lambda z: fn(z).astype(x.dtype), out_projection)
    return x, out_fn, in_projection, out_shape[:-1]


def spectral_jacobian(
    fn: Callable[[jax.Array], jax.Array],
    x: chex.Array,
    *,
    in_projection: chex.Array | None = None,
    out_projection: chex.Array | None = None,
    params: Any = None,
    batched: bool = False,
    data_format: MapFormat | None = None,
    chunk_size: int = 256,
    mode: Mode = "reverse",
) -> jax.Array:
    r"""Full spectral Jacobian ``J[nu_i, nu_j] = d y_hat(nu_i) / d x_hat(nu_j)``.

    .. math::

       J = F_{out}\, (v^\top \otimes I)\, A\, (I \otimes u)\, F_{in}^{-1}

    with ``A`` the real Jacobian of ``fn`` at ``x``, ``F`` the unnormalised DFT over the
    spatial axes and ``F^{-1} = F^H / N`` (module docstring). For a circular
    cross-correlation with kernel ``k`` (what ``jax.lax.conv`` computes, with circular
    padding) ``J = diag(conj(k_hat))``; Eq. 10 of the paper approximates a softplus conv
    layer by ``1/2 diag(k(nu))``.

    Args:
      fn: real function of one map ``[H, W, Cin]`` (or ``[L, Cin]``) returning one map
        ``[H', W', Cout]`` (or ``[L', Cout]``) of a real floating dtype; with ``params``,
        ``fn(params, x)``. Static: the computation compiles once per ``fn``, shapes and
        settings, also eagerly. The arrays of a ``functools.partial`` are traced (a
        re-created partial with new weights compiles nothing); a new closure compiles
        again (module docstring, "Compilation").
      x: ``[H, W, Cin]`` or ``[L, Cin]`` real floating point at which ``A`` is taken: a
        JAX or NumPy array or a CPU PyTorch tensor (``[Cin, H, W]`` with
        ``data_format="CHW"``).
        float16 and bfloat16 are upcast to float32 (exact) and ``fn``'s output is cast
        to that dtype; float64 (with ``jax_enable_x64``, on CPU or GPU) stays float64.
        ``fn`` itself computes in whatever dtype its layers use: for a Jacobian free of
        bfloat16 rounding, build the layers with ``dtype=jnp.float32``.
      in_projection: ``[Cin]`` real weights ``u`` of the input channels (default ones).
      out_projection: ``[Cout]`` real weights ``v`` of the output channels (default ones).
      params: optional pytree of arrays: ``fn`` is called as ``fn(params, x)``. Traced:
        new values of the same structure compile nothing. None: ``fn(x)``.
      batched: ``x`` is a batch ``[B, H, W, Cin]`` (or ``[B, L, Cin]``) and the result
        gets a leading ``B`` axis: one ``vmap``-ed program for all the maps, ``params``
        shared.
      data_format: the layout of one map of ``x`` and of ``fn``'s input and output:
        ``"HWC"`` (channels last, Flax's) or ``"CHW"`` (channels first, PyTorch's:
        ``fn`` maps ``[Cin, H, W]`` to ``[Cout, H', W']``, and the axis is moved inside
        the compiled program). ``None`` (not stated) reads ``[H, W, Cin]`` but refuses a
        map whose leading axis is smaller than both others, which is most likely
        ``[Cin, H, W]`` and would silently be read with ``H = Cin``; state ``"HWC"`` to
        keep such a map. Static.
      chunk_size: static number of basis directions (``mode="forward"``) or output
        frequencies (``mode="reverse"``) per vectorised step; memory beyond the result is
        about ``chunk_size`` times the size of a map and its tangent.
      mode: ``"reverse"`` builds rows with ``jax.vjp`` (jacrev-like, ``M_out`` steps);
        ``"forward"`` builds columns with ``jax.jvp`` (jacfwd-like, ``M_in`` steps, each
        chunk written transposed into the result). Both are exact and agree to rounding.
        On CPU, for a conv + softplus layer, reverse is 2-3x faster (129x129: 8.2 s
        against 18.7 s; ``benchmarks/README.md``); forward needs fewer steps when the
        output has more frequencies than the input (up-sampling).
        Either way the result is preallocated and filled in place: peak memory is about
        the result plus one chunk (129x129: 2.1 GiB result, 2.5 GiB peak RSS).

    Returns:
      ``[M_out, M_in]`` complex64 (complex128 for float64 ``x``), frequencies flattened
      in C order of the DFT layout (``M_in = H W``, ``M_out = H' W'``); reshape to
      ``[H', W', H, W]`` to index by ``(kh', kw', kh, kw)``. ``[B, M_out, M_in]`` with
      ``batched``.

    Raises:
      TypeError: complex or non-floating ``x``; ``fn`` returning several arrays or a
        non-real-floating array; an array-like that cannot be read (a tensor that
        requires grad).
      ValueError: float64 ``x`` on a backend without float64 (TPU; the message says
        what to do); ``x`` not ``[H, W, Cin]``/``[L, Cin]``; an unstated layout that
        looks channels first, or a ``data_format`` outside ``("HWC", "CHW")``; ``fn(x)``
        of another rank (a
        batch axis added or dropped); projections of the wrong length; bad
        ``chunk_size`` or ``mode``.

    Example:
      >>> import functools
      >>> from spectral_jax import probes
      >>> rng = np.random.default_rng(0)
      >>> k = rng.normal(size=(3, 3, 1, 1)).astype(np.float32)  # [Kh, Kw, Cin, Cout]
      >>> x = rng.normal(size=(8, 8, 1)).astype(np.float32)  # [H, W, Cin]
      >>> conv = functools.partial(probes.conv, kernel=k, padding="circular")
      >>> jac = spectral_jacobian(conv, x)  # [H W, H W]
      >>> jac.shape, jac.dtype
      ((64, 64), dtype('complex64'))
      >>> k_hat = jnp.fft.fft2(probes.embedded_kernel(k, (8, 8))[:, :, 0, 0])  # [H, W]
      >>> bool(jnp.allclose(jac, jnp.diag(jnp.conj(k_hat).ravel()), atol=1e-5))
      True
      >>> layer = lambda params, z: probes.conv(z, params["kernel"], padding="circular")
      >>> same = spectral_jacobian(layer, x, params={"kernel": k})  # new kernels: no recompile
      >>> bool(jnp.allclose(same, jac, atol=1e-6))
      True
    """
    _check_chunk_and_mode(chunk_size, mode)
    checked = _check_inputs(fn, x, params, batched, data_format, in_projection, out_projection)
    return _spectral_jacobian(
        checked.static,
        checked.traced,
        checked.x,
        checked.in_projection,
        checked.out_projection,
        batched=batched,
        chunk_size=chunk_size,
        mode=mode,
    )


def _compute_spectral_jacobian(fn, x, in_projection, out_projection, *, chunk_size, mode):
    x, out_fn, in_projection, out_spatial = _prepare(fn, x, in_projection, out_projection)
    m_in, m_out = math.prod(x.shape[:-1]), math.prod(out_spatial)
    if mode == "forward":
        column = _column_fn(out_fn, x, in_projection, fft_out=True)
        return _assemble(column, m_in, m_out, chunk_size, _cdtype(x), as_rows=False)
    row = _row_fn(out_fn, x, in_projection, fft_out=True)
    return _assemble(row, m_out, m_in, chunk_size, _cdtype(x), as_rows=True)


_spectral_jacobian = _jit_with_static_fn(_compute_spectral_jacobian, ("chunk_size", "mode"), (0,))


def spectral_jacobian_rows(
    fn: Callable[[jax.Array], jax.Array],
    x: chex.Array,
    nu_i: chex.Array,
    *,
    in_projection: chex.Array | None = None,
    out_projection: chex.Array | None = None,
    params: Any = None,
    batched: bool = False,
    data_format: MapFormat | None = None,
    chunk_size: int = 64,
) -> jax.Array:
    """Rows ``J[nu_i, :]`` of :func:`spectral_jacobian` through ``jax.vjp``.

    What the paper's Fig. 4 plots (rows ``i = 0, M/4, M/2`` over all ``nu_j``), at the
    cost of two real pullbacks per row, without the full matrix.

    Args:
      fn, x, in_projection, out_projection, params, batched, data_format: as in
        :func:`spectral_jacobian`.
      nu_i: ``[K]`` integer flat indices into the ``M_out`` output frequencies, or
        ``[K, d]`` signed frequencies such as ``[(nu_h, nu_w)]``
        (:mod:`spectral_jax.frequencies`).
      chunk_size: static number of rows per vectorised step.

    Returns:
      ``[K, M_in]`` complex, equal to ``spectral_jacobian(fn, x)[nu_i]``
      (``[B, K, M_in]`` with ``batched``).

    Raises:
      As :func:`spectral_jacobian`, and ValueError for ``nu_i`` outside ``[0, M_out)``
      (concrete indices only), TypeError for non-integer ``nu_i``.
    """
    _check_chunk_and_mode(chunk_size, "reverse")
    checked = _check_inputs(fn, x, params, batched, data_format, in_projection, out_projection)
    nu_i = frequencies_lib.flat_frequency_indices(nu_i, checked.out_shape[:-1], name="nu_i")
    return _spectral_jacobian_rows(
        checked.static,
        checked.traced,
        checked.x,
        nu_i,
        checked.in_projection,
        checked.out_projection,
        batched=batched,
        chunk_size=chunk_size,
    )


def _compute_rows(fn, x, nu_i, in_projection, out_projection, *, chunk_size):
    x, out_fn, in_projection, _ = _prepare(fn, x, in_projection, out_projection)
    row = _row_fn(out_fn, x, in_projection, fft_out=True)
    return jax.lax.map(row, jnp.asarray(nu_i, jnp.int32), batch_size=chunk_size)


_spectral_jacobian_rows = _jit_with_static_fn(_compute_rows, ("chunk_size",), (0,))


def spectral_jacobian_columns(
    fn: Callable[[jax.Array], jax.Array],
    x: chex.Array,
    nu_j: chex.Array,
    *,
    in_projection: chex.Array | None = None,
    out_projection: chex.Array | None = None,
    params: Any = None,
    batched: bool = False,
    data_format: MapFormat | None = None,
    chunk_size: int = 64,
) -> jax.Array:
    """Columns ``J[:, nu_j]`` of :func:`spectral_jacobian` through ``jax.jvp``.

    Args:
      fn, x, in_projection, out_projection, params, batched, data_format: as in
        :func:`spectral_jacobian`.
      nu_j: ``[K]`` integer flat indices into the ``M_in`` input frequencies, or ``[K, d]``
        signed frequencies (:mod:`spectral_jax.frequencies`).
      chunk_size: static number of columns per vectorised step.

    Returns:
      ``[M_out, K]`` complex, equal to ``spectral_jacobian(fn, x)[:, nu_j]``
      (``[B, M_out, K]`` with ``batched``).

    Raises:
      As :func:`spectral_jacobian_rows`, for ``nu_j`` outside ``[0, M_in)``.
    """
    _check_chunk_and_mode(chunk_size, "forward")
    checked = _check_inputs(fn, x, params, batched, data_format, in_projection, out_projection)
    in_spatial = checked.one.shape[:-1]
    nu_j = frequencies_lib.flat_frequency_indices(nu_j, in_spatial, name="nu_j", spectrum="input")
    return _spectral_jacobian_columns(
        checked.static,
        checked.traced,
        checked.x,
        nu_j,
        checked.in_projection,
        checked.out_projection,
        batched=batched,
        chunk_size=chunk_size,
    )


def _compute_columns(fn, x, nu_j, in_projection, out_projection, *, chunk_size):
    x, out_fn, in_projection, _ = _prepare(fn, x, in_projection, out_projection)
    column = _column_fn(out_fn, x, in_projection, fft_out=True)
    return jax.lax.map(column, jnp.asarray(nu_j, jnp.int32), batch_size=chunk_size).T


_spectral_jacobian_columns = _jit_with_static_fn(_compute_columns, ("chunk_size",), (0,))


def ce_spectral_gradient(
    head_fn: Callable[[jax.Array], jax.Array],
    features: chex.Array,
    labels: chex.Array,
    *,
    nu_i: chex.Array | None = None,
    in_projection: chex.Array | None = None,
    ignore_index: int = IGNORE_INDEX,
    ignore_mode: IgnoreMode = DEFAULT_IGNORE_MODE,
    params: Any = None,
    batched: bool = False,
    data_format: MapFormat | None = None,
    chunk_size: int = 64,
    mode: Mode = "forward",
) -> jax.Array:
    r"""Spectral gradient of the CE components, ``d L_ce(nu_i) / d x_hat(nu_j)`` (Eq. 11).

    .. math::

       G = A_{\mathcal{L}}\, (I \otimes u)\, F_{in}^{-1}, \qquad
       G[\nu_i, \nu_j] = \frac{\partial \mathcal{L}_{ce}(\nu_i)}{\partial \hat x(\nu_j)},

    with ``A_L`` the real Jacobian of ``features -> L_ce`` where
    ``L_ce = ce_spectrum(head_fn(features)[None], labels[None])[0]`` (Eq. 5: the
    components are real, one per output frequency, and sum to the image's mean CE). Eq.
    12 claims ``G[nu_i, nu_j]`` is negligible for large ``|nu_i - nu_j|``; measure it with
    :func:`energy_by_distance`. ``sum_i G[i, :]`` is the gradient of the mean CE with
    respect to ``x_hat``.

    Args:
      head_fn: real function from features ``[H, W, Cin]`` to logits ``[H', W', C]`` of
        one image (for example an ASPP-to-logits decoder head); with ``params``,
        ``head_fn(params, features)``. Static, as ``fn`` in :func:`spectral_jacobian`;
        :func:`spectral_jax.layer_head` gives the head after a named layer of a Flax
        model.
      features: ``[H, W, Cin]`` real floating features (``[L, Cin]`` is not supported: the
        CE decomposition is 2-D); dtypes as ``x`` in :func:`spectral_jacobian`.
      labels: ``[H', W']`` integer labels in ``[0, C)`` or ``ignore_index``.
      nu_i: optional ``[K]`` flat indices (or ``[K, 2]`` signed frequencies, as in
        :func:`spectral_jacobian_rows`) of the CE components to differentiate (rows, via
        ``jax.vjp``: one pullback each, for large maps); ``None`` for the full matrix.
      in_projection: ``[Cin]`` real channel weights ``u`` (default ones).
      ignore_index, ignore_mode: as in :func:`spectral_jax.ce_spectrum`. Static.
      params: optional pytree of arrays, traced: ``head_fn(params, features)``.
      batched: ``features [B, H, W, Cin]`` and ``labels [B, H', W']``; the result gets a
        leading ``B`` axis (one ``vmap``-ed program).
      data_format: the layout of ``features`` and ``head_fn``, as in
        :func:`spectral_jacobian` (``"CHW"``: ``head_fn`` maps ``[Cin, H, W]`` to logits
        ``[C, H', W']``).
      chunk_size: static rows or columns per vectorised step.
      mode: ``"forward"`` (columns by ``jax.jvp``, ``H W`` steps) or ``"reverse"`` (rows by
        ``jax.vjp``, ``H' W'`` steps) for the full matrix. The default is forward because
        decoder heads up-sample (``H' W' = 16 H W`` for x4); rows always use ``jax.vjp``.

    Returns:
      ``[H' W', H W]`` complex (or ``[K, H W]`` for ``nu_i``), flattened DFT order;
      a leading ``B`` axis with ``batched``.

    Raises:
      TypeError, ValueError: as :func:`spectral_jacobian` and
        :func:`spectral_jax.ce_spectrum`; ``head_fn`` output not matching ``labels``.
    """
    _check_chunk_and_mode(chunk_size, mode)
    static, traced, features, one, out_shape = _check_function_and_input(
        head_fn,
        features,
        params,
        batched,
        data_format,
        fn_name="head_fn",
        x_name="features",
        two_d_only=True,
    )
    labels = _checks.as_array(labels, "labels")
    in_projection = _checks.as_array(in_projection, "in_projection")
    batch = jnp.shape(features)[:1] if batched else ()
    if tuple(jnp.shape(labels)) != (*batch, *out_shape[:2]):
        expected = "[B, H', W']" if batched else "[H', W']"
        raise ValueError(
            f"labels must have shape {expected} = {(*batch, *out_shape[:2])} (the spatial "
            f"shape of head_fn(features), shape {tuple(out_shape)}), got shape "
            f"{jnp.shape(labels)}."
        )
    # Validates labels (concrete ones by value), their dtype and ignore_index, as
    # ce_spectrum would on the logits [B, H', W', C].
    images = labels if batched else labels[None]
    if not _checks.is_traced(labels):
        images = np.asarray(labels) if batched else np.asarray(labels)[None]
    logits = jax.ShapeDtypeStruct((len(images), *out_shape), jnp.float32)  # floating: checked
    _checks.check_logits_and_labels(logits, images, ignore_index=ignore_index)
    _checks.check_ignore_mode(ignore_mode)
    _check_projection(in_projection, one.shape[-1], "in_projection")
    if nu_i is not None:
        nu_i = frequencies_lib.flat_frequency_indices(
            nu_i, out_shape[:2], name="nu_i", spectrum="CE"
        )
    return _ce_spectral_gradient(
        static,
        traced,
        features,
        labels,
        nu_i,
        in_projection,
        batched=batched,
        ignore_index=ignore_index,
        ignore_mode=ignore_mode,
        chunk_size=chunk_size,
        mode=mode,
    )


def _compute_ce_spectral_gradient(
    head_fn, features, labels, nu_i, in_projection, *, ignore_index, ignore_mode, chunk_size, mode
):
    features = _as_compute_dtype(features)
    out_shape = jax.eval_shape(head_fn, features).shape
    in_projection = _projection_or_ones(in_projection, features.shape[-1], features.dtype)

    def out_fn(f):  # [H, W, Cin] -> [H', W'] real CE components
        logits = head_fn(f).astype(features.dtype)[None]
        return ce_spectrum(
            logits, labels[None], ignore_index=ignore_index, ignore_mode=ignore_mode
        )[0]

    m_in, m_out = math.prod(features.shape[:2]), math.prod(out_shape[:2])
    cdtype = _cdtype(features)
    if nu_i is not None:
        row = _row_fn(out_fn, features, in_projection, fft_out=False)
        return jax.lax.map(row, jnp.asarray(nu_i, jnp.int32), batch_size=chunk_size)
    if mode == "reverse":
        row = _row_fn(out_fn, features, in_projection, fft_out=False)
        return _assemble(row, m_out, m_in, chunk_size, cdtype, as_rows=True)
    column = _column_fn(out_fn, features, in_projection, fft_out=False)
    return _assemble(column, m_in, m_out, chunk_size, cdtype, as_rows=False)


_ce_spectral_gradient = _jit_with_static_fn(
    _compute_ce_spectral_gradient, ("ignore_index", "ignore_mode", "chunk_size", "mode"), (0, 1)
)


# ---------------------------------------------------------------------------------------
# Band-aggregated energy, streamed.


def _bands_of(shape: tuple[int, ...], radius: bands_lib.Radius) -> np.ndarray:
    """Band of every frequency of a 1-D or 2-D grid, flattened: ``[M]``."""
    if len(shape) == 2:
        return bands_lib.band_index(shape, radius=radius).reshape(-1)
    bands_lib._check_radius(radius)
    return np.abs(bands_lib.signed_frequencies(shape[0])).astype(np.int32)


def _half_indices_and_weights(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the ``rfftn`` half spectrum and their multiplicities."""
    last = shape[-1]
    half = last // 2 + 1
    weights_last = bands_lib.half_spectrum_weights((1, last))  # [half]
    if len(shape) == 1:
        return np.arange(half), weights_last
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(half), indexing="ij")
    indices = (rows * last + cols).reshape(-1)
    weights = np.broadcast_to(weights_last, (shape[0], half)).reshape(-1)
    return indices, weights


def spectral_jacobian_band_energy(
    fn: Callable[[jax.Array], jax.Array],
    x: chex.Array,
    *,
    in_projection: chex.Array | None = None,
    out_projection: chex.Array | None = None,
    radius: bands_lib.Radius = "chebyshev",
    params: Any = None,
    batched: bool = False,
    data_format: MapFormat | None = None,
    chunk_size: int = 64,
    mode: Mode = "reverse",
) -> jax.Array:
    r"""Band-aggregated energy of the spectral Jacobian, streamed without holding ``J``.

    .. math::

       E[r_i, r_j] = \sum_{\mathrm{band}(\nu_i) = r_i}\ \sum_{\mathrm{band}(\nu_j) = r_j}
       |J[\nu_i, \nu_j]|^2

    Rows (``mode="reverse"``, ``jax.vjp``) or columns (``mode="forward"``, ``jax.jvp``)
    of ``J`` are computed ``chunk_size`` at a time and reduced to their band sums at once,
    so memory is set by ``chunk_size`` times the map size, not by ``M^2``. Only half of
    the rows (or columns) are computed: for a real ``fn``,
    ``J[-nu_i, -nu_j] = conj(J[nu_i, nu_j])`` and bands are symmetric under
    ``nu -> -nu``, so row ``-nu_i`` has the band sums of row ``nu_i`` (weights as
    :func:`spectral_jax.half_spectrum_weights`).

    Args:
      fn, x, in_projection, out_projection, params, batched, data_format: as in
        :func:`spectral_jacobian`.
      radius: band radius (``"chebyshev"`` or ``"euclidean"``) for 2-D maps; in 1-D the
        band is ``|nu|``.
      chunk_size: static number of rows (or columns) per vectorised step.
      mode: ``"reverse"`` (rows over the output half spectrum; the faster on CPU for
        layers that keep the map size, see ``benchmarks/README.md``) or ``"forward"``
        (columns over the input half spectrum; fewer steps when the output is larger,
        as for up-sampling).

    Returns:
      ``[R_out, R_in]`` real energies, with ``R = num_bands(shape, radius=radius)``;
      ``E.sum()`` is ``|J|_F^2``. ``[B, R_out, R_in]`` with ``batched``.
    """
    _check_chunk_and_mode(chunk_size, mode)
    checked = _check_inputs(fn, x, params, batched, data_format, in_projection, out_projection)
    bands_lib._check_radius(radius)
    return _spectral_jacobian_band_energy(
        checked.static,
        checked.traced,
        checked.x,
        checked.in_projection,
        checked.out_projection,
        batched=batched,
        radius=radius,
        chunk_size=chunk_size,
        mode=mode,
    )


def _compute_band_energy(fn, x, in_projection, out_projection, *, radius, chunk_size, mode):
    x, out_fn, in_projection, out_spatial = _prepare(fn, x, in_projection, out_projection)
    in_spatial = x.shape[:-1]
    out_bands = _bands_of(tuple(out_spatial), radius)  # [M_out]
    in_bands = _bands_of(tuple(in_spatial), radius)  # [M_in]
    num_out, num_in = int(out_bands.max()) + 1, int(in_bands.max()) + 1
    if mode == "reverse":  # rows i over the output half spectrum
        vector_fn = _row_fn(out_fn, x, in_projection, fft_out=True)
        indices, weights = _half_indices_and_weights(tuple(out_spatial))
        inner_bands, num_inner, outer_bands, num_outer = in_bands, num_in, out_bands, num_out
    else:  # columns j over the input half spectrum
        vector_fn = _column_fn(out_fn, x, in_projection, fft_out=True)
        indices, weights = _half_indices_and_weights(tuple(in_spatial))
        inner_bands, num_inner, outer_bands, num_outer = out_bands, num_out, in_bands, num_in

    def band_sums(k):  # band sums of |J[k, :]|^2 (or |J[:, k]|^2)
        power = jnp.abs(vector_fn(k)) ** 2
        return jax.ops.segment_sum(power, inner_bands, num_segments=num_inner)

    sums = jax.lax.map(band_sums, jnp.asarray(indices, jnp.int32), batch_size=chunk_size)
    sums = sums * jnp.asarray(weights, x.dtype)[:, None]  # [M_half, R_inner]
    energy = jax.ops.segment_sum(sums, outer_bands[indices], num_segments=num_outer)
    return energy if mode == "reverse" else energy.T  # [R_out, R_in]


_spectral_jacobian_band_energy = _jit_with_static_fn(
    _compute_band_energy, ("radius", "chunk_size", "mode"), (0,)
)


# ---------------------------------------------------------------------------------------
# Summaries of rows: how much of each row's energy lies near the diagonal.


def frequency_distance(
    nu_i: chex.Array,
    *,
    out_shape: tuple[int, ...],
    in_shape: tuple[int, ...],
    radius: bands_lib.Radius = "chebyshev",
) -> np.ndarray:
    """Distance ``|nu_i - nu_j|`` from output frequencies to every input frequency.

    Frequencies are signed (:func:`spectral_jax.signed_frequencies`). Along an axis where
    the input and output grids agree the difference wraps around (the DFT is periodic:
    ``nu_i - nu_j`` is taken modulo the axis length and made signed); along an axis that
    is resampled (up-sampling) the signed frequencies are subtracted as they are. The
    distance is the Chebyshev ``max`` of the axes or the Euclidean
    ``ceil(sqrt(sum of squares))``, as the band radius of :mod:`spectral_jax.bands`.

    Args:
      nu_i: ``[K]`` concrete flat output-frequency indices, or ``[K, d]`` signed
        frequencies (:mod:`spectral_jax.frequencies`).
      out_shape: output spatial shape ``(H', W')`` or ``(L',)``.
      in_shape: input spatial shape ``(H, W)`` or ``(L,)``.
      radius: the band radius that measures the distance, ``"chebyshev"`` or
        ``"euclidean"`` (:mod:`spectral_jax.bands`).

    Returns:
      Integer NumPy array ``[K, M_in]``.
    """
    bands_lib._check_radius(radius)
    out_shape, in_shape = tuple(out_shape), tuple(in_shape)
    if len(out_shape) != len(in_shape):
        raise ValueError(f"out_shape {out_shape} and in_shape {in_shape} differ in rank.")
    nu_i = np.asarray(frequencies_lib.flat_frequency_indices(nu_i, out_shape, name="nu_i"))
    if nu_i.ndim != 1 or ((nu_i < 0) | (nu_i >= math.prod(out_shape))).any():
        raise ValueError(f"nu_i must be [K] indices in [0, {math.prod(out_shape)}).")
    out_coords = np.unravel_index(nu_i, out_shape)
    in_grid = np.meshgrid(*[np.arange(n) for n in in_shape], indexing="ij")
    squares = largest = np.zeros((), np.int64)
    for axis, (n_out, n_in) in enumerate(zip(out_shape, in_shape, strict=True)):
        nu_out = bands_lib.signed_frequencies(n_out)[out_coords[axis]][:, None]  # [K, 1]
        nu_in = bands_lib.signed_frequencies(n_in)[in_grid[axis].reshape(-1)][None, :]
        diff = nu_out - nu_in  # [K, M_in]
        if n_out == n_in:
            diff = bands_lib.signed_frequencies(n_in)[diff % n_in]
        squares = squares + diff**2
        largest = np.maximum(largest, np.abs(diff))
    if radius == "chebyshev":
        return largest.astype(np.int64)
    root = np.ceil(np.sqrt(squares.astype(np.float64)) - 1e-9)
    return root.astype(np.int64)


def energy_by_distance(
    rows: chex.Array,
    nu_i: chex.Array,
    *,
    out_shape: tuple[int, ...],
    in_shape: tuple[int, ...],
    radius: bands_lib.Radius = "chebyshev",
    normalize: bool = True,
) -> jax.Array:
    """Off-diagonal decay: each row's energy ``|J[nu_i, nu_j]|^2`` by distance ``|nu_i - nu_j|``.

    Args:
      rows: ``[K, M_in]`` rows of a spectral Jacobian (:func:`spectral_jacobian_rows`,
        rows of :func:`spectral_jacobian` or :func:`ce_spectral_gradient`).
      nu_i: ``[K]`` concrete flat output-frequency indices of the rows.
      out_shape, in_shape, radius: as in :func:`frequency_distance`.
      normalize: divide by each row's total energy (rows of zero energy give zeros).

    Returns:
      ``[K, D]`` real: entry ``d`` is the (fraction of the) energy of row ``k`` at distance
      ``d`` from ``nu_i[k]``; ``D`` is the largest distance plus one.
    """
    chex.assert_rank(rows, 2)
    dist = frequency_distance(nu_i, out_shape=out_shape, in_shape=in_shape, radius=radius)
    if rows.shape != dist.shape:
        raise ValueError(
            f"rows must have shape [K, M_in] = {dist.shape} for nu_i and in_shape, "
            f"got shape {rows.shape}."
        )
    num = int(dist.max()) + 1
    power = jnp.abs(rows) ** 2  # [K, M_in]
    offsets = (np.arange(dist.shape[0])[:, None] * num + dist).reshape(-1)
    sums = jax.ops.segment_sum(power.reshape(-1), offsets, num_segments=dist.shape[0] * num)
    sums = sums.reshape(dist.shape[0], num)  # [K, D]
    if normalize:
        total = jnp.sum(sums, axis=-1, keepdims=True)
        sums = jnp.where(total > 0, sums / jnp.where(total > 0, total, 1), 0.0)
    return sums


def _check_diagonal_grids(out_shape: tuple[int, ...], in_shape: tuple[int, ...]) -> None:
    """Raises ``ValueError`` unless every axis of the two grids is equal or resampled.

    The rows carry ``M_in`` but not ``M_out``, so a wrong ``out_shape`` (25 frequencies
    for a 30-frequency Jacobian) would place the diagonal elsewhere and give a plausible
    fraction. A layer keeps an axis (``n_out == n_in``) or resamples it by an integer
    factor ``s >= 2``: the smaller size is ``ceil(larger / s)`` (a stride, or its
    up-sampling).
    """
    if len(out_shape) != len(in_shape):
        raise ValueError(f"out_shape {out_shape} and in_shape {in_shape} differ in rank.")
    for axis, (n_out, n_in) in enumerate(zip(out_shape, in_shape, strict=True)):
        small, large = sorted((int(n_out), int(n_in)))
        if small == large or any(-(-large // s) == small for s in range(2, large + 1)):
            continue
        raise ValueError(
            f"out_shape {out_shape} does not fit a Jacobian of input grid {in_shape}: axis "
            f"{axis} has {n_out} output and {n_in} input frequencies, neither equal nor a "
            "resampling by an integer factor, so the diagonal nu_j = nu_i is not defined. "
            "Pass the output grid of the function whose Jacobian gave the rows."
        )


def within_distance_energy_fraction(
    rows: chex.Array,
    nu_i: chex.Array,
    *,
    out_shape: tuple[int, ...],
    in_shape: tuple[int, ...],
    max_distance: int,
    radius: bands_lib.Radius = "chebyshev",
) -> jax.Array:
    """Fraction of each row's energy near the diagonal, ``|nu_i - nu_j| <= max_distance``.

    Args:
      rows, nu_i, out_shape, in_shape, radius: as in :func:`energy_by_distance`.
      max_distance: non-negative int; 0 gives :func:`diagonal_energy_fraction`.

    Returns:
      ``[K]`` fractions in ``[0, 1]`` (0 for a row of zero energy).

    Raises:
      ValueError: a bad ``max_distance``; an ``out_shape`` whose every axis is neither that
        of ``in_shape`` nor its resampling by an integer factor (``ceil(n / s)``), for
        which the diagonal is not defined (a wrong ``out_shape`` would move it).
    """
    if (
        isinstance(max_distance, bool)
        or not isinstance(max_distance, int | np.integer)
        or max_distance < 0
    ):
        raise ValueError(f"max_distance must be a non-negative int, got {max_distance!r}.")
    _check_diagonal_grids(tuple(out_shape), tuple(in_shape))
    fractions = energy_by_distance(
        rows, nu_i, out_shape=out_shape, in_shape=in_shape, radius=radius
    )
    return jnp.sum(fractions[:, : max_distance + 1], axis=-1)


def diagonal_energy_fraction(
    rows: chex.Array,
    nu_i: chex.Array,
    *,
    out_shape: tuple[int, ...],
    in_shape: tuple[int, ...],
) -> jax.Array:
    """Fraction of each row's energy on the diagonal ``nu_j = nu_i`` (Eq. 10's delta).

    Args:
      rows, nu_i, out_shape, in_shape: as in :func:`energy_by_distance`.

    Returns:
      ``[K]`` fractions; 1 for a diagonal Jacobian such as a circular convolution's.

    Raises:
      ValueError: as :func:`within_distance_energy_fraction`, for an ``out_shape`` that
        does not fit ``in_shape``.
    """
    return within_distance_energy_fraction(
        rows, nu_i, out_shape=out_shape, in_shape=in_shape, max_distance=0
    )
