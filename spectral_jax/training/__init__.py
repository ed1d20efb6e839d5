"""Training of the segmentation models: steps, loop, checkpoints, metrics, sharding."""

from spectral_jax.evaluation.metrics import confusion_matrix as confusion_matrix
from spectral_jax.evaluation.metrics import iou_from_confusion as iou_from_confusion
from spectral_jax.evaluation.metrics import mean_iou as mean_iou
from spectral_jax.evaluation.metrics import pixel_accuracy as pixel_accuracy
from spectral_jax.training.checkpointing import CheckpointError as CheckpointError
from spectral_jax.training.checkpointing import (
    create_checkpoint_manager as create_checkpoint_manager,
)
from spectral_jax.training.checkpointing import restore_latest as restore_latest
from spectral_jax.training.checkpointing import save_checkpoint as save_checkpoint
from spectral_jax.training.sharding import batch_sharding as batch_sharding
from spectral_jax.training.sharding import create_mesh as create_mesh
from spectral_jax.training.sharding import replicate as replicate
from spectral_jax.training.sharding import replicated_sharding as replicated_sharding
from spectral_jax.training.sharding import shard_batch as shard_batch
from spectral_jax.training.train import InputPipeline as InputPipeline
from spectral_jax.training.train import create_input_pipeline as create_input_pipeline
from spectral_jax.training.train import create_model as create_model
from spectral_jax.training.train import cross_entropy_loss as cross_entropy_loss
from spectral_jax.training.train import dct_channel_statistics as dct_channel_statistics
from spectral_jax.training.train import dct_input_pipeline as dct_input_pipeline
from spectral_jax.training.train import eval_step as eval_step
from spectral_jax.training.train import is_dct_model as is_dct_model
from spectral_jax.training.train import load_checkpoint as load_checkpoint
from spectral_jax.training.train import load_dct_statistics as load_dct_statistics
from spectral_jax.training.train import train_and_evaluate as train_and_evaluate
from spectral_jax.training.train import train_step as train_step
from spectral_jax.training.train import (
    valid_region_boundary_statistics as valid_region_boundary_statistics,
)
from spectral_jax.training.train_state import TrainState as TrainState
from spectral_jax.training.train_state import create_optimizer as create_optimizer
from spectral_jax.training.train_state import create_train_state as create_train_state
from spectral_jax.training.train_state import poly_schedule as poly_schedule
