"""Trained segmentation networks from PyTorch checkpoints: key layouts and conversion.

Three families of published PyTorch segmentation networks map one to one onto
:class:`spectral_jax.models.DeepLabV3Plus` with the options of a registry entry
(:data:`LAYOUT_SETTINGS`, :data:`spectral_jax.models.registry.MODELS`):

============================ ======================================================== =========
layout (registry name)       PyTorch model                                            prefix
============================ ======================================================== =========
``torchvision_deeplabv3``    ``torchvision.models.segmentation.deeplabv3_resnet50``   backbone.
                             / ``_resnet101``: DeepLab v3 (arXiv:1706.05587),
                             output stride 8, optional auxiliary FCN head
``torchvision_fcn``          ``fcn_resnet50`` / ``fcn_resnet101``: FCN                backbone.
                             (arXiv:1411.4038), output stride 8
``smp_deeplabv3plus``        ``segmentation_models_pytorch.DeepLabV3Plus`` with a     encoder.
                             ResNet encoder: separable ASPP and decoder, one
                             decoder convolution, ``align_corners=True``
``smp_deeplabv3``            ``segmentation_models_pytorch.DeepLabV3``                encoder.
``pytorch_deeplab_xception`` the DeepLab v3+ ResNet of the widely used                backbone.
                             ``pytorch-deeplab-xception`` repository: multi-grid
                             ``(1, 2, 4)``, ``align_corners=True``, two decoder
                             convolutions; training checkpoints
                             ``{"state_dict", "optimizer", "epoch", ...}``
============================ ======================================================== =========

The backbone's keys are torchvision's ResNet keys
(:mod:`spectral_jax.models.pretrained`) under the prefix; the heads' keys are listed in
the tables of :func:`torch_module_names`. Convolution weights ``[O, I / groups, Kh, Kw]``
become kernels ``[Kh, Kw, I / groups, O]`` (depthwise ones ``[Kh, Kw, 1, C]``),
BatchNorm ``weight``/``bias``/``running_mean``/``running_var`` the ``scale``/``bias``
params and ``mean``/``var`` batch statistics. The converted variables have the target
model's own layout (stacked blocks where it stacks them), so that they can be trained,
truncated and pruned like any model here; :func:`flax_to_torch_state_dict` is the exact
inverse.

Example (not run as a doctest: it needs torchvision's COCO-VOC checkpoint, a download)::

    model = create_model(ml_collections.ConfigDict(
        {"name": "torchvision_deeplabv3", "backbone": "resnet101", "aux_head": True}),
        num_classes=21)
    variables = load_segmentation_checkpoint(
        "deeplabv3_resnet101_coco-586e9e4e.pth", model, layout="torchvision_deeplabv3")
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import numpy as np
from flax import traverse_util

from spectral_jax.models.block_stacking import stack_blocks, unstack_blocks
from spectral_jax.models.deeplab import DeepLabV3Plus
from spectral_jax.models.pretrained import (
    _LEAF_NAMES,
    Backend,
    _converted_tensor,
    _key_problems,
    _listing,
    _torch_key,
    _variable_shapes,
    load_checkpoint,
)
from spectral_jax.models.resnet import RESNET_CONFIGS

StateDict = dict[str, np.ndarray]

#: Registry name -> the :class:`DeepLabV3Plus` options of that PyTorch family; the
#: config's fields (``backbone``, ``aux_head``, ``output_stride``...) override them.
LAYOUT_SETTINGS: dict[str, dict[str, Any]] = {
    "torchvision_deeplabv3": dict(head="deeplabv3", output_stride=8),
    "torchvision_fcn": dict(head="fcn", output_stride=8),
    "smp_deeplabv3plus": dict(
        output_stride=16,
        atrous_rates=(12, 24, 36),
        separable_aspp=True,
        separable_decoder=True,
        aspp_output_conv=True,
        decoder_convs=1,
        align_corners=True,
        first_block_dilation="stage",
    ),
    "smp_deeplabv3": dict(
        head="deeplabv3",
        output_stride=8,
        atrous_rates=(12, 24, 36),
        align_corners=True,
        first_block_dilation="stage",
    ),
    "pytorch_deeplab_xception": dict(
        output_stride=16,
        align_corners=True,
        first_block_dilation="stage",
        multi_grid=(1, 2, 4),
    ),
}
LAYOUTS: tuple[str, ...] = tuple(LAYOUT_SETTINGS)

_BACKBONE_PREFIXES = {
    "torchvision_deeplabv3": "backbone.",
    "torchvision_fcn": "backbone.",
    "smp_deeplabv3plus": "encoder.",
    "smp_deeplabv3": "encoder.",
    "pytorch_deeplab_xception": "backbone.",
}
# Entries a checkpoint may hold that no model variable stands for.
_IGNORED = re.compile(r".*\.num_batches_tracked$|^(backbone|encoder)\.fc\.")
_AUX_KEYS = re.compile(r"^aux_classifier\.")


# The reference repository's decoder before it gained its two dropouts: last_conv
# Sequential(Conv, BN, ReLU, Conv, BN, ReLU, Conv), indices 0 1 3 4 6 instead of 0 1 4 5 8.
_EARLIER_DECODER_INDICES = {"3": "4", "4": "5", "6": "8"}
_EARLIER_DECODER_KEY = re.compile(r"^decoder\.last_conv\.([346])\.")


def _renumber_earlier_decoder(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The keys of the repository's earlier decoder (no dropouts) in today's numbering."""
    if "decoder.last_conv.8.weight" in state_dict or "decoder.last_conv.6.weight" not in state_dict:
        return state_dict
    return {
        _EARLIER_DECODER_KEY.sub(
            lambda match: f"decoder.last_conv.{_EARLIER_DECODER_INDICES[match.group(1)]}.", key
        ): value
        for key, value in state_dict.items()
    }


def _check_layout(layout: str) -> None:
    if layout not in LAYOUT_SETTINGS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")


def _torchvision_aspp(prefix: str, separable: bool) -> dict[str, str]:
    """torchvision's / segmentation_models_pytorch's ASPP module names under ``prefix``."""
    names = {"aspp/branch0_conv": f"{prefix}convs.0.0", "aspp/branch0_bn": f"{prefix}convs.0.1"}
    for i in (1, 2, 3):
        if separable:  # ASPPSeparableConv: Sequential(SeparableConv2d(dw, pw), BN, ReLU)
            names[f"aspp/branch{i}_depthwise"] = f"{prefix}convs.{i}.0.0"
            names[f"aspp/branch{i}_conv"] = f"{prefix}convs.{i}.0.1"
        else:  # ASPPConv: Sequential(Conv2d, BN, ReLU)
            names[f"aspp/branch{i}_conv"] = f"{prefix}convs.{i}.0"
        names[f"aspp/branch{i}_bn"] = f"{prefix}convs.{i}.1"
    names |= {
        # ASPPPooling: Sequential(AdaptiveAvgPool2d, Conv2d, BN, ReLU)
        "aspp/pool_conv": f"{prefix}convs.4.1",
        "aspp/pool_bn": f"{prefix}convs.4.2",
        "aspp/project_conv": f"{prefix}project.0",
        "aspp/project_bn": f"{prefix}project.1",
    }
    return names


_AUX_HEAD = {
    # torchvision's FCNHead: Sequential(Conv2d, BN, ReLU, Dropout, Conv2d)
    "aux_decoder/hidden_conv": "aux_classifier.0",
    "aux_decoder/hidden_bn": "aux_classifier.1",
    "aux_decoder/classifier": "aux_classifier.4",
}


def torch_module_names(layout: str, *, separable_aspp: bool = False) -> dict[str, str]:
    """Flax module path -> PyTorch module name for the heads of a layout.

    The backbone (``encoder/...``) is not listed: it is torchvision's ResNet under
    :data:`_BACKBONE_PREFIXES`.

    Args:
      layout: one of :data:`LAYOUTS`.
      separable_aspp: whether the ASPP's atrous branches are depthwise-separable.

    Raises:
      ValueError: for an unknown layout.
    """
    _check_layout(layout)
    if layout == "torchvision_deeplabv3":
        # DeepLabHead: Sequential(ASPP, Conv2d, BN, ReLU, Conv2d)
        return {
            **_torchvision_aspp("classifier.0.", separable_aspp),
            "decoder/hidden_conv": "classifier.1",
            "decoder/hidden_bn": "classifier.2",
            "decoder/classifier": "classifier.4",
            **_AUX_HEAD,
        }
    if layout == "torchvision_fcn":
        return {
            "decoder/hidden_conv": "classifier.0",
            "decoder/hidden_bn": "classifier.1",
            "decoder/classifier": "classifier.4",
            **_AUX_HEAD,
        }
    if layout == "smp_deeplabv3plus":
        # decoder.aspp: Sequential(ASPP, SeparableConv2d(dw, pw), BN, ReLU)
        return {
            **_torchvision_aspp("decoder.aspp.0.", separable_aspp),
            "aspp/output_depthwise": "decoder.aspp.1.0",
            "aspp/output_conv": "decoder.aspp.1.1",
            "aspp/output_bn": "decoder.aspp.2",
            "decoder/low_level_conv": "decoder.block1.0",
            "decoder/low_level_bn": "decoder.block1.1",
            "decoder/fuse1_depthwise": "decoder.block2.0.0",
            "decoder/fuse1_conv": "decoder.block2.0.1",
            "decoder/fuse1_bn": "decoder.block2.1",
            "decoder/classifier": "segmentation_head.0",
        }
    if layout == "smp_deeplabv3":
        return {
            **_torchvision_aspp("decoder.aspp.", separable_aspp),
            "decoder/hidden_conv": "decoder.conv",
            "decoder/hidden_bn": "decoder.bn",
            "decoder/classifier": "segmentation_head.0",
        }
    # pytorch_deeplab_xception: _ASPPModule(atrous_conv, bn), global_avg_pool
    # Sequential(pool, Conv2d, BN, ReLU), conv1 + bn1 projection; the decoder's conv1 +
    # bn1 low-level projection and last_conv Sequential(Conv, BN, ReLU, Dropout, Conv,
    # BN, ReLU, Dropout, Conv).
    names = {}
    for i in range(4):
        names[f"aspp/branch{i}_conv"] = f"aspp.aspp{i + 1}.atrous_conv"
        names[f"aspp/branch{i}_bn"] = f"aspp.aspp{i + 1}.bn"
    return names | {
        "aspp/pool_conv": "aspp.global_avg_pool.1",
        "aspp/pool_bn": "aspp.global_avg_pool.2",
        "aspp/project_conv": "aspp.conv1",
        "aspp/project_bn": "aspp.bn1",
        "decoder/low_level_conv": "decoder.conv1",
        "decoder/low_level_bn": "decoder.bn1",
        "decoder/fuse1_conv": "decoder.last_conv.0",
        "decoder/fuse1_bn": "decoder.last_conv.1",
        "decoder/fuse2_conv": "decoder.last_conv.4",
        "decoder/fuse2_bn": "decoder.last_conv.5",
        "decoder/classifier": "decoder.last_conv.8",
    }


def _key_table(shapes: Mapping[str, Any], layout: str) -> dict[tuple[str, ...], str]:
    """``(collection, *per-block path)`` -> PyTorch key, for every variable of ``shapes``."""
    flat = {
        (collection, *path): leaf
        for collection, tree in unstack_blocks(shapes).items()
        for path, leaf in traverse_util.flatten_dict(dict(tree)).items()
    }
    modules = {"/".join(path[1:-1]) for path in flat}
    heads = torch_module_names(layout, separable_aspp="aspp/branch1_depthwise" in modules)
    prefix = _BACKBONE_PREFIXES[layout]
    table = {}
    for collection, *path in flat:
        if path[0] == "encoder":
            table[(collection, *path)] = prefix + _torch_key(collection, tuple(path[1:]))
            continue
        module = "/".join(path[:-1])
        if module not in heads or (collection, path[-1]) not in _LEAF_NAMES:
            raise ValueError(
                f"the variable {collection}/{'/'.join(path)} has no counterpart in the "
                f"{layout!r} layout (a model built with other options?)."
            )
        table[(collection, *path)] = f"{heads[module]}.{_LEAF_NAMES[collection, path[-1]]}"
    return table


def _torch_shape(path: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    if path[-1] == "kernel":  # [Kh, Kw, I, O] -> [O, I, Kh, Kw]
        return (shape[3], shape[2], *shape[:2])
    return tuple(shape)


def _stage_blocks(keys, prefix: str) -> tuple[int, ...]:
    """Blocks per ResNet stage that the keys under ``prefix`` hold."""
    counts = [0, 0, 0, 0]
    pattern = re.compile(re.escape(prefix) + r"layer([1-4])\.(\d+)\.")
    for key in keys:
        match = pattern.match(key)
        if match:
            stage = int(match.group(1)) - 1
            counts[stage] = max(counts[stage], int(match.group(2)) + 1)
    return tuple(counts)


def _depth_name(stage_sizes: tuple[int, ...]) -> str:
    for name, config in RESNET_CONFIGS.items():
        if tuple(config.stage_sizes) == tuple(stage_sizes):
            return f"{stage_sizes} ({name})"
    return str(stage_sizes)


def _diagnosis(state_dict, table, shapes, layout) -> list[str]:
    """What differs, in words: backbone depth and class count, before the key lists."""
    problems = []
    prefix = _BACKBONE_PREFIXES[layout]
    model_keys = set(table.values())
    found, wanted = _stage_blocks(state_dict, prefix), _stage_blocks(model_keys, prefix)
    if any(found) and found != wanted:
        problems.append(
            f"backbone depth differs: the checkpoint has {_depth_name(found)} blocks per "
            f"stage, the model {_depth_name(wanted)}"
        )
    for path, key in table.items():
        if path[1:] in (("decoder", "classifier", "bias"),) and key in state_dict:
            checkpoint_classes = int(np.shape(state_dict[key])[0])
            model_classes = int(
                traverse_util.flatten_dict(unstack_blocks(shapes)["params"])[path[1:]].shape[0]
            )
            if checkpoint_classes != model_classes:
                problems.append(
                    f"number of classes differs: the checkpoint has {checkpoint_classes} "
                    f"({key}), the model {model_classes}"
                )
    return problems


def torch_to_flax_variables(
    state_dict: Mapping[str, np.ndarray],
    target: nn.Module | Mapping[str, Any],
    *,
    layout: str,
) -> dict[str, Any]:
    """Converts a PyTorch segmentation state dict of ``layout`` into ``target``'s variables.

    Args:
      state_dict: ``{key: array}`` in PyTorch's layouts (keys as the PyTorch model's
        ``state_dict()``; a ``module.`` prefix of ``DataParallel`` is removed, and the
        reference repository's earlier decoder numbering, ``decoder.last_conv.{0,1,3,4,6}``
        before its dropouts were added, is read as today's ``{0,1,4,5,8}``).
      target: the Flax model (a :class:`DeepLabV3Plus` with the layout's options) or its
        variables (arrays or ``jax.ShapeDtypeStruct``).
      layout: one of :data:`LAYOUTS`.

    Returns:
      ``{"params": ..., "batch_stats": ...}`` with ``target``'s structure and dtypes
      (stacked blocks where it has them), as ``jax.Array`` leaves.

    Raises:
      ValueError: before converting anything, naming what differs: the backbone depth
        (blocks per stage), the number of classes, and every missing, unexpected and
        mismatched (shape or non-floating dtype) key. ``*.num_batches_tracked`` and a
        backbone's ``fc.*`` are ignored, and so is torchvision's ``aux_classifier.*``
        when the model has no auxiliary head.
    """
    _check_layout(layout)
    state_dict = dict(state_dict)
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    if layout == "pytorch_deeplab_xception":
        state_dict = _renumber_earlier_decoder(state_dict)
    shapes = _variable_shapes(target)
    table = _key_table(shapes, layout)
    leaves = {
        (collection, *path): leaf
        for collection, tree in unstack_blocks(shapes).items()
        for path, leaf in traverse_util.flatten_dict(dict(tree)).items()
    }
    has_aux = any(path[1] == "aux_decoder" for path in table)
    converted, missing, used = {}, [], set()
    mismatched: list[str] = []
    for path, key in table.items():
        leaf = leaves[path]
        if key not in state_dict:
            missing.append(key)
            continue
        used.add(key)
        expected = _torch_shape(path, tuple(leaf.shape))
        value = _converted_tensor(key, state_dict[key], expected, path, leaf, mismatched)
        if value is not None:
            converted[path] = value
    unexpected = sorted(
        key
        for key in state_dict
        if key not in used and not _IGNORED.match(key) and (has_aux or not _AUX_KEYS.match(key))
    )
    if missing or unexpected or mismatched:
        problems = _diagnosis(state_dict, table, shapes, layout)
        problems += _key_problems(missing, unexpected, mismatched)
        raise ValueError(
            f"the checkpoint does not match the {layout!r} model; " + "; ".join(problems) + "."
        )
    variables = traverse_util.unflatten_dict(converted)
    return stack_blocks(variables, like=shapes)


def flax_to_torch_state_dict(variables: Mapping[str, Any], *, layout: str) -> StateDict:
    """The PyTorch state dict of ``layout`` for Flax variables: the inverse conversion.

    ``*.num_batches_tracked`` are not written (``load_state_dict`` keeps the module's).

    Args:
      variables: ``{"params", "batch_stats", ...}`` of a model with the layout's options.
      layout: one of :data:`LAYOUTS`.

    Returns:
      ``{key: float32 array}`` in PyTorch's layouts, in the model's variable order.

    Raises:
      ValueError: for a variable without a counterpart in the layout.
    """
    _check_layout(layout)
    shapes = _variable_shapes(variables)
    table = _key_table(shapes, layout)
    flat = {
        (collection, *path): leaf
        for collection, tree in unstack_blocks(
            {c: variables[c] for c in ("params", "batch_stats")}
        ).items()
        for path, leaf in traverse_util.flatten_dict(dict(tree)).items()
    }
    state_dict = {}
    for path, key in table.items():
        value = np.array(flat[path], np.float32)  # a writable copy
        if path[-1] == "kernel":
            value = np.ascontiguousarray(np.transpose(value, (3, 2, 0, 1)))
        state_dict[key] = value
    return state_dict


def torch_state_dict_shapes(target: nn.Module | Mapping[str, Any], *, layout: str) -> dict:
    """``{PyTorch key: shape}`` that a checkpoint of ``layout`` for ``target`` must hold.

    Shapes only (``jax.eval_shape``), so that a model's key layout can be checked
    against its PyTorch counterpart without weights. ``*.num_batches_tracked`` are left
    out.

    Raises:
      ValueError: for an unknown layout or a variable without a counterpart in it.
    """
    _check_layout(layout)
    shapes = _variable_shapes(target)
    leaves = {
        (collection, *path): leaf
        for collection, tree in unstack_blocks(shapes).items()
        for path, leaf in traverse_util.flatten_dict(dict(tree)).items()
    }
    return {
        key: _torch_shape(path, tuple(leaves[path].shape))
        for path, key in _key_table(shapes, layout).items()
    }


def checkpoint_state_dict(checkpoint: Any, *, source: str = "checkpoint") -> StateDict:
    """The model's state dict inside a loaded checkpoint.

    A flat ``{key: array}`` is returned as it is; a training checkpoint
    ``{"state_dict": {...}, "optimizer": ..., "epoch": ..., ...}`` (the layout the
    reference DeepLab v3+ repository writes) gives its ``"state_dict"``.

    Raises:
      ValueError: naming ``source`` when there is no flat mapping from names to arrays.
    """
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise ValueError(f"{source} holds no state dict (got {type(checkpoint).__name__}).")
    bad = [key for key, value in checkpoint.items() if not isinstance(value, np.ndarray)]
    if bad:
        raise ValueError(
            f"{source}: entries that are not tensors: {_listing([str(k) for k in bad])}; "
            "expected a state dict or {'state_dict': ..., 'optimizer': ..., 'epoch': ...}."
        )
    return dict(checkpoint)


def load_segmentation_checkpoint(
    path: str | os.PathLike,
    target: nn.Module | Mapping[str, Any],
    *,
    layout: str,
    backend: Backend = "auto",
) -> dict[str, Any]:
    """Reads a PyTorch segmentation checkpoint file into ``target``'s Flax variables.

    Args:
      path: a ``torch.save`` file (zip or legacy) of a state dict or of a training
        checkpoint ``{"state_dict", "optimizer", "epoch", ...}``; read without running
        pickled code (:func:`spectral_jax.models.pretrained.load_checkpoint`).
      target: the model (:class:`DeepLabV3Plus` with the layout's options) or its variables.
      layout: one of :data:`LAYOUTS`.
      backend: how to read the file (:func:`~spectral_jax.models.pretrained.load_checkpoint`).

    Returns:
      ``{"params": ..., "batch_stats": ...}`` (:func:`torch_to_flax_variables`).

    Raises:
      ValueError: for an unreadable file or one with code in its pickle, and as
        :func:`torch_to_flax_variables` for a checkpoint of another model.
    """
    _check_layout(layout)
    source = f"checkpoint {os.fspath(path)!r}"
    state_dict = checkpoint_state_dict(load_checkpoint(path, backend=backend), source=source)
    return torch_to_flax_variables(state_dict, target, layout=layout)


def create_layout_model(layout: str, **settings) -> DeepLabV3Plus:
    """A :class:`DeepLabV3Plus` with the options of ``layout`` and ``settings`` over them."""
    _check_layout(layout)
    return DeepLabV3Plus(**(LAYOUT_SETTINGS[layout] | settings))
