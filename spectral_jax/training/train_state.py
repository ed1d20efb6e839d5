r"""The train state, the optimizer and the learning-rate schedule.

The optimizer is SGD with momentum on a polynomial ("poly") learning-rate schedule, the
DeepLab recipe (Chen et al. 2018):

.. math::

   \eta_t = \eta_0 \left(1 - \frac{t}{T}\right)^{p}, \qquad p = 0.9,

and an L2 penalty ``(lambda / 2) ||w||^2`` on the convolution kernels, added to the
gradient before the momentum (PyTorch's ``SGD(weight_decay=...)`` and the TF DeepLab
``l2_regularizer``; not the decoupled AdamW form). BatchNorm scales and offsets and the
classifier bias are not decayed, as in the TF DeepLab code.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
    """flax's ``TrainState`` (step, params, optimizer state) with BatchNorm statistics.

    Attributes:
      batch_stats: the BatchNorm running means and variances (collection
        ``"batch_stats"``), updated by every training step.
    """

    batch_stats: Any = None


def poly_schedule(learning_rate: float, *, total_steps: int, power: float = 0.9) -> optax.Schedule:
    """``eta_t = learning_rate * (1 - t / total_steps) ** power``, 0 after ``total_steps``.

    Raises:
      ValueError: if ``learning_rate`` is negative or ``total_steps`` not positive.
    """
    if learning_rate < 0:
        raise ValueError(f"learning_rate must be non-negative, got {learning_rate}.")
    if total_steps < 1:
        raise ValueError(f"total_steps must be positive, got {total_steps}.")
    return optax.polynomial_schedule(
        init_value=learning_rate, end_value=0.0, power=power, transition_steps=total_steps
    )


def _kernel_mask(params):
    """True for convolution and dense kernels: the weights that get weight decay."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def create_optimizer(
    schedule: optax.Schedule,
    *,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """SGD with momentum and L2 weight decay on the kernels (see the module docstring).

    Args:
      schedule: learning rate per step (:func:`poly_schedule`).
      momentum: heavy-ball momentum (0.9).
      weight_decay: L2 coefficient ``lambda`` (the gradient gets ``lambda * w``).
      nesterov: Nesterov momentum.

    Raises:
      ValueError: if ``weight_decay`` is negative or ``momentum`` outside ``[0, 1)``.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay}.")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=_kernel_mask),
        optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov),
    )


def create_train_state(
    model: nn.Module,
    variables: dict[str, Any],
    optimizer: optax.GradientTransformation,
) -> TrainState:
    """A :class:`TrainState` at step 0 from ``model.init``'s variables."""
    if "params" not in variables:
        raise ValueError(f"variables must hold 'params', got collections {tuple(variables)}.")
    state = TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=optimizer,
    )
    # A strongly typed step: a restored checkpoint has one, and a weakly typed step in a
    # fresh state would make the jitted train step compile twice.
    return state.replace(step=jnp.zeros((), jnp.int32))


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """``(init_key, dropout_key)`` of a run with ``config.seed = seed``.

    The trainer initialises the model with ``init_key`` (:func:`init_variables`) and
    draws the dropout masks and Gumbel noise of step ``t`` from ``fold_in(dropout_key,
    t)``; an analysis that wants the variables a run started from uses the same key.

    Example:
      >>> init_key, dropout_key = run_keys(0)
      >>> bool(jnp.all(jax.random.key_data(init_key) == jax.random.key_data(run_keys(0)[0])))
      True
    """
    init_key, dropout_key = jax.random.split(jax.random.key(int(seed)))
    return init_key, dropout_key


def init_variables(
    model: nn.Module, key: jax.Array, *, image_size: int, batch_size: int = 1, channels: int = 3
) -> dict[str, Any]:
    """``model.init`` on a zero batch ``[batch_size, image_size, image_size, channels]``.

    Jitted: run eagerly, a ResNet's initialisation compiles every operation on its own
    (seconds for even the tiny model on CPU). One jitted ``init`` per model, so that the
    seeds of a model (other keys) share its compilation instead of compiling it again.
    """
    images = jnp.zeros((batch_size, image_size, image_size, channels), jnp.float32)
    return dict(_jitted_init(model)(key, images))


# To avoid re-compiling the initialisation for every key of the same model (a new
# functools.partial each call would be a new function for jax.jit).
@functools.lru_cache(maxsize=8)
def _jitted_init(model: nn.Module):
    return jax.jit(functools.partial(model.init, train=False))
