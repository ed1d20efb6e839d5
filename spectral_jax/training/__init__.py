"""Training of the segmentation models: the loop, the steps, the state and checkpoints.

The model comes from :func:`spectral_jax.models.create_model`, the data from
:func:`spectral_jax.data.create_input_pipeline`, the evaluation from
:class:`spectral_jax.evaluation.Evaluator`; the data mesh is
:mod:`spectral_jax.parallel`. The fields of a run's configuration, with their
defaults and the paper's values: :mod:`spectral_jax.training.config`.
"""

from spectral_jax.training.checkpointing import CheckpointError as CheckpointError
from spectral_jax.training.checkpointing import (
    create_checkpoint_manager as create_checkpoint_manager,
)
from spectral_jax.training.checkpointing import load_checkpoint as load_checkpoint
from spectral_jax.training.checkpointing import load_variables as load_variables
from spectral_jax.training.checkpointing import restore_latest as restore_latest
from spectral_jax.training.checkpointing import save_checkpoint as save_checkpoint
from spectral_jax.training.steps import create_soft_prune_fn as create_soft_prune_fn
from spectral_jax.training.steps import train_step as train_step
from spectral_jax.training.train import InvalidLabelsError as InvalidLabelsError
from spectral_jax.training.train import train_and_evaluate as train_and_evaluate
from spectral_jax.training.train_state import TrainState as TrainState
from spectral_jax.training.train_state import create_optimizer as create_optimizer
from spectral_jax.training.train_state import create_train_state as create_train_state
from spectral_jax.training.train_state import init_variables as init_variables
from spectral_jax.training.train_state import poly_schedule as poly_schedule
from spectral_jax.training.train_state import run_keys as run_keys

__all__ = [
    "CheckpointError",
    "InvalidLabelsError",
    "TrainState",
    "create_checkpoint_manager",
    "create_optimizer",
    "create_soft_prune_fn",
    "create_train_state",
    "init_variables",
    "load_checkpoint",
    "load_variables",
    "poly_schedule",
    "restore_latest",
    "run_keys",
    "save_checkpoint",
    "train_and_evaluate",
    "train_step",
]
