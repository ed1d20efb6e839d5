"""The training step and the pruning step of the loop.

Both are pure: the loop (:func:`spectral_jax.training.train_and_evaluate`) binds their
settings with ``functools.partial`` and compiles them with ``jax.jit``, donating the
state. The evaluation step is :func:`spectral_jax.evaluation.eval_step`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from spectral_jax._checks import IGNORE_INDEX
from spectral_jax.evaluation.metrics import cross_entropy_loss
from spectral_jax.models import pruning as pruning_lib
from spectral_jax.training import train_state as state_lib

Batch = dict[str, Any]

#: The collections a model may sow into during training: ``"losses"`` are added to the
#: cross-entropy (a model's own regularisers), ``"metrics"`` are only reported.
SOWN_COLLECTIONS = ("losses", "metrics")


def _sown(updates: dict[str, Any], collection: str) -> dict[str, jax.Array]:
    """``{name: value}`` of what the model sowed in ``collection`` (``/``-joined paths)."""
    flat = traverse_util.flatten_dict(dict(updates.get(collection, {})), sep="/")
    # sow keeps a tuple of the values sown under one name; one call per step sows one.
    return {name: sum(values[1:], values[0]) for name, values in flat.items()}


def train_step(
    state: state_lib.TrainState,
    batch: Batch,
    *,
    learning_rate_fn: optax.Schedule,
    dropout_key: jax.Array,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
    r"""One SGD step: loss, gradient, optimizer update and metrics.

    Wrap it as ``jax.jit(functools.partial(train_step, ...), donate_argnums=0)``. The
    dropout key of step ``t`` is ``fold_in(dropout_key, t)``, so a resumed run draws the
    same masks as an uninterrupted one; a model's other random stream, ``"gumbel"`` (the
    frequency gate of :class:`spectral_jax.models.DCTDeepLabV3Plus`), uses
    ``fold_in(fold_in(dropout_key, t), 1)``.

    The objective is the pixel cross-entropy (:func:`spectral_jax.evaluation.metrics.
    cross_entropy_loss`) plus whatever the model sowed in its ``"losses"`` collection,

    .. math::

       \mathcal{L} = \mathrm{CE} + \sum_k \ell_k,

    e.g. the DCT model's ``gate_weight * gate_regularizer(gates)`` (Xu et al. 2020,
    Eq. 3); the values it sowed in ``"metrics"`` are reported as they are.

    Args:
      state: the train state (its ``batch_stats`` are replaced by the batch's update).
      batch: ``{"image": [B, H, W, 3] float32, "label": [B, H, W] int32}``; for the DCT
        model ``"image"`` holds the normalised coefficients ``[B, H / s, W / s, 192]``
        (``s`` 4 or 8, the model's layout).
      learning_rate_fn: the schedule, only to report the step's learning rate.
      dropout_key: base key of the dropout masks (and of the gate's Gumbel noise).
      ignore_index: label of pixels left out of the loss and the accuracy.

    Returns:
      ``(new_state, metrics)`` with scalar ``loss`` (the cross-entropy, without the L2
      term and the sown losses; NaN, and so are the gradient and the new parameters,
      when a label lies outside ``[0, C)`` and is not ``ignore_index``: see
      :func:`spectral_jax.evaluation.metrics.cross_entropy_loss`),
      ``num_invalid_labels`` (the count of such labels), ``accuracy`` (over valid
      pixels), ``learning_rate`` and ``grad_norm``; when the model sowed losses also ``total_loss`` (the objective), and
      every sown metric under its name (the gate's ``gate_regularizer``, open gates per
      image).
    """
    images, labels = batch["image"], batch["label"]
    chex.assert_rank(images, 4)
    chex.assert_rank(labels, 3)
    step_key = jax.random.fold_in(dropout_key, state.step)
    rngs = {"dropout": step_key, "gumbel": jax.random.fold_in(step_key, 1)}

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        logits, updates = state.apply_fn(
            variables, images, train=True, mutable=["batch_stats", *SOWN_COLLECTIONS], rngs=rngs
        )
        loss, num_valid = cross_entropy_loss(logits, labels, ignore_index=ignore_index)
        sown_losses = _sown(updates, "losses")
        total = functools.reduce(jnp.add, sown_losses.values(), loss)
        # A model without BatchNorm has no "batch_stats" to update.
        batch_stats = updates.get("batch_stats", state.batch_stats)
        aux = (loss, logits, num_valid, batch_stats, sown_losses, _sown(updates, "metrics"))
        return total, aux

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (total, aux), grads = grad_fn(state.params)
    loss, logits, num_valid, batch_stats, sown_losses, sown_metrics = aux
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    correct = (jnp.argmax(logits, axis=-1) == labels) & (labels != ignore_index)
    # Labels outside [0, C) make the loss NaN; counted so that the loop can say so.
    invalid = (labels != ignore_index) & ((labels < 0) | (labels >= logits.shape[-1]))
    metrics = {
        "loss": loss,
        "num_invalid_labels": jnp.sum(invalid, dtype=jnp.int32),
        "accuracy": jnp.sum(correct, dtype=jnp.float32) / jnp.maximum(num_valid, 1.0),
        "learning_rate": jnp.asarray(learning_rate_fn(state.step), jnp.float32),
        "grad_norm": optax.tree.norm(grads),
    }
    metrics.update(sown_metrics)
    if sown_losses:
        metrics["total_loss"] = total
    return new_state, metrics


def create_soft_prune_fn(
    model: nn.Module, pruning: dict[str, Any], *, over_replicas: bool = False
) -> Callable[[state_lib.TrainState], state_lib.TrainState]:
    """Soft filter pruning (He et al. 2018) of a train state, for the ends of epochs.

    Args:
      model: the model (its layer names give the plan,
        :func:`spectral_jax.models.pruning.pruning_plan`).
      pruning: rates by group, ``{"encoder": r_e, "decoder": r_d}``.
      over_replicas: the state holds replicas along a leading axis (``config.num_seeds``):
        prune each replica by its own filter norms (``jax.vmap``).

    Returns:
      a jitted ``state -> state`` that zeroes the smallest filters of every planned layer
      (params and the matching BatchNorm statistics).
    """
    plan = pruning_lib.pruning_plan(model, pruning_lib.PruningRates(**pruning))

    def prune(state: state_lib.TrainState) -> state_lib.TrainState:
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        variables, _ = pruning_lib.soft_prune(variables, plan)
        return state.replace(params=variables["params"], batch_stats=variables["batch_stats"])

    return jax.jit(jax.vmap(prune) if over_replicas else prune, donate_argnums=0)
