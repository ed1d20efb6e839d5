"""Trains and evaluates a segmentation model: flags only, the logic is in the library.

Example::

  python -m experiments.train --config experiments/configs/tiny.py --workdir runs/tiny
  python -m experiments.train --config experiments/configs/pascal.py --workdir runs/pascal \\
      --config.model.feature_size=65

Rerunning with the same ``--workdir`` resumes from the latest checkpoint. With
``--config.distributed=True`` the script is one process of a multi-process run: on a
SLURM cluster or a Cloud TPU pod ``jax.distributed.initialize()`` finds its peers, and
on one machine ``python -m experiments.launch`` starts the processes (``experiments/README.md``,
"Training"). Writes
``metrics.jsonl``, TensorBoard event files, ``checkpoints/`` and ``summary.json`` to the
work directory (see :func:`spectral_jax.training.train_and_evaluate`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax

from experiments import cli
from spectral_jax.training import train_and_evaluate

# A name rather than __name__, which is "__main__" when run with -m.
_LOG = logging.getLogger("experiments.train")


def distributed_arguments(environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """``num_processes`` and ``process_id`` for ``jax.distributed.initialize`` from
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``, where they are set.

    jax reads ``JAX_COORDINATOR_ADDRESS`` itself but takes the number of processes and
    the process's index only as arguments or from a cluster it detects (SLURM, Open MPI,
    Cloud TPU, Kubernetes). The local launcher (:mod:`experiments.launch`) sets all three
    variables; on a cluster none is set and ``initialize()`` asks the cluster.

    Raises:
      ValueError: if only one of the two is set, or one is not an integer.
    """
    names = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}
    given = {key: environ[name] for key, name in names.items() if environ.get(name)}
    if len(given) == 1:
        raise ValueError(
            f"set both {names['num_processes']} and {names['process_id']} or neither, "
            f"got {', '.join(f'{names[k]}={v}' for k, v in given.items())}."
        )
    try:
        return {key: int(value) for key, value in given.items()}
    except ValueError as error:
        raise ValueError(
            f"{names['num_processes']} and {names['process_id']} must be integers, got {given}."
        ) from error


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Trains and evaluates on the command line ``argv``; returns the run's summary.

    ``--config`` and ``--workdir`` as every experiment script takes them
    (:mod:`experiments.cli`), both required here: a training run names what it trains
    and where its checkpoints go.
    """
    flag_values = cli.parse(argv, name="train", doc=__doc__, required=("config", "workdir"))
    config = flag_values.config
    if config.distributed:
        # Before any other JAX call: connects the processes. The coordinator's address
        # comes from JAX_COORDINATOR_ADDRESS or the cluster (SLURM, Cloud TPU), the
        # process count and index from the launcher's variables or the cluster.
        jax.distributed.initialize(**distributed_arguments())
    # This script's and the trainer's progress at INFO; other libraries stay at the level
    # cli.run set (WARNING): orbax logs every checkpoint operation at INFO, and under
    # experiments.launch each process's lines would bury the run's own.
    for name in ("experiments", "spectral_jax"):
        logging.getLogger(name).setLevel(logging.INFO)
    _LOG.info(
        "process %d/%d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    summary = train_and_evaluate(config, flag_values.workdir)
    short = {key: summary[key] for key in ("mean_iou", "pixel_accuracy", "steps", "wall_time_s")}
    _LOG.info("summary: %s", json.dumps(short))
    return summary


if __name__ == "__main__":
    cli.run(main)
