"""DeepLab v3+ training steps in JAX and in PyTorch from the same weights (not timed here).

Shared by ``bench_train_step``, ``bench_mixed_precision``, ``bench_compile_depth`` and
``accelerator_check``: the benchmarked configurations, a batch, He-normal weights, the
jitted JAX step, the PyTorch mirror's step (:mod:`benchmarks._torch_deeplab`) and the
check that both compute the same losses.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
from typing import Any

import jax
import numpy as np
import optax

from benchmarks._variables import random_variables
from spectral_jax.data import IGNORE_INDEX
from spectral_jax.models import DeepLabV3Plus
from spectral_jax.training import steps as steps_lib
from spectral_jax.training import train_state as state_lib

try:  # PyTorch is optional: the PyTorch helpers need it, the JAX ones do not.
    from benchmarks import _torch_deeplab
except ImportError:
    _torch_deeplab = None

LEARNING_RATE = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
LOSS_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """One benchmarked model and batch."""

    backbone: str
    batch_size: int
    crop_size: int
    num_classes: int = 21
    output_stride: int = 16
    aspp_channels: int = 256
    low_level_channels: int = 48
    decoder_channels: int = 256
    dropout_rate: float = 0.5

    def model_settings(self) -> dict[str, Any]:
        """The architecture's keyword arguments, the same for the Flax model and its
        PyTorch mirrors."""
        return dict(
            backbone=self.backbone,
            output_stride=self.output_stride,
            num_classes=self.num_classes,
            aspp_channels=self.aspp_channels,
            low_level_channels=self.low_level_channels,
            decoder_channels=self.decoder_channels,
            dropout_rate=self.dropout_rate,
        )

    def flax_model(self, *, dropout_rate: float | None = None) -> DeepLabV3Plus:
        settings = self.model_settings()
        if dropout_rate is not None:
            settings["dropout_rate"] = dropout_rate
        return DeepLabV3Plus(**settings)


CONFIGS = {
    "tiny": BenchConfig(
        "resnet_tiny",
        batch_size=8,
        crop_size=129,
        aspp_channels=32,
        low_level_channels=12,
        decoder_channels=32,
    ),
    "full": BenchConfig("resnet101", batch_size=2, crop_size=257),
}


# ---------------------------------------------------------------------------------------
# Data and weights.


def make_batch(config: BenchConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Normalised-looking images and labels with a 255 band (void) along the border."""
    rng = np.random.default_rng(seed)
    shape = (config.batch_size, config.crop_size, config.crop_size)
    images = rng.normal(size=(*shape, 3)).astype(np.float32)  # [B, H, W, 3]
    labels = rng.integers(0, config.num_classes, size=shape).astype(np.int32)  # [B, H, W]
    labels[:, :4] = IGNORE_INDEX
    labels[:, :, -4:] = IGNORE_INDEX
    return {"image": images, "label": labels}


def init_variables(model: DeepLabV3Plus, config: BenchConfig, seed: int = 0) -> dict[str, Any]:
    """He-normal kernels, zero biases, identity BatchNorm, drawn in NumPy from the shapes."""
    shape = (1, config.crop_size, config.crop_size, 3)
    return dict(random_variables(model, shape, seed))


# ---------------------------------------------------------------------------------------
# The PyTorch mirror of DeepLabV3Plus (benchmarks/_torch_deeplab.py).


def build_torch_deeplab(config: BenchConfig, torch):
    """``torch.nn`` DeepLab v3+ with the Flax model's layers, order and parameter names."""
    del torch  # benchmarks._torch_deeplab imports it.
    return _torch_deeplab.mirror_deeplab(**config.model_settings())


def copy_flax_to_torch(variables: dict[str, Any], module, torch) -> None:
    """Copies Flax variables into the mirror module (kernels ``HWIO -> OIHW``).

    Stacked blocks (``encoder/layer3_blocks``) are split into the per-block names the
    module uses (``encoder.layer3_block5``) first.

    Raises:
      ValueError: if a parameter or buffer of ``module`` has no Flax counterpart or a
        different shape.
    """
    del torch
    _torch_deeplab.copy_flax_to_torch(variables, module)


# ---------------------------------------------------------------------------------------
# The two training steps.


def make_jax_step(model: DeepLabV3Plus, variables: dict[str, Any]):
    """``(state, step)``: the train state and the jitted, donating step ``(state, batch)``."""
    schedule = optax.constant_schedule(LEARNING_RATE)
    optimizer = state_lib.create_optimizer(schedule, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    state = state_lib.create_train_state(model, variables, optimizer)
    step = jax.jit(
        functools.partial(
            steps_lib.train_step,
            learning_rate_fn=schedule,
            dropout_key=jax.random.key(1),
            ignore_index=IGNORE_INDEX,
        ),
        donate_argnums=0,
    )
    return state, step


def make_torch_step(module, torch, *, autocast_dtype=None):
    """A step ``(images, labels) -> loss`` with the Flax step's optimizer and metrics.

    ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the forward pass and the loss under
    ``torch.autocast`` (mixed precision; the parameters stay float32); None runs them in
    the module's dtype.
    """
    decayed = [p for p in module.parameters() if p.ndim == 4]
    others = [p for p in module.parameters() if p.ndim != 4]
    optimizer = torch.optim.SGD(
        [
            {"params": decayed, "weight_decay": WEIGHT_DECAY},
            {"params": others, "weight_decay": 0.0},
        ],
        lr=LEARNING_RATE,
        momentum=MOMENTUM,
    )
    module.train()

    def step(images, labels):
        optimizer.zero_grad(set_to_none=True)
        precision = contextlib.nullcontext()
        if autocast_dtype is not None:
            precision = torch.autocast(images.device.type, dtype=autocast_dtype)
        with precision:
            logits = module(images)
            loss = torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            valid = labels != IGNORE_INDEX
            correct = (logits.argmax(dim=1) == labels) & valid
            accuracy = correct.sum() / valid.sum().clamp(min=1)
            grads = [p.grad for p in module.parameters()]
            grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        return loss.detach(), accuracy, grad_norm

    return step


def torch_batch(batch: dict[str, np.ndarray], torch):
    images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous()  # [B, 3, H, W]
    labels = torch.from_numpy(batch["label"].astype(np.int64))  # [B, H, W]
    return images, labels


# ---------------------------------------------------------------------------------------
# Checking and timing.


def check_same_losses(config: BenchConfig, batch, torch, num_steps: int = 2) -> list[dict]:
    """Losses of ``num_steps`` training steps without dropout, from the same weights.

    Runs the JAX step and the PyTorch step in float32, and the PyTorch step in float64
    as the reference: after an SGD update float32 rounding is amplified (by about
    ``1e4`` for ResNet-101 at batch 2 from a random start), so later losses are compared
    within the float32 error of PyTorch itself.

    Returns:
      Per step ``{"step", "jax", "torch", "torch64", "difference", "tolerance"}``, with
      ``difference = |jax - torch| / |torch64|`` and ``tolerance = max(1e-4,
      3 |torch - torch64| / |torch64|)``, PyTorch's own float32 error at that step.
    """
    config = dataclasses.replace(config, dropout_rate=0.0)
    model = config.flax_model()
    variables = init_variables(model, config, seed=1)
    module = build_torch_deeplab(config, torch)
    copy_flax_to_torch(variables, module, torch)
    module64 = copy.deepcopy(module).double()
    state, jax_step = make_jax_step(model, variables)
    torch_step, torch_step64 = make_torch_step(module, torch), make_torch_step(module64, torch)
    images, labels = torch_batch(batch, torch)
    jax_batch = jax.device_put(batch)
    rows = []
    for step in range(num_steps):
        state, metrics = jax_step(state, jax_batch)
        row = {
            "step": step,
            "jax": float(metrics["loss"]),
            "torch": float(torch_step(images, labels)[0]),
            "torch64": float(torch_step64(images.double(), labels)[0]),
        }
        scale = abs(row["torch64"])
        row["difference"] = abs(row["jax"] - row["torch"]) / scale
        row["tolerance"] = max(LOSS_TOLERANCE, 3 * abs(row["torch"] - row["torch64"]) / scale)
        rows.append(row)
    return rows
