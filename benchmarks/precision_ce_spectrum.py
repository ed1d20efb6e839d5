"""Rounding error of the CE decomposition against the confidence of the model.

Run from the repository root::

  python -m benchmarks.precision_ce_spectrum
  python -m benchmarks.precision_ce_spectrum --shape 2x129x129x21 --scales 1,5,10,20

The components ``L_ce(nu)`` of a confident model are large and of both signs while their
sum, the CE, is small: the sum cancels. Each component carries a float32 rounding error
of about ``eps * log2(H W)`` times the size of the components, so the relative error of
the *sum* against the CE grows as the CE falls. This script measures it: logits are
``scale * onehot(labels) + N(0, 1)`` (larger scale, smaller CE), and for each scale it
prints the CE (float64, computed in space), the largest |component|, and the relative
Parseval error ``|sum_nu L_ce(nu) - CE| / CE`` in float32 and, under
``jax.enable_x64(True)``, in float64.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import numpy as np

import spectral_jax as sj


def _spatial_ce(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    peak = logits.max(-1, keepdims=True)
    log_partition = np.log(np.exp(logits - peak).sum(-1)) + peak[..., 0]
    label_logits = np.take_along_axis(logits, labels[..., None], -1)[..., 0]
    return (log_partition - label_logits).mean((1, 2))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="2x129x129x21", help="BxHxWxC")
    parser.add_argument("--scales", default="0,1,2,5,10,15,20")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    batch, height, width, num_classes = (int(n) for n in args.shape.split("x"))
    rng = np.random.default_rng(args.seed)
    labels = rng.integers(0, num_classes, size=(batch, height, width))
    noise = rng.normal(size=(batch, height, width, num_classes))
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}; shape {args.shape}")
    print(
        f"{'scale':>5} {'CE (f64)':>10} {'max|L(nu)|':>11} {'rel err f32':>12} {'rel err f64':>12}"
    )
    for scale in (float(s) for s in args.scales.split(",")):
        logits = scale * np.eye(num_classes)[labels] + noise
        ce = _spatial_ce(logits, labels)
        spectrum32 = np.asarray(sj.ce_spectrum(logits.astype(np.float32), labels))
        with jax.enable_x64(True):
            spectrum64 = np.asarray(sj.ce_spectrum(logits, labels))
        errors = [np.max(np.abs(s.sum((1, 2)) - ce) / ce) for s in (spectrum32, spectrum64)]
        print(
            f"{scale:5g} {ce.mean():10.3e} {np.abs(spectrum64).max():11.3e} "
            f"{errors[0]:12.2e} {errors[1]:12.2e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
