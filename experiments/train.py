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

import jax
from absl import app, flags
from ml_collections import config_flags

from spectral_jax.training import train_and_evaluate

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the summary.")
flags.mark_flag_as_required("workdir")
config_flags.DEFINE_config_file("config", None, "Training configuration file.")
flags.mark_flag_as_required("config")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = FLAGS.config
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
    summary = train_and_evaluate(config, FLAGS.workdir)
    short = {key: summary[key] for key in ("mean_iou", "pixel_accuracy", "steps", "wall_time_s")}
    logging.info("summary: %s", json.dumps(short))


if __name__ == "__main__":
    app.run(main)
