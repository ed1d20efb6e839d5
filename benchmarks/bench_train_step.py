r"""Training steps per second of DeepLab v3+: ``spectral_jax`` (JAX/Flax) against PyTorch.

Run from the repository root (PyTorch must be installed; it is not a dependency of the
package)::

  python -m benchmarks.bench_train_step                      # tiny, then full
  python -m benchmarks.bench_train_step --configs tiny --steps 20

Both frameworks train the same model with the same step on the CPU:

* the model is :class:`spectral_jax.models.DeepLabV3Plus` (dilated ResNet, ASPP with
  image pooling, decoder on the stride-4 grid, bilinear up-sampling, dropout 0.5 after
  ASPP) and, in PyTorch, a ``torch.nn`` module that mirrors it layer by layer, with the
  same parameter names (:func:`benchmarks._torch_deeplab.mirror_deeplab`);
* the step is pixel-wise cross-entropy with ignore label 255, BatchNorm in training
  mode, SGD with momentum 0.9 and L2 weight decay 1e-4 on the convolution kernels, plus
  the step's metrics (accuracy, gradient norm). In JAX it is
  :func:`spectral_jax.training.steps.train_step` compiled with
  ``jax.jit(functools.partial(train_step, ...), donate_argnums=0)``; in PyTorch
  ``zero_grad``, forward, ``backward`` and ``torch.optim.SGD.step`` (parameter groups
  with ``weight_decay=1e-4`` for the convolution weights, 0 for the rest);
* the weights are drawn once (He-normal kernels, identity BatchNorm) and copied from the
  Flax variables into the PyTorch module.

Configurations:

* ``tiny``: ``resnet_tiny`` backbone (width 4), ASPP 32, low-level projection 12,
  decoder 32 channels, 21 classes, batch 8, crop 129;
* ``full``: ResNet-101, output stride 16, the paper's widths (256, 48, 256), 21 classes,
  batch 2, crop 257.

Before timing, the script checks that the frameworks compute the same thing: on a copy
of the model without dropout, from the same weights, the initial loss must agree to a
relative ``1e-4``, and the loss after one SGD update to ``1e-4`` or three times
PyTorch's own float32 error at that step (float32 against a float64 PyTorch run),
whichever is larger; the run exits with status 1 otherwise. Timing: ``--warmup`` steps
(the first compiles), then ``--rounds`` rounds of ``--steps`` steps per framework, the
frameworks alternating round by round so that drift of the machine affects both; JAX
rounds end with ``jax.block_until_ready``. The table gives the median over the rounds of
the time per step, steps per second and the ratio of JAX's steps per second to
PyTorch's.

Threads: XLA's CPU runtime sizes its thread pool by the cores in the process's affinity
mask, and PyTorch is given the same number with ``torch.set_num_threads``; by default
every available core, with ``--threads N`` the process is first pinned to ``N`` cores.
On a machine loaded beyond its cores, PyTorch's OpenMP workers spin-wait and lose most of
their time (the tiny step took 1 s with 2 threads against 73 ms with 1 on a 2-core
machine at load 5-10), so there compare with ``--threads 1`` too. Numbers depend on the
machine and on the load of other processes (the load average is printed); compare
ratios, within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import os
import platform
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spectral_jax.data import IGNORE_INDEX
from spectral_jax.models import DeepLabV3Plus
from spectral_jax.training import steps as steps_lib
from spectral_jax.training import train_state as state_lib

try:  # PyTorch is optional: main() exits with status 2 without it.
    import torch

    from benchmarks import _torch_deeplab
except ImportError:
    torch = _torch_deeplab = None

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

    def flax_model(self, *, dropout_rate: float | None = None) -> DeepLabV3Plus:
        return DeepLabV3Plus(
            num_classes=self.num_classes,
            backbone=self.backbone,
            output_stride=self.output_stride,
            aspp_channels=self.aspp_channels,
            low_level_channels=self.low_level_channels,
            decoder_channels=self.decoder_channels,
            dropout_rate=self.dropout_rate if dropout_rate is None else dropout_rate,
        )


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
    images = jax.ShapeDtypeStruct((1, config.crop_size, config.crop_size, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return jnp.asarray(rng.normal(size=leaf.shape) * np.sqrt(2 / fan_in), leaf.dtype)
        if name in ("scale", "var"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.zeros(leaf.shape, leaf.dtype)

    return dict(jax.tree_util.tree_map_with_path(fill, shapes))


# ---------------------------------------------------------------------------------------
# The PyTorch mirror of DeepLabV3Plus (benchmarks/_torch_deeplab.py).


def torch_settings(config: BenchConfig) -> dict[str, Any]:
    """The keyword arguments of :func:`benchmarks._torch_deeplab.mirror_deeplab` for ``config``."""
    return dict(
        backbone=config.backbone,
        output_stride=config.output_stride,
        num_classes=config.num_classes,
        aspp_channels=config.aspp_channels,
        low_level_channels=config.low_level_channels,
        decoder_channels=config.decoder_channels,
        dropout_rate=config.dropout_rate,
    )


def build_torch_deeplab(config: BenchConfig, torch):
    """``torch.nn`` DeepLab v3+ with the Flax model's layers, order and parameter names."""
    del torch  # benchmarks._torch_deeplab imports it.
    return _torch_deeplab.mirror_deeplab(**torch_settings(config))


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


def time_both(config: BenchConfig, batch, torch, *, warmup: int, steps: int, rounds: int):
    """Median seconds per step of each framework over interleaved rounds."""
    model = config.flax_model()
    variables = init_variables(model, config)
    module = build_torch_deeplab(config, torch)
    copy_flax_to_torch(variables, module, torch)
    state, jax_step = make_jax_step(model, variables)
    del variables  # The state's buffers are donated step by step.
    torch_step = make_torch_step(module, torch)
    images, labels = torch_batch(batch, torch)
    jax_batch = jax.device_put(batch)

    start = time.perf_counter()
    for _ in range(warmup):
        state, metrics = jax_step(state, jax_batch)
    jax.block_until_ready((state, metrics))
    jax_warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(warmup):
        torch_step(images, labels)
    torch_warmup = time.perf_counter() - start

    jax_times, torch_times = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = jax_step(state, jax_batch)
        jax.block_until_ready((state, metrics))
        jax_times.append((time.perf_counter() - start) / steps)
        start = time.perf_counter()
        for _ in range(steps):
            torch_step(images, labels)
        torch_times.append((time.perf_counter() - start) / steps)
    return {
        "jax": statistics.median(jax_times),
        "torch": statistics.median(torch_times),
        "jax_warmup": jax_warmup,
        "torch_warmup": torch_warmup,
    }


def available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="tiny,full", help="comma-separated: tiny, full")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compiles)")
    parser.add_argument("--steps", type=int, default=None, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="pin the process to this many cores (both frameworks); default: all available",
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.configs.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONFIGS]
    if unknown or not names:
        parser.error(f"--configs must name some of {tuple(CONFIGS)}, got {args.configs!r}.")
    args.configs = names
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if torch is None:
        print(
            "bench_train_step needs PyTorch, which is not a dependency of spectral_jax: "
            "install it (e.g. `pip install torch`) to compare against it.",
            file=sys.stderr,
        )
        return 2
    threads = available_cores()
    if args.threads is not None:
        if not 1 <= args.threads <= threads:
            print(f"--threads must be in [1, {threads}], got {args.threads}.", file=sys.stderr)
            return 2
        # XLA sizes its CPU thread pool from the affinity mask when the backend starts,
        # which is on first use, after this.
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])
        threads = args.threads
    torch.set_num_threads(threads)
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__}, "
        f"python {platform.python_version()}, {threads} cores; torch.set_num_threads({threads}), "
        f"XLA's thread pool uses the {threads} cores of the affinity mask; load average at start {os.getloadavg()[0]:.2f}"
    )
    if threads > 1 and os.getloadavg()[0] > available_cores():
        print(
            "note: the machine is loaded beyond its cores; PyTorch's OpenMP workers "
            "spin-wait and lose most of their time to contention then. Compare with "
            "--threads 1 as well."
        )
    failed = False
    table = []
    for name in args.configs:
        config = CONFIGS[name]
        batch = make_batch(config)
        for row in check_same_losses(config, batch, torch):
            ok = row["difference"] <= row["tolerance"]
            failed |= not ok
            print(
                f"[{name}] loss at step {row['step']} (no dropout): jax {row['jax']:.9g}, "
                f"torch {row['torch']:.9g} (float64: {row['torch64']:.9g}); relative "
                f"difference {row['difference']:.1e}, tolerance {row['tolerance']:.1e} "
                f"({'ok' if ok else 'FAILED'})"
            )
        steps = args.steps or (10 if name == "tiny" else 3)
        times = time_both(config, batch, torch, warmup=args.warmup, steps=steps, rounds=args.rounds)
        print(
            f"[{name}] warm-up ({args.warmup} steps, first compiles): "
            f"jax {times['jax_warmup']:.1f} s, torch {times['torch_warmup']:.1f} s"
        )
        table.append((name, config, times, steps))
    print(f"\nload average at end {os.getloadavg()[0]:.2f}\n")
    print("| config | model | batch x crop | framework | steps/s | ms/step | JAX / PyTorch |")
    print("|---|---|---|---|---:|---:|---:|")
    for name, config, times, _ in table:
        ratio = times["torch"] / times["jax"]
        shape = f"{config.batch_size} x {config.crop_size}"
        for framework, key in (("JAX (spectral_jax)", "jax"), ("PyTorch", "torch")):
            print(
                f"| {name} | {config.backbone} | {shape} | {framework} | "
                f"{1 / times[key]:.2f} | {1000 * times[key]:.0f} | "
                f"{f'{ratio:.2f}x' if key == 'jax' else '1.00x'} |"
            )
    print(
        f"\nMedian over {args.rounds} interleaved rounds; steps per round: "
        + ", ".join(f"{name} {steps}" for name, _, _, steps in table)
        + ". Ratio: JAX steps/s over PyTorch steps/s."
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
