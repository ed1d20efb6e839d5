"""The stacked and the per-block forms of a ResNet's variables.

A ResNet with ``scan_blocks=True`` (:mod:`spectral_jax.models.resnet`) runs the blocks
after the first of a stage as one module ``layer{s}_blocks`` whose variables carry a
leading block axis; slice ``i`` is the block that the unrolled model names
``layer{s}_block{i + 1}``. :func:`unstack_blocks` and :func:`stack_blocks` move values
between the two forms; pruning plans, ``widths`` and torchvision checkpoints use the
per-block paths.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["stack_blocks", "unstack_blocks"]

_STACKED_NAME = re.compile(r"layer(\d+)_blocks")
_BLOCK_NAME = re.compile(r"layer(\d+)_block(\d+)")


def _slice_leaf(leaf: Any, index: int) -> Any:
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
    return leaf[index]


def _stack_leaves(*leaves: Any) -> Any:
    first = leaves[0]
    if isinstance(first, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct((len(leaves), *first.shape), first.dtype)
    if all(isinstance(leaf, np.ndarray) for leaf in leaves):
        return np.stack(leaves)
    return jnp.stack(leaves)


def _leading_size(tree: Any, path: str) -> int:
    sizes = {int(np.shape(leaf)[0]) for leaf in jax.tree.leaves(tree)}
    if len(sizes) != 1:
        raise ValueError(f"variables: the stacked blocks at {path!r} have leading sizes {sizes}.")
    return sizes.pop()


def _unstack_node(node: Any, path: str) -> Any:
    if not isinstance(node, Mapping):
        return node
    result = {}
    for key, value in node.items():
        match = _STACKED_NAME.fullmatch(key) if isinstance(key, str) else None
        if match is None:
            result[key] = _unstack_node(value, f"{path}/{key}" if path else key)
            continue
        stage = match.group(1)
        for index in range(_leading_size(value, f"{path}/{key}")):
            name = f"layer{stage}_block{index + 1}"
            if name in node:
                raise ValueError(f"variables hold both {key!r} and {name!r} under {path!r}.")
            result[name] = jax.tree.map(lambda leaf, i=index: _slice_leaf(leaf, i), value)
    return result


def unstack_blocks(variables: Any) -> Any:
    """The per-block form of variables: every ``layer{s}_blocks`` split into its blocks.

    Slice ``i`` of the stacked module (leading axis) becomes ``layer{s}_block{i + 1}``,
    wherever the stacked module sits in the tree (``params/encoder/layer3_blocks``, or
    ``params/layer3_blocks`` for a bare :class:`ResNet`), in every collection. Variables
    without stacked blocks come back unchanged (as plain dicts), so the function is
    idempotent. Pure and jittable; leaves may be arrays or ``jax.ShapeDtypeStruct``.

    Args:
      variables: a tree of mappings, e.g. ``{"params": ..., "batch_stats": ...}`` of a
        model with ``scan_blocks=True``.

    Returns:
      The same tree with per-block paths (``layer3_block5/conv1/kernel``); a
      ``FrozenDict`` input gives a ``FrozenDict``.

    Raises:
      ValueError: if a stacked module's leaves disagree in their leading size, or a
        block is present both stacked and unrolled.

    Example:
      >>> from spectral_jax.models import create_resnet
      >>> model = create_resnet("resnet50")
      >>> x = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32)
      >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
      >>> variables["params"]["layer3_blocks"]["conv1"]["kernel"].shape  # [L - 1, ...]
      (5, 1, 1, 1024, 256)
      >>> unstack_blocks(variables)["params"]["layer3_block5"]["conv1"]["kernel"].shape
      (1, 1, 1024, 256)
    """
    frozen = isinstance(variables, flax.core.FrozenDict)
    result = _unstack_node(flax.core.unfreeze(variables) if frozen else variables, "")
    return flax.core.freeze(result) if frozen else result


def _stacked_paths(like: Any) -> set[tuple[str, ...]]:
    """Paths (parent keys and ``layer{s}_blocks``) of the stacked modules in ``like``."""
    found = set()

    def visit(node: Any, path: tuple[str, ...]) -> None:
        if not isinstance(node, Mapping):
            return
        for key, value in node.items():
            if isinstance(key, str) and _STACKED_NAME.fullmatch(key):
                found.add((*path, key))
            else:
                visit(value, (*path, key))

    visit(like, ())
    return found


def _stack_node(node: Any, path: tuple[str, ...], wanted: set[tuple[str, ...]] | None) -> Any:
    if not isinstance(node, Mapping):
        return node
    stages: dict[str, list[int]] = {}
    for key in node:
        match = _BLOCK_NAME.fullmatch(key) if isinstance(key, str) else None
        if match is not None and int(match.group(2)) > 0:
            stages.setdefault(match.group(1), []).append(int(match.group(2)))
    stacked = {}
    for stage, blocks in stages.items():
        name = f"layer{stage}_blocks"
        if wanted is not None and (*path, name) not in wanted:
            continue
        where = "/".join((*path, name))
        if sorted(blocks) != list(range(1, len(blocks) + 1)):
            raise ValueError(
                f"variables: the blocks of layer{stage} under {'/'.join(path)!r} are "
                f"{sorted(blocks)}, not 1, 2, ...: they cannot be stacked as {where!r}."
            )
        if name in node:
            raise ValueError(f"variables hold both {name!r} and unrolled blocks at {where!r}.")
        trees = [node[f"layer{stage}_block{b}"] for b in range(1, len(blocks) + 1)]
        layouts = {
            (jax.tree.structure(tree), tuple(np.shape(leaf) for leaf in jax.tree.leaves(tree)))
            for tree in trees
        }
        if len(layouts) != 1:
            raise ValueError(
                f"variables: the blocks of layer{stage} under {'/'.join(path)!r} differ in "
                "structure or shape (a pruned model?) and cannot be stacked."
            )
        stacked[stage] = jax.tree.map(_stack_leaves, *trees)
    result = {}
    for key, value in node.items():
        match = _BLOCK_NAME.fullmatch(key) if isinstance(key, str) else None
        if match is not None and match.group(1) in stacked and int(match.group(2)) > 0:
            continue
        result[key] = _stack_node(value, (*path, key), wanted)
    for stage, tree in stacked.items():
        result[f"layer{stage}_blocks"] = tree
    return result


def stack_blocks(variables: Any, *, like: Any = None) -> Any:
    """The stacked form of per-block variables, the inverse of :func:`unstack_blocks`.

    Blocks ``layer{s}_block1``, ``layer{s}_block2``, ... of a stage become one
    ``layer{s}_blocks`` whose leaves are the blocks' leaves stacked on a new leading
    axis; ``layer{s}_block0`` stays as it is. Pure and jittable; leaves may be arrays
    or ``jax.ShapeDtypeStruct``.

    Args:
      variables: a tree of mappings with per-block paths, e.g. from
        :func:`unstack_blocks` or a torchvision conversion.
      like: a variables tree of the target model (arrays or shapes): only the stages
        that are stacked in ``like`` (same parent path, ``layer{s}_blocks``) are
        stacked, so that the result has its layout; ``None`` stacks every stage with
        more than one block.

    Returns:
      The stacked tree; a ``FrozenDict`` input gives a ``FrozenDict``.

    Raises:
      ValueError: if a stage to stack has missing blocks, or blocks that differ in
        structure or shape (a hard-pruned model's), or already a stacked module.

    Example:
      >>> from spectral_jax.models import create_resnet
      >>> model = create_resnet("resnet50")
      >>> x = jax.ShapeDtypeStruct((1, 33, 33, 3), jnp.float32)
      >>> variables = jax.eval_shape(model.init, jax.random.key(0), x)
      >>> per_block = unstack_blocks(variables)
      >>> jax.tree.structure(stack_blocks(per_block)) == jax.tree.structure(variables)
      True
    """
    wanted = None if like is None else _stacked_paths(like)
    frozen = isinstance(variables, flax.core.FrozenDict)
    result = _stack_node(flax.core.unfreeze(variables) if frozen else variables, (), wanted)
    return flax.core.freeze(result) if frozen else result
