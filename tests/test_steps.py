"""Tests of spectral_jax.training.steps: the SGD step and what models sow into it."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.training import steps, train_state
from tests.helpers.training import NUM_CLASSES

# ---------------------------------------------------------------------------------------
# train_step on a per-pixel linear classifier, whose CE gradient has a closed form.


class _PixelLinear(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(NUM_CLASSES)(x)


def _reference_sgd(images, labels, kernel, bias, *, steps, lr, total, momentum, decay):
    """float64 SGD with momentum, poly schedule and L2 on the kernel only."""
    x = np.asarray(images, np.float64).reshape(-1, images.shape[-1])  # [N, 3]
    y = labels.reshape(-1)
    valid = y != 255
    onehot = np.eye(NUM_CLASSES)[np.where(valid, y, 0)] * valid[:, None]
    kernel, bias = np.asarray(kernel, np.float64), np.asarray(bias, np.float64)
    trace_k, trace_b = np.zeros_like(kernel), np.zeros_like(bias)
    losses = []
    for step in range(steps):
        z = x @ kernel + bias  # [N, C]
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        losses.append(-np.sum(onehot * np.log(p)) / valid.sum())
        dz = (p - onehot) * valid[:, None] / valid.sum()  # dL/dz, closed form
        grad_k = x.T @ dz + decay * kernel
        grad_b = dz.sum(0)
        trace_k = grad_k + momentum * trace_k
        trace_b = grad_b + momentum * trace_b
        rate = lr * (1 - step / total) ** 0.9
        kernel, bias = kernel - rate * trace_k, bias - rate * trace_b
    return kernel, bias, losses


@pytest.mark.parametrize("size", [4, 5])
def test_train_step_matches_closed_form_sgd(rng, size):
    images = rng.standard_normal((2, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=(2, size, size)).astype(np.int32)
    labels[0, 0, :] = 255
    model = _PixelLinear()
    variables = model.init(jax.random.key(1), jnp.asarray(images))
    schedule = train_state.poly_schedule(0.5, total_steps=10)
    optimizer = train_state.create_optimizer(schedule, momentum=0.9, weight_decay=0.01)
    state = train_state.create_train_state(model, variables, optimizer)
    chex.clear_trace_counter()  # The parameterized cases trace their own shapes once each.

    @chex.assert_max_traces(n=1)
    def step(state, batch):
        return steps.train_step(
            state, batch, learning_rate_fn=schedule, dropout_key=jax.random.key(0)
        )

    step_fn = jax.jit(step, donate_argnums=0)
    params = jax.device_get(state.params)
    batch = {"image": images, "label": labels}
    metrics = []
    for _ in range(3):
        state, step_metrics = step_fn(state, batch)
        metrics.append(step_metrics)
    kernel, bias, losses = _reference_sgd(
        images,
        labels,
        params["Dense_0"]["kernel"],
        params["Dense_0"]["bias"],
        steps=3,
        lr=0.5,
        total=10,
        momentum=0.9,
        decay=0.01,
    )
    np.testing.assert_allclose(state.params["Dense_0"]["kernel"], kernel, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.params["Dense_0"]["bias"], bias, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([float(m["loss"]) for m in metrics], losses, rtol=1e-5)
    np.testing.assert_allclose(
        [float(m["learning_rate"]) for m in metrics],
        [0.5 * (1 - t / 10) ** 0.9 for t in range(3)],
        rtol=1e-6,
    )
    assert int(state.step) == 3


# ---------------------------------------------------------------------------------------
# Losses and metrics a model sows: summed into the objective, reported by name.


class _SowingLinear(nn.Module):
    """A pixel classifier that sows ``weight * ||kernel||^2`` as a loss, and a metric."""

    weight: float

    @nn.compact
    def __call__(self, x, train=False):
        dense = nn.Dense(NUM_CLASSES)
        logits = dense(x)
        if train:
            penalty = jnp.sum(dense.variables["params"]["kernel"] ** 2)
            self.sow("losses", "penalty", self.weight * penalty)
            self.sow("metrics", "kernel_norm", jnp.sqrt(penalty))
        return logits


def test_sown_losses_are_added_and_sown_metrics_reported(rng):
    """The objective is CE + the sown loss: its gradient adds ``2 weight kernel``."""
    images = rng.standard_normal((2, 4, 4, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=(2, 4, 4)).astype(np.int32)
    batch = {"image": images, "label": labels}
    schedule = train_state.poly_schedule(0.1, total_steps=10)
    optimizer = train_state.create_optimizer(schedule, momentum=0.0, weight_decay=0.0)
    results = {}
    for weight in (0.0, 0.3):
        model = _SowingLinear(weight)
        variables = model.init(jax.random.key(1), jnp.asarray(images))
        state = train_state.create_train_state(model, variables, optimizer)
        step = jax.jit(
            lambda s, b: steps.train_step(
                s, b, learning_rate_fn=schedule, dropout_key=jax.random.key(0)
            )
        )
        results[weight] = (variables["params"], *step(state, batch))
    params, plain, plain_metrics = results[0.0]
    _, sown, metrics = results[0.3]
    kernel = np.asarray(params["Dense_0"]["kernel"], np.float64)
    reported = ("loss", "accuracy", "learning_rate", "grad_norm", "kernel_norm", "total_loss")
    reported += ("num_invalid_labels",)
    assert set(metrics) == set(reported)
    np.testing.assert_allclose(metrics["kernel_norm"], np.sqrt(np.sum(kernel**2)), rtol=1e-6)
    np.testing.assert_allclose(
        metrics["total_loss"], metrics["loss"] + 0.3 * np.sum(kernel**2), rtol=1e-6
    )
    # The CE is reported without the sown term, equal to the plain model's.
    np.testing.assert_allclose(metrics["loss"], plain_metrics["loss"], rtol=1e-6)
    # SGD without momentum: the sown loss adds -lr * 2 * 0.3 * kernel to the update.
    step_difference = np.asarray(sown.params["Dense_0"]["kernel"]) - np.asarray(
        plain.params["Dense_0"]["kernel"]
    )
    np.testing.assert_allclose(step_difference, -0.1 * 2 * 0.3 * kernel, rtol=1e-4, atol=1e-7)


def test_a_model_without_sown_losses_reports_no_total(rng):
    images = rng.standard_normal((1, 3, 3, 3)).astype(np.float32)
    model = _PixelLinear()
    variables = model.init(jax.random.key(1), jnp.asarray(images))
    schedule = train_state.poly_schedule(0.1, total_steps=10)
    state = train_state.create_train_state(model, variables, train_state.create_optimizer(schedule))
    _, metrics = steps.train_step(
        state,
        {"image": images, "label": np.zeros((1, 3, 3), np.int32)},
        learning_rate_fn=schedule,
        dropout_key=jax.random.key(0),
    )
    assert set(metrics) == {"loss", "accuracy", "learning_rate", "grad_norm", "num_invalid_labels"}


@pytest.mark.parametrize("bad_label", [-1, NUM_CLASSES])
def test_a_label_outside_the_classes_makes_the_step_nan_and_is_counted(rng, bad_label):
    # -1 was trained as class C - 1: a plausible loss, a wrong gradient.
    images = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=(2, 3, 3)).astype(np.int32)
    labels[1, 0, 2] = labels[0, 1, 1] = bad_label
    model = _PixelLinear()
    variables = model.init(jax.random.key(1), jnp.asarray(images))
    schedule = train_state.poly_schedule(0.1, total_steps=10)
    state = train_state.create_train_state(model, variables, train_state.create_optimizer(schedule))
    step = jax.jit(
        lambda s, b: steps.train_step(
            s, b, learning_rate_fn=schedule, dropout_key=jax.random.key(0)
        )
    )
    new_state, metrics = step(state, {"image": images, "label": labels})
    assert int(metrics["num_invalid_labels"]) == 2
    assert np.isnan(float(metrics["loss"]))
    assert np.isnan(np.asarray(new_state.params["Dense_0"]["kernel"])).all()
    # The same pixels marked with the ignore index: a finite step, nothing counted.
    labels[labels == bad_label] = 255
    _, metrics = step(state, {"image": images, "label": labels})
    assert int(metrics["num_invalid_labels"]) == 0 and np.isfinite(float(metrics["loss"]))


def test_run_keys_are_the_split_of_the_seed():
    init_key, dropout_key = train_state.run_keys(7)
    want = jax.random.split(jax.random.key(7))
    np.testing.assert_array_equal(jax.random.key_data(init_key), jax.random.key_data(want[0]))
    np.testing.assert_array_equal(jax.random.key_data(dropout_key), jax.random.key_data(want[1]))
