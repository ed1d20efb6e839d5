"""Data: segmentation data sets (TFDS builders) and the input pipeline."""

from spectral_jax.data.pipeline import IGNORE_INDEX as IGNORE_INDEX
from spectral_jax.data.pipeline import IMAGENET_MEAN as IMAGENET_MEAN
from spectral_jax.data.pipeline import IMAGENET_STD as IMAGENET_STD
from spectral_jax.data.pipeline import SegmentationDatasetInfo as SegmentationDatasetInfo
from spectral_jax.data.pipeline import TrainBatchFn as TrainBatchFn
from spectral_jax.data.pipeline import augment_example as augment_example
from spectral_jax.data.pipeline import dataset_info as dataset_info
from spectral_jax.data.pipeline import eval_batches as eval_batches
from spectral_jax.data.pipeline import load_split as load_split
from spectral_jax.data.pipeline import train_batches as train_batches
from spectral_jax.data.synthetic import SyntheticScenes as SyntheticScenes
from spectral_jax.data.synthetic import SyntheticScenesConfig as SyntheticScenesConfig
from spectral_jax.data.synthetic import blurred_label_logits as blurred_label_logits
from spectral_jax.data.synthetic import generate_example as generate_example
from spectral_jax.data.synthetic import preset_relative_discrepancy as preset_relative_discrepancy
