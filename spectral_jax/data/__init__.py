"""Data: segmentation data sets (TFDS builders), the input pipeline and the run's inputs.

Also the DCT input pipeline (:mod:`spectral_jax.data.dct_pipeline`). The data mesh the
batches are split over is :mod:`spectral_jax.parallel`.
"""

from spectral_jax.data.dct_pipeline import RUN_INPUTS as RUN_INPUTS
from spectral_jax.data.dct_pipeline import dct_input_pipeline as dct_input_pipeline
from spectral_jax.data.dct_pipeline import dct_layout as dct_layout
from spectral_jax.data.dct_pipeline import dct_run_pipeline as dct_run_pipeline
from spectral_jax.data.dct_pipeline import load_dct_statistics as load_dct_statistics
from spectral_jax.data.inputs import InputPipeline as InputPipeline
from spectral_jax.data.inputs import create_input_pipeline as create_input_pipeline
from spectral_jax.data.inputs import pad_batch as pad_batch
from spectral_jax.data.inputs import take_examples as take_examples
from spectral_jax.data.pipeline import IGNORE_INDEX as IGNORE_INDEX
from spectral_jax.data.pipeline import IMAGENET_MEAN as IMAGENET_MEAN
from spectral_jax.data.pipeline import IMAGENET_STD as IMAGENET_STD
from spectral_jax.data.pipeline import SegmentationDatasetInfo as SegmentationDatasetInfo
from spectral_jax.data.pipeline import dataset_info as dataset_info
from spectral_jax.data.pipeline import eval_batches as eval_batches
from spectral_jax.data.pipeline import load_split as load_split
from spectral_jax.data.pipeline import train_batches as train_batches
from spectral_jax.data.synthetic import SyntheticScenes as SyntheticScenes
from spectral_jax.data.synthetic import SyntheticScenesConfig as SyntheticScenesConfig
from spectral_jax.data.synthetic import blurred_label_logits as blurred_label_logits
from spectral_jax.data.synthetic import generate_example as generate_example

__all__ = [
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "InputPipeline",
    "RUN_INPUTS",
    "SegmentationDatasetInfo",
    "SyntheticScenes",
    "SyntheticScenesConfig",
    "blurred_label_logits",
    "create_input_pipeline",
    "dataset_info",
    "dct_input_pipeline",
    "dct_layout",
    "dct_run_pipeline",
    "eval_batches",
    "generate_example",
    "load_dct_statistics",
    "load_split",
    "pad_batch",
    "take_examples",
    "train_batches",
]
