r"""Jacobians with parameters as arguments: new weights against a jitted repeat; the batch.

Run from the repository root::

  python -m benchmarks.bench_jacobian_params
  python -m benchmarks.bench_jacobian_params --size 33 --batch 8 --repeats 7 --json /tmp/p.json

The layer is ``bench_eager_calls``'s: a 3x3 conv of 4 channels + ReLU (zero padding) on
a ``--size`` map (default 33x33x4). Two measurements:

1. **The repeat ratio.** ``spectral_jacobian`` (the full ``[H W, H W]`` matrix), timed
   per call in ``--repeats`` interleaved rounds (the order drawn afresh every round, after
   two warm-up calls each) for

   * ``jitted repeat``: ``jax.jit(lambda k, x: spectral_jacobian(partial(layer, kernel=k),
     x))`` called again with the same kernel: the floor a user jitting at the edge gets;
   * ``new params``: the eager call ``spectral_jacobian(layer, x, params={"kernel": k})``
     with a *new* kernel every call (a new checkpoint);
   * ``re-created partial``: the eager call with ``partial(layer, kernel=k)`` built anew
     with a new kernel every call (a notebook cell edited and run again).

   The ratio is each against the jitted repeat (target <= 1.2x). The first call of a new
   closure (``lambda z: layer(z, k)``, which compiles again by design) is timed once for
   scale.
2. **The batched Jacobian.** ``spectral_jacobian_rows`` (32 rows) of ``--batch`` maps,
   ``batched=True`` (one ``vmap``-ed program) against a Python loop of the eager
   per-map call (compiled already), same rounds; at ``--size`` and on small 9x9 maps,
   where the per-call overhead of the loop weighs more.

Every call ends in ``jax.block_until_ready``; the table gives medians. Times vary with
the load of other processes (printed at the start and the end).
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

import spectral_jax as sj
from benchmarks.timing import Stopwatch, load_average, time_call, time_interleaved
from spectral_jax import probes

TARGET = 1.2


def _layer(x, kernel):
    return probes.conv_activation(x, kernel, activation="relu", padding="zero")


def _layer_with_params(params, x):
    return _layer(x, params["kernel"])


def _interleaved(thunks: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Wall times of ``repeats`` interleaved rounds of the thunks, after two calls each."""
    return time_interleaved({name: (thunk, ()) for name, thunk in thunks.items()}, repeats)[1]


def run(size: int, batch: int, repeats: int, seed: int) -> dict[str, Any]:
    key_x, key_k = jax.random.split(jax.random.key(seed))
    xs = jax.random.uniform(key_x, (batch, size, size, 4), minval=-1.0, maxval=1.0)
    x = xs[0]
    kernels = iter([probes.random_kernel(k, (3, 3), (4, 4)) for k in jax.random.split(key_k, 1000)])
    kernel = next(kernels)

    jitted = jax.jit(lambda k, z: sj.spectral_jacobian(functools.partial(_layer, kernel=k), z))
    thunks = {
        "jitted repeat": lambda: jitted(kernel, x),
        "new params": lambda: sj.spectral_jacobian(
            _layer_with_params, x, params={"kernel": next(kernels)}
        ),
        "re-created partial": lambda: sj.spectral_jacobian(
            functools.partial(_layer, kernel=next(kernels)), x
        ),
    }
    repeat = {name: float(np.median(t)) for name, t in _interleaved(thunks, repeats).items()}
    new_kernel = next(kernels)
    new_closure_s, _ = time_call(lambda: sj.spectral_jacobian(lambda z: _layer(z, new_kernel), x))

    params = {"kernel": kernel}
    per_size = {}
    for map_size in (size, 9):
        maps = xs[:, :map_size, :map_size]
        indices = np.arange(32) * (map_size * map_size // 32 or 1) % (map_size * map_size)
        batched = {
            "batched (vmap)": lambda maps=maps, indices=indices: sj.spectral_jacobian_rows(
                _layer_with_params, maps, indices, params=params, batched=True
            ),
            "Python loop": lambda maps=maps, indices=indices: [
                sj.spectral_jacobian_rows(_layer_with_params, maps[b], indices, params=params)
                for b in range(batch)
            ],
        }
        times = _interleaved(batched, repeats)
        per_size[map_size] = {name: float(np.median(t)) for name, t in times.items()}
    return dict(repeat=repeat, new_closure_first_s=new_closure_s, batch=per_size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=33)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    print(f"JAX {jax.__version__}, {jax.devices()[0].device_kind}; load average {load_average()}")
    print(f"3x3 conv + ReLU on {args.size}x{args.size}x4; {args.repeats} interleaved repeats")
    watch = Stopwatch()
    result = run(args.size, args.batch, args.repeats, args.seed)
    floor = result["repeat"]["jitted repeat"]
    print(f"\nspectral_jacobian, full {args.size**2}x{args.size**2} matrix (medians)")
    for name, seconds in result["repeat"].items():
        print(f"  {name:<22}{seconds * 1e3:9.1f} ms{seconds / floor:8.2f}x  (target <= {TARGET}x)")
    print(f"  {'new closure (1 call)':<22}{result['new_closure_first_s'] * 1e3:9.1f} ms (compiles)")
    for map_size, times in result["batch"].items():
        loop = times["Python loop"]
        print(f"\nspectral_jacobian_rows, 32 rows of {args.batch} maps {map_size}x{map_size}x4")
        for name, seconds in times.items():
            print(f"  {name:<22}{seconds * 1e3:9.1f} ms{seconds / loop:8.2f}x of the loop")
    print(f"\ntotal {watch.wall_s:.0f} s; load average at end {load_average()}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
