"""Trains and evaluates a segmentation model: flags only, the logic is in the library.

Example::

  python -m experiments.train --config experiments/configs/tiny.py --workdir runs/tiny
  python -m experiments.train --config experiments/configs/pascal.py --workdir runs/pascal \\
      --config.model.feature_size=65

Rerunning with the same ``--workdir`` resumes from the latest checkpoint. Writes
``metrics.jsonl``, TensorBoard event files, ``checkpoints/`` and ``summary.json`` to the
work directory (see :func:`spectral_jax.training.train_and_evaluate`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import jax

from experiments import cli
from spectral_jax.training import train_and_evaluate


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Trains and evaluates on the command line ``argv``; returns the run's summary.

    ``--config`` and ``--workdir`` as every experiment script takes them
    (:mod:`experiments.cli`), both required here: a training run names what it trains
    and where its checkpoints go.
    """
    flag_values = cli.parse(argv, name="train", doc=__doc__, required=("config", "workdir"))
    config = flag_values.config
    if config.distributed:
        # Before any other JAX call: connects the hosts (cluster settings from the
        # environment, e.g. SLURM or Cloud TPU).
        jax.distributed.initialize()
    logging.getLogger().setLevel(logging.INFO)
    logging.info(
        "process %d/%d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    summary = train_and_evaluate(config, flag_values.workdir)
    short = {key: summary[key] for key in ("mean_iou", "pixel_accuracy", "steps", "wall_time_s")}
    logging.info("summary: %s", json.dumps(short))
    return summary


if __name__ == "__main__":
    cli.run(main)
