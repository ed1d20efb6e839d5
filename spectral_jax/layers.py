r"""A Flax model's layer by name: its output, and the rest of the model as the head.

Fig. 4 of Chen, Chiu, Wu, "Spectral Analysis for Semantic Segmentation with Applications
on Feature Truncation and Weak Annotation" (arXiv:2012.14123, Sec. 3.1) differentiates
the CE components with respect to the ASPP output, through the decoder:
``dL_ce(nu_i) / dx_hat(nu_j)`` with ``x`` one layer's output and the rest of the network
the head. This module splits any Flax model there by the layer's name, with
``flax.linen.intercept_methods``, so that no head is carved out by hand:

* a **layer path** names a module as ``capture_intermediates`` does: the module names
  from the root joined by ``"/"`` (``"aspp"``, ``"decoder/fuse1_conv"``,
  ``"encoder/layer4_block0"``); :func:`layer_paths` lists every path a forward pass
  reaches. The layer is the output of that module's ``__call__`` (one array), and the
  module must be called once per forward pass;
* :func:`layer_output`: that output for a batch of images (:func:`layer_outputs`: the
  logits and several layers' outputs from one forward pass);
* :func:`layer_head`: ``head((variables, image), features) -> logits``, the model with
  the layer's output replaced by ``features``. Everything that does not depend on the
  layer (a skip connection from an earlier layer, for example DeepLab v3+'s low-level
  features) is computed from the image as in the forward pass, i.e. held fixed;
* :func:`layer_spectral_gradient`: :func:`spectral_jax.ce_spectral_gradient` of that
  head at the layer's output, for a batch of images in one compiled program.

``apply_fn`` is a predict function ``apply_fn(variables, images [B, H, W, Ci]) -> logits
[B, H, W, C]`` (or a dict holding ``"logits"``), such as ``model.apply`` or
``functools.partial(model.apply, train=False)``: the same convention as
:class:`spectral_jax.evaluation.Evaluator`. ``variables`` and the images are traced
arguments; ``apply_fn`` and the path are static (a ``functools.partial`` is compared by
its function and arguments, so a re-created one compiles nothing new). Images and labels
may be JAX or NumPy arrays or CPU PyTorch tensors; ``data_format="NCHW"`` takes images
``[B, Ci, H, W]`` (PyTorch's layout), moved channels last inside the compiled program.
A layer's output is read as ``[B, h, w, c]``, Flax's layout, whatever its shape.

Example:
  >>> import flax.linen as nn
  >>> class Net(nn.Module):
  ...     @nn.compact
  ...     def __call__(self, x):
  ...         x = nn.relu(nn.Conv(4, (3, 3), name="body")(x))
  ...         return nn.Conv(5, (1, 1), name="classify")(x)
  >>> net = Net()
  >>> images = np.random.default_rng(0).normal(size=(2, 9, 9, 3)).astype(np.float32)
  >>> variables = net.init(jax.random.key(0), images)
  >>> layer_paths(net.apply, variables, images)
  ('body', 'classify')
  >>> layer_output(net.apply, variables, images, "body").shape
  (2, 9, 9, 4)
  >>> labels = np.zeros((2, 9, 9), np.int32)
  >>> rows = layer_spectral_gradient(
  ...     net.apply, variables, images, labels, "body", nu_i=np.array([0, 10]))
  >>> rows.shape  # [B, K, M_in]
  (2, 2, 81)
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Callable, Mapping
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax import _checks
from spectral_jax import frequencies as frequencies_lib
from spectral_jax import spectral_gradient as sg_lib
from spectral_jax._checks import IGNORE_INDEX, DataFormat
from spectral_jax.loss_spectrum import DEFAULT_IGNORE_MODE, IgnoreMode

ApplyFn = Callable[[Any, jax.Array], Any]


# ---------------------------------------------------------------------------------------
# Names and static functions.


def _parse_path(layer) -> tuple[str, ...]:
    if isinstance(layer, str):
        parts = tuple(layer.strip("/").split("/"))
    elif isinstance(layer, tuple) and all(isinstance(part, str) for part in layer):
        parts = layer
    else:
        raise TypeError(
            f"layer must be a module path such as 'decoder/aspp' (module names joined by "
            f"'/'), got {layer!r}."
        )
    if not parts or any(part == "" for part in parts):
        raise ValueError(f"layer must name a module below the root, got {layer!r}.")
    return parts


def _path_name(path: tuple[str, ...]) -> str:
    return "/".join(path)


@dataclasses.dataclass(frozen=True)
class _PartialApply:
    """``functools.partial(function, *args, **keywords)`` compared by value (hashable)."""

    function: Callable
    args: tuple
    keywords: tuple[tuple[str, Any], ...]

    def __call__(self, variables, images):
        return self.function(*self.args, variables, images, **dict(self.keywords))


def _static_apply(apply_fn: ApplyFn) -> ApplyFn:
    """``apply_fn``, with a partial of hashable arguments replaced by an equal-by-value one."""
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable, got {apply_fn!r}.")
    if isinstance(apply_fn, functools.partial):
        static = _PartialApply(
            apply_fn.func, apply_fn.args, tuple(sorted(apply_fn.keywords.items()))
        )
        if sg_lib._is_hashable(static):
            return static
    return apply_fn


def _logits_of(outputs) -> jax.Array:
    if isinstance(outputs, Mapping):
        if "logits" not in outputs:
            raise ValueError(
                f"apply_fn returned a dict without 'logits' (keys {sorted(outputs)}); return "
                "the logits [B, H, W, C] or a dict holding them under 'logits'."
            )
        return outputs["logits"]
    return outputs


def _record_calls(apply_fn, variables, images):
    """Runs ``apply_fn``; returns the ``(path, output)`` of every module ``__call__``."""
    calls: list[tuple[tuple[str, ...], Any]] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = tuple(context.module.path)
        if context.method_name == "__call__" and path:
            calls.append((path, out))
        return out

    with nn.intercept_methods(record):
        logits = _logits_of(apply_fn(variables, images))
    return calls, logits


@functools.lru_cache(maxsize=64)
def _traced_calls(apply_fn, variables_struct, images_struct):
    """Paths, output structures and the logits' structure of a forward pass (cached)."""
    variables = jax.tree.unflatten(*variables_struct)
    paths: list[tuple[str, ...]] = []  # strings cannot leave eval_shape: collected aside

    def outputs_of_calls(variables, images):
        calls, logits = _record_calls(apply_fn, variables, images)
        paths.extend(path for path, _ in calls)
        return [out for _, out in calls], logits

    outputs, logits = jax.eval_shape(outputs_of_calls, variables, images_struct)
    return tuple(paths), tuple(outputs), logits


def _forward_structure(apply_fn, variables, images):
    leaves, treedef = jax.tree.flatten(variables)
    structs = tuple(jax.ShapeDtypeStruct(jnp.shape(v), jnp.result_type(v)) for v in leaves)
    images_struct = jax.ShapeDtypeStruct(jnp.shape(images), jnp.result_type(images))
    if sg_lib._is_hashable(apply_fn):
        return _traced_calls(apply_fn, (treedef, structs), images_struct)
    return _traced_calls.__wrapped__(apply_fn, (treedef, structs), images_struct)


def _check_images(images, data_format: str):
    """``(images as an array, their shape and dtype channels last)``, checked."""
    images = _checks.as_array(images, "images")
    _checks.check_data_format(data_format)
    _checks.check_floating(images, "images")
    if jnp.ndim(images) != 4:
        layout = "[B, H, W, Ci]" if data_format == "NHWC" else "[B, Ci, H, W]"
        raise ValueError(
            f"images must have shape {layout} (a batch), got shape {jnp.shape(images)}."
        )
    shape = _checks.channels_last_shape(jnp.shape(images), data_format)  # [B, H, W, Ci]
    return images, jax.ShapeDtypeStruct(shape, jnp.result_type(images))


def _check_layer(apply_fn, variables, images, layer) -> tuple[tuple[str, ...], Any, Any]:
    """Checks that ``layer`` names a module called once with one array output.

    Returns:
      ``(path, output structure [B, ...], logits structure [B, H, W, C])``.
    """
    path = _parse_path(layer)
    paths, outputs, logits = _forward_structure(apply_fn, variables, images)
    matches = [i for i, found in enumerate(paths) if found == path]
    if not matches:
        names = list(dict.fromkeys(_path_name(p) for p in paths))
        nearest = difflib.get_close_matches(_path_name(path), names, n=5, cutoff=0.0)
        raise ValueError(
            f"layer {_path_name(path)!r} is not a module that a forward pass of apply_fn "
            f"calls; the nearest valid paths are {nearest} (layer_paths lists all "
            f"{len(names)})."
        )
    if len(matches) > 1:
        raise ValueError(
            f"layer {_path_name(path)!r} is called {len(matches)} times in one forward pass "
            "(a shared module); name a module that is called once."
        )
    output = outputs[matches[0]]
    if not isinstance(output, jax.ShapeDtypeStruct):
        raise ValueError(
            f"layer {_path_name(path)!r} returns {jax.tree.structure(output)}, not one array; "
            "name a module whose __call__ returns one feature map [B, h, w, c] (for "
            "example a sub-module of it)."
        )
    if output.ndim != 4 or output.shape[0] != jnp.shape(images)[0]:
        raise ValueError(
            f"layer {_path_name(path)!r} returns shape {output.shape}; a feature map "
            f"[B, h, w, c] with B = {jnp.shape(images)[0]} is needed."
        )
    if jnp.ndim(logits) != 4:
        raise ValueError(f"apply_fn must return logits [B, H, W, C], got shape {logits.shape}.")
    return path, output, logits


# ---------------------------------------------------------------------------------------
# Public API.


def layer_paths(
    apply_fn: ApplyFn, variables: Any, images: chex.Array, *, data_format: DataFormat = "NHWC"
) -> tuple[str, ...]:
    """Every module path a forward pass of ``apply_fn`` calls, in call order.

    Args:
      apply_fn: ``apply_fn(variables, images) -> logits`` (module docstring).
      variables: the model's variables.
      images: ``[B, H, W, Ci]`` (only the shape and dtype are used).
      data_format: as in :func:`layer_output`.

    Returns:
      Paths such as ``"aspp"`` or ``"decoder/fuse1_conv"``, each once.
    """
    _, images = _check_images(images, data_format)
    paths, _, _ = _forward_structure(_static_apply(apply_fn), variables, images)
    return tuple(dict.fromkeys(_path_name(path) for path in paths))


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _layer_outputs(apply_fn, paths, data_format, variables, images):
    images = _checks.to_channels_last(images, data_format)  # [B, H, W, Ci]
    calls, logits = _record_calls(apply_fn, variables, images)
    found = dict(calls)  # each path is called once (checked)
    return logits, tuple(found[path] for path in paths)


def layer_outputs(
    apply_fn: ApplyFn,
    variables: Any,
    images: chex.Array,
    layers: tuple[str | tuple[str, ...], ...] | list[str | tuple[str, ...]],
    *,
    data_format: DataFormat = "NHWC",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The logits and the outputs of several layers, from one forward pass.

    Args:
      apply_fn, variables, images, data_format: as in :func:`layer_output`.
      layers: module paths (:func:`layer_paths`).

    Returns:
      ``(logits [B, H, W, C], {path: [B, h, w, c]})``, one compiled program per
      ``apply_fn``, paths and shapes; under the caller's ``jit`` it is inlined.

    Raises:
      As :func:`layer_output`, for each path.
    """
    images, struct = _check_images(images, data_format)
    apply_fn = _static_apply(apply_fn)
    paths = tuple(_check_layer(apply_fn, variables, struct, layer)[0] for layer in layers)
    logits, outputs = _layer_outputs(apply_fn, paths, data_format, variables, images)
    return logits, {_path_name(path): out for path, out in zip(paths, outputs, strict=True)}


def layer_output(
    apply_fn: ApplyFn,
    variables: Any,
    images: chex.Array,
    layer: str | tuple[str, ...],
    *,
    data_format: DataFormat = "NHWC",
) -> jax.Array:
    """The output of the module at ``layer`` for a batch of images.

    Args:
      apply_fn: ``apply_fn(variables, images) -> logits`` (module docstring).
      variables: the model's variables (traced).
      images: ``[B, H, W, Ci]`` real floating images: JAX or NumPy arrays or CPU
        PyTorch tensors.
      layer: a module path such as ``"decoder/aspp"`` (:func:`layer_paths`).
      data_format: the layout of ``images``: ``"NHWC"`` or ``"NCHW"`` (``[B, Ci, H,
        W]``, moved channels last inside the compiled program: the model always gets
        ``[B, H, W, Ci]``). Static.

    Returns:
      ``[B, h, w, c]`` the layer's output, as ``capture_intermediates`` records it.

    Raises:
      ValueError: for a path no forward pass reaches (the message lists the nearest
        valid ones), a module called more than once or not returning one
        ``[B, h, w, c]`` array; images not ``[B, H, W, Ci]``.
      TypeError: for a ``layer`` that is not a string path; non-floating images.
    """
    _, outputs = layer_outputs(apply_fn, variables, images, [layer], data_format=data_format)
    (output,) = outputs.values()
    return output


@dataclasses.dataclass(frozen=True)
class LayerHead:
    """The model after a layer: ``head((variables, image), features) -> logits``.

    Calling it runs ``apply_fn(variables, image[None])`` with the output of the module at
    ``path`` replaced by ``features[None]`` (a ``flax.linen.intercept_methods``
    interceptor; the module itself is not run), and returns the logits of the one image.
    Pass it to the Jacobian functions with ``params=(variables, image)``: both are traced,
    and the head is static (equal heads compile once).

    Attributes:
      apply_fn: ``apply_fn(variables, images) -> logits``.
      path: the module path, as a tuple of names.
    """

    apply_fn: ApplyFn
    path: tuple[str, ...]

    def __call__(self, inputs: tuple[Any, jax.Array], features: jax.Array) -> jax.Array:
        """Logits ``[H, W, C]`` of one ``image [H, W, Ci]`` with the layer set to ``features``."""
        variables, image = inputs
        replaced = []

        def replace(next_fun, args, kwargs, context):
            if context.method_name == "__call__" and tuple(context.module.path) == self.path:
                replaced.append(True)
                return features[None]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(replace):
            logits = _logits_of(self.apply_fn(variables, image[None]))
        if len(replaced) != 1:
            raise ValueError(
                f"layer {_path_name(self.path)!r} was called {len(replaced)} times in the "
                "forward pass of one image; it must be called exactly once."
            )
        return logits[0]


def layer_head(apply_fn: ApplyFn, layer: str | tuple[str, ...]) -> LayerHead:
    """The rest of the model after ``layer``, as a head for the Jacobian functions.

    Args:
      apply_fn: ``apply_fn(variables, images) -> logits`` (module docstring).
      layer: a module path such as ``"decoder/aspp"``; checked when the head is first
        evaluated (:func:`layer_output` checks it eagerly).

    Returns:
      :class:`LayerHead` ``head((variables, image [H, W, Ci]), features [h, w, c]) ->
      logits [H, W, C]``: ``spectral_jax.ce_spectral_gradient(head, features, labels,
      params=(variables, image))`` is ``dL_ce(nu_i)/dx_hat(nu_j)`` at the layer.
    """
    return LayerHead(_static_apply(apply_fn), _parse_path(layer))


@functools.partial(
    jax.jit,
    static_argnums=0,
    static_argnames=("ignore_index", "ignore_mode", "chunk_size", "mode", "data_format"),
)
def _layer_spectral_gradient(
    head,
    variables,
    images,
    labels,
    nu_i,
    in_projection,
    *,
    ignore_index,
    ignore_mode,
    chunk_size,
    mode,
    data_format,
):
    images = _checks.to_channels_last(images, data_format)  # [B, H, W, Ci]
    _, (features,) = _layer_outputs(head.apply_fn, (head.path,), "NHWC", variables, images)

    def one(image, feature_map, image_labels):  # one image: [K, M_in] (or [M_out, M_in])
        return sg_lib.ce_spectral_gradient(
            head,
            feature_map,
            image_labels,
            params=(variables, image),
            data_format="HWC",  # a layer's output [h, w, c], whatever its shape
            nu_i=nu_i,
            in_projection=in_projection,
            ignore_index=ignore_index,
            ignore_mode=ignore_mode,
            chunk_size=chunk_size,
            mode=mode,
        )

    return jax.vmap(one)(images, features, labels)


def layer_spectral_gradient(
    apply_fn: ApplyFn,
    variables: Any,
    images: chex.Array,
    labels: chex.Array,
    layer: str | tuple[str, ...],
    *,
    nu_i: chex.Array | None = None,
    in_projection: chex.Array | None = None,
    ignore_index: int = IGNORE_INDEX,
    ignore_mode: IgnoreMode = DEFAULT_IGNORE_MODE,
    chunk_size: int = 64,
    mode: sg_lib.Mode = "forward",
    data_format: DataFormat = "NHWC",
) -> jax.Array:
    r"""Spectral gradient of the CE at a named layer, ``dL_ce(nu_i)/dx_hat(nu_j)`` (Eq. 11).

    .. math::

       G_b[\nu_i, \nu_j] = \frac{\partial \mathcal{L}_{ce}(\nu_i)}{\partial \hat x_b(\nu_j)}

    for every image ``b``, with ``x_b`` the output of the module at ``layer`` and the rest
    of the model (:func:`layer_head`) as the head: :func:`spectral_jax.ce_spectral_gradient`
    at ``features = layer_output(...)[b]`` with ``params=(variables, images[b])``. The
    forward pass, the layer's output and the ``vmap`` over the batch are one compiled
    program, keyed on ``apply_fn``, the path, the shapes and the settings (new variables
    or images compile nothing).

    Args:
      apply_fn: ``apply_fn(variables, images) -> logits`` (module docstring).
      variables: the model's variables (traced).
      images: ``[B, H, W, Ci]`` real floating images (arrays or CPU PyTorch tensors).
      labels: ``[B, H, W]`` integer labels in ``[0, C)`` or ``ignore_index``.
      layer: a module path such as ``"decoder/aspp"`` (:func:`layer_paths`).
      data_format: the layout of ``images``, as in :func:`layer_output`.
      nu_i, in_projection, ignore_index, ignore_mode, chunk_size, mode: as in
        :func:`spectral_jax.ce_spectral_gradient` (``nu_i`` index the ``H W`` frequencies
        of the logits' grid).

    Returns:
      ``[B, K, h w]`` complex rows (``[B, H W, h w]`` for ``nu_i=None``), flattened DFT
      order of the layer's ``h x w`` grid.

    Raises:
      ValueError, TypeError: as :func:`layer_output` and
        :func:`spectral_jax.ce_spectral_gradient`.
    """
    images, struct = _check_images(images, data_format)
    labels = _checks.as_array(labels, "labels")
    in_projection = _checks.as_array(in_projection, "in_projection")
    apply_fn = _static_apply(apply_fn)
    path, output, logits = _check_layer(apply_fn, variables, struct, layer)
    sg_lib._check_chunk_and_mode(chunk_size, mode)
    _checks.check_ignore_mode(ignore_mode)
    checked_labels = labels if _checks.is_traced(labels) else np.asarray(labels)
    _checks.check_logits_and_labels(logits, checked_labels, ignore_index=ignore_index)
    sg_lib._check_projection(in_projection, output.shape[-1], "in_projection")
    if nu_i is not None:
        nu_i = frequencies_lib.flat_frequency_indices(
            nu_i, logits.shape[1:3], name="nu_i", spectrum="CE"
        )
    return _layer_spectral_gradient(
        LayerHead(apply_fn, path),
        variables,
        images,
        labels,
        nu_i,
        in_projection,
        ignore_index=ignore_index,
        ignore_mode=ignore_mode,
        chunk_size=chunk_size,
        mode=mode,
        data_format=data_format,
    )
