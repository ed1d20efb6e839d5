"""Learned frequency-channel selection: the gate of Xu et al. 2020 (Sec. 3.2, Fig. 4).

The gate looks at the DCT input ``x [B, h, w, C]`` (C = 192, or a static subset) and
switches each frequency channel on or off per image:

1. squeeze: global average pooling, ``[B, C]`` (Tensor 2 of Fig. 4);
2. excitation: a fully connected layer ``C -> C`` and ReLU (Tensor 3);
3. two logits per channel by "multiplying every element in Tensor 3 with two trainable
   parameters" (Tensor 4): ``logits[b, c, k] = w[c, k] h[b, c] + a[c, k]``, ``k = 0``
   off, ``k = 1`` on (a per-channel, grouped second layer);
4. a hard Gumbel-softmax sample over the two logits, straight-through: the forward
   value is exactly 0 or 1, the backward pass uses the gradient of the soft sample
   ``softmax((logits + g) / tau)`` (:func:`_gumbel_softmax`);
5. ``x * gate`` per channel (Tensor 5).

With ``deterministic=True`` (inference) the gate is ``argmax`` of the logits, without
noise, i.e. on iff ``p_on = softmax(logits)[1] > 1/2``. Deviations, with reasons: the
paper samples the Bernoulli ``Bern(p_on)`` at inference too; a deterministic gate
makes evaluation reproducible, and ``gate_probabilities`` (``p_on``) are returned so
that the expected selection frequency under sampling can still be measured. The
authors' code also has a BatchNorm between the fully connected layer and the ReLU
(statistics over the batch of pooled vectors); it is left out, since the inputs are
already normalised per channel.

Sparsity regulariser (:func:`gate_regularizer`): the paper adds ``lambda`` times the
number of selected channels to the task loss,
``L = L_acc + lambda * sum_c F(x)_c``; here the term is the number of open gates per
image averaged over the batch, ``(1 / B) sum_b sum_c gate[b, c]`` (in ``[0, C]``), whose
gradient reaches the gate through the straight-through estimator. The model multiplies
it by ``lambda`` (:attr:`spectral_jax.models.DCTDeepLabV3Plus.gate_weight`) and sows the
term in its ``"losses"`` collection.

Fig. 5 heat map: :class:`GateFrequency` counts, over a data set, how often each channel
is open (hard gates) or its mean ``p_on``; :func:`selection_heat_map` lays the 192
frequencies out as ``[3, 8, 8]`` (Y, Cb, Cr; vertical ``u``, horizontal ``v``) and
:func:`spectral_jax.plotting.plot_selection_heat_map` draws it.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from spectral_jax.related.dct_input import (
    BLOCK_SIZE,
    COMPONENTS,
    NUM_DCT_CHANNELS,
)

GUMBEL_RNG = "gumbel"


def _straight_through(soft: jax.Array) -> jax.Array:
    """One-hot of ``argmax(soft)`` forward, the identity's gradient backward."""
    hard = jax.nn.one_hot(jnp.argmax(soft, axis=-1), soft.shape[-1], dtype=soft.dtype)
    # hard + (soft - soft) is exactly hard in floating point; soft + (hard - soft) is not.
    return hard + (soft - jax.lax.stop_gradient(soft))


def _gumbel_softmax(
    key: jax.Array | None,
    logits: chex.Array,
    *,
    temperature: float | jax.Array = 1.0,
    hard: bool = True,
) -> jax.Array:
    """Gumbel-softmax sample (Jang et al. 2017) over the last axis, optionally hard.

    .. math::
        y = \\mathrm{softmax}\\big((\\ell + g) / \\tau\\big), \\quad
        g_k = -\\log(-\\log U_k), \\; U_k \\sim \\mathcal{U}(0, 1)

    With ``hard=True`` the forward value is ``one_hot(argmax(l + g))`` (exactly 0/1, a
    sample of ``Categorical(softmax(l))``) and the gradient is that of the soft ``y``
    (straight-through). ``key=None`` sets ``g = 0``: the deterministic ``argmax(l)``.

    Args:
      key: PRNG key, or ``None`` for no noise.
      logits: ``[..., K]`` unnormalised log-probabilities.
      temperature: ``tau > 0`` (may be traced).
      hard: one-hot forward value with straight-through gradient.

    Returns:
      ``[..., K]``, same dtype as ``logits`` (float32 at least).
    """
    logits = jnp.asarray(logits, jnp.promote_types(jnp.result_type(logits), jnp.float32))
    if key is not None:
        logits = logits + jax.random.gumbel(key, logits.shape, logits.dtype)
    soft = jax.nn.softmax(logits / temperature, axis=-1)
    return _straight_through(soft) if hard else soft


def _binary_gates(
    key: jax.Array | None, logits: chex.Array, *, temperature: float | jax.Array = 1.0
) -> jax.Array:
    """Hard straight-through gates ``[...]`` in {0, 1} from ``logits [..., 2]`` (off, on).

    Args:
      key: PRNG key for the Gumbel noise, or ``None`` for the deterministic argmax.
      logits: ``[..., 2]``.
      temperature: ``tau`` of the soft sample that gives the gradient.
    """
    if jnp.shape(logits)[-1] != 2:
        raise ValueError(f"logits must have shape [..., 2], got {jnp.shape(logits)}.")
    return _gumbel_softmax(key, logits, temperature=temperature, hard=True)[..., 1]


def gate_regularizer(gates: chex.Array) -> jax.Array:
    """Number of open gates per image, averaged over the batch: ``mean_b sum_c gate[b, c]``.

    The loss is ``L_acc + lambda * gate_regularizer(gates)`` (module docstring).

    Args:
      gates: ``[B, C]`` gates (hard, with straight-through gradient).

    Returns:
      ``[]``, in ``[0, C]``.
    """
    chex.assert_rank(gates, 2)
    return jnp.mean(jnp.sum(gates, axis=-1))


def _uniform_symmetric(key, shape, dtype=jnp.float32):
    # PyTorch's default for a grouped 1x1 convolution with one input per group: U(-1, 1).
    return jax.random.uniform(key, shape, dtype, -1.0, 1.0)


class FrequencyGate(nn.Module):
    """SE-style gate with a hard Gumbel-softmax decision per channel (module docstring).

    Attributes:
      temperature: ``tau`` of the Gumbel-softmax (1 in the authors' code). Static: a new
        value means a new module and a new compilation.
      dtype: computation dtype.

    Example:
      >>> x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 8)), jnp.float32)
      >>> gate = FrequencyGate()
      >>> variables = gate.init(jax.random.key(0), x)  # x [B, h, w, C]
      >>> out = gate.apply(variables, x, deterministic=False,
      ...                  rngs={"gumbel": jax.random.key(1)})
      >>> out["gated"].shape, out["gates"].shape  # [B, h, w, C], [B, C]
      ((2, 4, 4, 8), (2, 8))
      >>> bool(jnp.all((out["gates"] == 0) | (out["gates"] == 1)))  # hard 0/1 gates
      True
    """

    temperature: float = 1.0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> dict[str, jax.Array]:
        """Gates the channels of ``x``.

        Args:
          x: ``[B, h, w, C]`` DCT input.
          deterministic: argmax gates without noise (inference); otherwise Gumbel noise
            from the ``"gumbel"`` RNG stream.

        Returns:
          ``{"gated": [B, h, w, C], "gates": [B, C] in {0, 1},
          "gate_probabilities": [B, C] (p_on = softmax(logits)[..., 1]),
          "gate_logits": [B, C, 2]}``.
        """
        chex.assert_rank(x, 4)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}.")
        channels = x.shape[-1]
        pooled = jnp.mean(x, axis=(1, 2))  # [B, C]
        hidden = nn.relu(nn.Dense(channels, dtype=self.dtype, name="excite")(pooled))
        scale = self.param("logit_scale", _uniform_symmetric, (channels, 2))
        bias = self.param("logit_bias", nn.initializers.zeros, (channels, 2))
        logits = hidden[..., None] * scale + bias  # [B, C, 2]
        key = None if deterministic else self.make_rng(GUMBEL_RNG)
        gates = _binary_gates(key, logits, temperature=self.temperature)
        return {
            "gated": x * gates[:, None, None, :].astype(x.dtype),
            "gates": gates,
            "gate_probabilities": jax.nn.softmax(logits, axis=-1)[..., 1],
            "gate_logits": logits,
        }


# ---------------------------------------------------------------------------------------
# Fig. 5: selection frequency over a data set.


@flax.struct.dataclass
class GateFrequency:
    """Running count of how often each channel's gate is open (a pytree).

    Attributes:
      open_sum: ``[C]`` sum over images of the gates (0/1) or of ``p_on``.
      num_images: ``[]`` images seen.

    Example:
      >>> frequency = GateFrequency.create(192)
      >>> for gates in (jnp.ones((2, 192)), jnp.zeros((2, 192))):  # [B, C] per batch
      ...     frequency = frequency.update(gates)
      >>> float(frequency.frequency()[0])  # open in 2 of 4 images
      0.5
      >>> selection_heat_map(frequency.frequency()).shape  # Fig. 5: [3, 8, 8]
      (3, 8, 8)
    """

    open_sum: jax.Array
    num_images: jax.Array

    @classmethod
    def create(cls, num_channels: int = NUM_DCT_CHANNELS, *, dtype=jnp.float32):
        if num_channels < 1:
            raise ValueError(f"num_channels must be positive, got {num_channels}.")
        return cls(open_sum=jnp.zeros((num_channels,), dtype), num_images=jnp.zeros((), dtype))

    def update(self, gates: chex.Array) -> GateFrequency:
        """Adds ``gates [B, C]`` (hard gates, or ``gate_probabilities``)."""
        if jnp.ndim(gates) != 2 or jnp.shape(gates)[1] != self.open_sum.shape[0]:
            raise ValueError(
                f"gates must have shape [B, {self.open_sum.shape[0]}], got {jnp.shape(gates)}."
            )
        gates = jnp.asarray(gates, self.open_sum.dtype)
        return GateFrequency(
            open_sum=self.open_sum + jnp.sum(gates, axis=0),
            num_images=self.num_images + gates.shape[0],
        )

    def frequency(self) -> jax.Array:
        """``[C]`` fraction of images with the gate open (mean ``p_on`` for probabilities)."""
        return self.open_sum / jnp.maximum(self.num_images, 1)


def selection_heat_map(frequency: chex.Array, channels: chex.Array | None = None) -> np.ndarray:
    """Lays per-channel values out as the Fig. 5 heat map ``[3, 8, 8]`` (component, u, v).

    Args:
      frequency: ``[K]`` values of the gated channels.
      channels: ``[K]`` indices into the 192 DCT channels of those channels (the static
        selection the gate ran on); ``None`` when ``K = 192``.

    Returns:
      ``[3, 8, 8]`` float64; channel ``64 c + 8 u + v`` at ``[c, u, v]``, NaN for channels
      that were not gated.
    """
    frequency = np.asarray(frequency, np.float64).reshape(-1)
    if channels is None:
        if frequency.size != NUM_DCT_CHANNELS:
            raise ValueError(
                f"frequency must have 192 entries when channels is None, got {frequency.size}."
            )
        channels = np.arange(NUM_DCT_CHANNELS)
    channels = np.asarray(channels).reshape(-1)
    if channels.shape != frequency.shape:
        raise ValueError(
            f"channels and frequency must have the same length, got {channels.size} and "
            f"{frequency.size}."
        )
    heat_map = np.full(NUM_DCT_CHANNELS, np.nan)
    heat_map[channels] = frequency
    return heat_map.reshape(len(COMPONENTS), BLOCK_SIZE, BLOCK_SIZE)
