r"""Images per second of the training input pipeline on the embedded data set.

Run from the repository root::

  python -m benchmarks.bench_pipeline
  python -m benchmarks.bench_pipeline --workers 0,2 --batches 20 --json /tmp/pipeline.json

Builds (once, into ``--data-dir``) two ``synthetic_scenes`` configs of the chosen scene:
the preset's 129 x 129 images and a 513 x 513 variant (``--num-large`` training images),
then times :func:`spectral_jax.data.train_batches` (decode the PNG, random scale in
[0.5, 2], pad, random crop, flip, normalise; batch size ``--batch-size``) for

* 129-pixel images at crop 129 and at crop 513 (mostly padding: the scaled images are at
  most 258 pixels),
* 513-pixel images at crop 513 (the paper's training crop),

with 0 workers (batches computed in this process) and with each ``--workers`` count > 0
(grain worker processes; this script's ``__main__`` guard makes them safe to start). The
first batch of every run is not timed (warm-up, worker start-up). The table gives images
per second over ``--batches`` batches after it; the load average is printed, since other
processes on the machine slow the pipeline down.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

from benchmarks.timing import Stopwatch, load_average
from spectral_jax import data
from spectral_jax.data import synthetic


def _time_run(source, *, crop_size, batch_size, batches, workers, mean, std) -> float:
    iterator = data.train_batches(
        source,
        batch_size=batch_size,
        crop_size=crop_size,
        seed=0,
        mean=mean,
        std=std,
        worker_count=workers,
    )
    next(iterator)  # warm-up (and worker start-up)
    with Stopwatch() as watch:
        for _ in range(batches):
            next(iterator)
    elapsed = watch.wall_s
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
    return batches * batch_size / elapsed


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", default="pascal_like", choices=list(synthetic.SCENE_CLASSES))
    parser.add_argument(
        "--data-dir", default=os.path.join(tempfile.gettempdir(), "spectral_jax_bench_tfds")
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--workers", default="0,2", help="comma-separated worker counts")
    parser.add_argument("--num-large", type=int, default=24, help="513-pixel training images")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args(argv)

    small = synthetic.preset(args.scene)
    large = synthetic.SyntheticScenesConfig(
        name=f"{args.scene}_513",
        scene=args.scene,
        image_size=513,
        num_train=args.num_large,
        num_validation=1,
    )
    info = data.dataset_info(f"synthetic_scenes/{args.scene}")
    sources = {}
    for config in (small, large):
        watch = Stopwatch()
        sources[config.image_size] = data.load_split(
            "synthetic_scenes",
            "train",
            data_dir=args.data_dir,
            builder_kwargs={"config": config},
        )
        print(f"data set {config.name}: ready in {watch.wall_s:.1f} s")

    rows = []
    cases = [(129, 129), (129, 513), (513, 513)]
    for workers in (int(w) for w in args.workers.split(",")):
        for image_size, crop_size in cases:
            rate = _time_run(
                sources[image_size],
                crop_size=crop_size,
                batch_size=args.batch_size,
                batches=args.batches,
                workers=workers,
                mean=info.mean,
                std=info.std,
            )
            rows.append(
                dict(image_size=image_size, crop_size=crop_size, workers=workers, images_per_s=rate)
            )

    print(f"\nload average: {load_average()}, CPUs: {os.cpu_count()}, batch size {args.batch_size}")
    print(f"{'image':>6} {'crop':>6} {'workers':>8} {'images/s':>10}")
    for row in rows:
        print(
            f"{row['image_size']:>6} {row['crop_size']:>6} {row['workers']:>8} "
            f"{row['images_per_s']:>10.1f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
