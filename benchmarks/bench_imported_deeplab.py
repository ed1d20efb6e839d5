r"""Inference images/s of an imported DeepLab v3+ ResNet-101 against the same model in PyTorch.

Run from the repository root (needs the ``torch`` extra; exits with status 2 without it)::

  python -m benchmarks.bench_imported_deeplab
  python -m benchmarks.bench_imported_deeplab --batch 8 --size 513 --threads 1 --json /tmp/b.json

The model is the reference PyTorch DeepLab v3+ ResNet-101 (output stride 16, multi-grid
``(1, 2, 4)``, ``align_corners=True``; ``benchmarks._torch_deeplab``
``ReferenceRepositoryDeepLab``) with random weights and BatchNorm statistics, in eval
mode. Its state dict is imported with
:func:`spectral_jax.models.segmentation_checkpoints.torch_to_flax_variables` into the
registry model ``pytorch_deeplab_xception``, whose logits must agree with PyTorch's to
1e-4 relative on the benchmark batch (exit status 1 otherwise). Then one timed call of
each on the same ``[B, size, size, 3]`` batch after one warm-up call (JAX:
``jax.jit(model.apply)`` with ``jax.block_until_ready``, compile time reported apart;
PyTorch: ``torch.inference_mode()``, ``torch.set_num_threads`` as many threads as the
process may use). Timings vary with the load of other processes (printed at the start
and the end); one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.timing import Stopwatch, load_average, time_call
from spectral_jax.models import segmentation_checkpoints

try:  # PyTorch is optional (the `torch` extra): without it the script exits with status 2.
    import torch

    from benchmarks import _torch_deeplab
except ImportError:
    torch = _torch_deeplab = None

LAYOUT = "pytorch_deeplab_xception"
TOLERANCE = 1e-4


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=513)
    parser.add_argument("--threads", type=int, default=0, help="pin to N cores (0: all)")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
    if torch is None:
        print("PyTorch is not installed (pip install '.[torch]').", file=sys.stderr)
        return 2
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    print(f"load average at start: {load_average()}; {threads} threads; batch {args.batch}")

    torch.manual_seed(0)
    reference = _torch_deeplab.randomise_batch_norm(_torch_deeplab.ReferenceRepositoryDeepLab(), 0)
    state_dict = {key: value.numpy() for key, value in reference.state_dict().items()}
    model = segmentation_checkpoints.create_layout_model(
        LAYOUT, num_classes=21, backbone="resnet101"
    )
    variables = segmentation_checkpoints.torch_to_flax_variables(state_dict, model, layout=LAYOUT)
    images = np.random.default_rng(0).normal(size=(args.batch, args.size, args.size, 3))
    images = images.astype(np.float32)
    torch_images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()

    apply = jax.jit(model.apply)
    with Stopwatch() as compiling:
        compiled = apply.lower(variables, jnp.asarray(images)).compile()
    compile_s = compiling.wall_s
    jax_logits = np.asarray(jax.block_until_ready(compiled(variables, jnp.asarray(images))))
    jax_s, _ = time_call(lambda: compiled(variables, jnp.asarray(images)))

    with torch.inference_mode():
        torch_logits = reference(torch_images).permute(0, 2, 3, 1).numpy()
        with Stopwatch() as torch_call:
            reference(torch_images)
        torch_s = torch_call.wall_s

    error = float(np.max(np.abs(jax_logits - torch_logits)) / np.max(np.abs(torch_logits)))
    results = {
        "batch": args.batch,
        "size": args.size,
        "threads": threads,
        "relative_error": error,
        "jax_compile_s": compile_s,
        "jax_s": jax_s,
        "torch_s": torch_s,
        "jax_images_per_s": args.batch / jax_s,
        "torch_images_per_s": args.batch / torch_s,
        "jax_over_torch": (args.batch / jax_s) / (args.batch / torch_s),
        "load_at_end": load_average(),
    }
    print(f"logits: max relative difference {error:.2e} (limit {TOLERANCE:g})")
    print("| framework | s/batch | images/s | JAX / PyTorch |")
    print("|---|---:|---:|---:|")
    print(f"| JAX | {jax_s:.2f} | {args.batch / jax_s:.3f} | {results['jax_over_torch']:.2f}x |")
    print(f"| PyTorch | {torch_s:.2f} | {args.batch / torch_s:.3f} | 1.00x |")
    print(f"JAX compile: {compile_s:.1f} s; load average at end: {results['load_at_end']}")
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(results, stream, indent=2)
    return 0 if error <= TOLERANCE else 1


if __name__ == "__main__":
    sys.exit(main())
