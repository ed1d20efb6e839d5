"""Tests for spectral_jax.models.dct_gate: the hard straight-through Gumbel-softmax
(exact 0/1 forward, soft-sample gradient in closed form, Gumbel-max frequencies,
temperature limits), the SE gate against a float64 NumPy forward pass, the sparsity
regulariser, the selection-frequency accumulator and the Fig. 5 plot.

Tolerances: float64 closed forms 1e-10; the Monte-Carlo frequency test 5 standard errors.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.models import dct_gate


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("shape", [(7, 2), (3, 4, 5)])
def test_hard_sample_is_exactly_one_hot_of_gumbel_argmax(rng, shape):
    logits = jnp.asarray(rng.normal(size=shape), jnp.float32)
    key = jax.random.key(3)
    sample = np.asarray(dct_gate._gumbel_softmax(key, logits, temperature=0.7))
    assert set(np.unique(sample)) <= {0.0, 1.0}
    np.testing.assert_array_equal(sample.sum(-1), 1.0)
    noisy = np.asarray(logits) + np.asarray(jax.random.gumbel(key, shape, jnp.float32))
    np.testing.assert_array_equal(sample.argmax(-1), noisy.argmax(-1))


def test_same_key_same_sample_other_key_other_sample(rng):
    logits = jnp.asarray(rng.normal(size=(64, 2)), jnp.float32)
    first = dct_gate._binary_gates(jax.random.key(0), logits)
    np.testing.assert_array_equal(first, dct_gate._binary_gates(jax.random.key(0), logits))
    assert np.any(first != dct_gate._binary_gates(jax.random.key(1), logits))


@pytest.mark.parametrize("num_classes, temperature", [(2, 0.5), (2, 1.0), (3, 3.0)])
def test_straight_through_gradient_is_the_soft_sample_gradient(x64, rng, temperature, num_classes):
    logits = rng.normal(size=(5, num_classes))
    weights = rng.normal(size=(5, num_classes))
    key = jax.random.key(7)

    def objective(z):
        return jnp.sum(weights * dct_gate._gumbel_softmax(key, z, temperature=temperature))

    grad = np.asarray(jax.jit(jax.grad(objective))(logits))  # one program
    soft = np.asarray(dct_gate._gumbel_softmax(key, logits, temperature=temperature, hard=False))
    # d y_i / d l_j = y_i (delta_ij - y_j) / tau for y = softmax((l + g) / tau).
    jacobian = (
        np.einsum("bi,ij->bij", soft, np.eye(num_classes)) - soft[:, :, None] * soft[:, None, :]
    )
    want = np.einsum("bi,bij->bj", weights, jacobian) / temperature
    np.testing.assert_allclose(grad, want, atol=1e-10)
    assert np.abs(want).max() > 1e-3  # the check is not vacuous


def test_deterministic_gates_are_the_argmax_with_softmax_gradient(x64, rng):
    logits = rng.normal(size=(6, 2))
    gates = np.asarray(dct_gate._binary_gates(None, logits, temperature=2.0))
    np.testing.assert_array_equal(gates, (logits[:, 1] > logits[:, 0]).astype(float))
    grad = np.asarray(
        jax.jit(jax.grad(lambda z: jnp.sum(dct_gate._binary_gates(None, z, temperature=2.0))))(
            logits
        )
    )
    p = _softmax(logits / 2.0)[:, 1]
    np.testing.assert_allclose(grad, np.stack([-p * (1 - p), p * (1 - p)], -1) / 2.0, atol=1e-12)


def test_hard_samples_follow_the_softmax_probabilities():
    logits = jnp.asarray([[0.0, 0.0], [1.5, -0.5], [-2.0, 1.0]], jnp.float32)
    keys = jax.random.split(jax.random.key(11), 4000)
    samples = jax.vmap(lambda k: dct_gate._gumbel_softmax(k, logits))(keys)
    frequency = np.asarray(samples.mean(0))
    p = _softmax(np.asarray(logits, np.float64))
    standard_error = np.sqrt(p * (1 - p) / keys.shape[0])
    np.testing.assert_array_less(np.abs(frequency - p), 5 * standard_error)


def test_temperature_limits(rng):
    logits = jnp.asarray(rng.normal(size=(200, 3)), jnp.float32)
    key = jax.random.key(5)
    noisy = np.asarray(logits) + np.asarray(jax.random.gumbel(key, logits.shape, jnp.float32))
    top2 = np.sort(noisy, -1)
    separated = top2[:, -1] - top2[:, -2] > 0.05  # exp(-0.05 / 1e-3) is negligible
    assert separated.mean() > 0.8
    cold = np.asarray(dct_gate._gumbel_softmax(key, logits, temperature=1e-3, hard=False))
    hard = np.asarray(dct_gate._gumbel_softmax(key, logits, temperature=1e-3))
    np.testing.assert_allclose(cold[separated], hard[separated], atol=1e-6)
    hot = dct_gate._gumbel_softmax(key, logits, temperature=1e6, hard=False)
    np.testing.assert_allclose(hot, 1 / 3, atol=1e-4)


def test_temperature_is_traced_without_retracing(rng):
    logits = jnp.asarray(rng.normal(size=(4, 2)), jnp.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def soft(temperature):
        return dct_gate._gumbel_softmax(
            jax.random.key(0), logits, temperature=temperature, hard=False
        )

    a, b = soft(jnp.float32(0.5)), soft(jnp.float32(2.0))
    assert not np.allclose(a, b)


# ---------------------------------------------------------------------------------------
# The gate module.


def _gate_variables(rng, channels):
    return {
        "params": {
            "excite": {
                "kernel": jnp.asarray(rng.normal(size=(channels, channels)) / np.sqrt(channels)),
                "bias": jnp.asarray(rng.normal(size=(channels,)) * 0.1),
            },
            "logit_scale": jnp.asarray(rng.normal(size=(channels, 2))),
            "logit_bias": jnp.asarray(rng.normal(size=(channels, 2)) * 0.5),
        }
    }


@pytest.mark.parametrize("batch, h, w, channels", [(2, 3, 4, 6), (3, 2, 2, 5)])
def test_gate_matches_numpy_forward(x64, rng, batch, h, w, channels):
    x = rng.normal(size=(batch, h, w, channels))
    gate = dct_gate.FrequencyGate(dtype=jnp.float64)
    shapes = jax.eval_shape(gate.init, jax.random.key(0), x)
    variables = _gate_variables(rng, channels)
    assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, shapes)
    out = jax.jit(gate.apply)(variables, x)  # one program, not each operation
    p = variables["params"]
    hidden = np.maximum(x.mean((1, 2)) @ p["excite"]["kernel"] + p["excite"]["bias"], 0)
    logits = hidden[..., None] * p["logit_scale"] + p["logit_bias"]
    np.testing.assert_allclose(out["gate_logits"], logits, atol=1e-12)
    np.testing.assert_allclose(out["gate_probabilities"], _softmax(logits)[..., 1], atol=1e-12)
    gates = (logits[..., 1] > logits[..., 0]).astype(float)
    np.testing.assert_array_equal(out["gates"], gates)
    np.testing.assert_array_equal(out["gated"], x * gates[:, None, None, :])
    # Training: Gumbel noise from the "gumbel" stream, reproducible by key.
    key = jax.random.key(4)
    train = jax.jit(
        lambda variables, x, key: gate.apply(
            variables, x, deterministic=False, rngs={"gumbel": key}
        )
    )
    noisy = train(variables, x, key)
    again = train(variables, x, key)
    np.testing.assert_array_equal(noisy["gates"], again["gates"])
    assert set(np.unique(noisy["gates"])) <= {0.0, 1.0}


def test_gate_rejects_bad_temperature(rng):
    x = jnp.ones((1, 2, 2, 3))
    with pytest.raises(ValueError, match="temperature"):
        dct_gate.FrequencyGate(temperature=0.0).init(jax.random.key(0), x)


def test_regularizer_counts_open_gates_and_passes_the_straight_through_gradient(x64, rng):
    logits = rng.normal(size=(4, 10, 2))

    def regularizer(z):
        return dct_gate.gate_regularizer(dct_gate._binary_gates(None, z))

    want = float((logits[..., 1] > logits[..., 0]).sum()) / 4
    np.testing.assert_allclose(regularizer(logits), want)
    grad = np.asarray(jax.jit(jax.grad(regularizer))(logits))  # one program
    p = _softmax(logits)[..., 1]
    np.testing.assert_allclose(grad[..., 1], p * (1 - p) / 4, atol=1e-12)
    np.testing.assert_allclose(grad[..., 0], -p * (1 - p) / 4, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Selection frequency and the Fig. 5 heat map.


def test_gate_frequency_streams_and_lays_out_the_heat_map(rng):
    batches = [rng.integers(0, 2, size=(b, 192)).astype(np.float32) for b in (3, 1, 4)]
    frequency = dct_gate.GateFrequency.create()
    update = jax.jit(dct_gate.GateFrequency.update)
    for gates in batches:
        frequency = update(frequency, gates)
    want = np.concatenate(batches).mean(0)
    np.testing.assert_allclose(frequency.frequency(), want, rtol=1e-6)
    heat_map = dct_gate.selection_heat_map(frequency.frequency())
    assert heat_map.shape == (3, 8, 8)
    # Channel 64 c + 8 u + v sits at [c, u, v].
    for c, u, v in [(0, 0, 1), (1, 2, 0), (2, 7, 5)]:
        np.testing.assert_allclose(heat_map[c, u, v], want[64 * c + 8 * u + v], rtol=1e-6)


def test_heat_map_of_a_gated_subset_is_nan_elsewhere():
    channels = np.array([0, 1, 8, 64, 130])
    heat_map = dct_gate.selection_heat_map(np.array([0.1, 0.2, 0.3, 0.4, 0.5]), channels)
    np.testing.assert_allclose(heat_map.reshape(-1)[channels], [0.1, 0.2, 0.3, 0.4, 0.5])
    assert np.isnan(heat_map).sum() == 192 - 5
    with pytest.raises(ValueError, match="192"):
        dct_gate.selection_heat_map(np.zeros(24))
