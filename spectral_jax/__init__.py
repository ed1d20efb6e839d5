"""spectral_jax: spectral analysis of semantic segmentation networks in JAX.

The top level holds the core of *Spectral Analysis for Semantic Segmentation with
Applications on Feature Truncation and Weak Annotation* (Chen, Chiu, Wu;
arXiv:2012.14123): the frequency bands, the spectral decomposition of the cross-entropy
and its truncation, spectral IoU, streamed data-set statistics, exact spectral Jacobians
(also at a Flax model's layer named by its path), signed frequencies and their flat DFT
indices, feature truncation, block-wise annotation, FLOPs and the layer probes. The
related frequency-domain methods (DCT-domain input, frequency aliasing, frequency
masking) are one import away in :mod:`spectral_jax.related`; models, data, evaluation and
training are the subpackages :mod:`spectral_jax.models`, :mod:`spectral_jax.data`,
:mod:`spectral_jax.evaluation` and :mod:`spectral_jax.training`, which split their
batches over the device mesh of :mod:`spectral_jax.parallel`.
"""

import importlib.metadata as _metadata

from spectral_jax.bands import band_index as band_index
from spectral_jax.bands import band_limit_of_grid as band_limit_of_grid
from spectral_jax.bands import band_sizes as band_sizes
from spectral_jax.bands import centered_frequencies as centered_frequencies
from spectral_jax.bands import centered_spectrum as centered_spectrum
from spectral_jax.bands import grid_of_band_limit as grid_of_band_limit
from spectral_jax.bands import half_band_index as half_band_index
from spectral_jax.bands import half_spectrum_weights as half_spectrum_weights
from spectral_jax.bands import num_bands as num_bands
from spectral_jax.bands import signed_frequencies as signed_frequencies
from spectral_jax.blockwise import blockwise_annotation as blockwise_annotation
from spectral_jax.blockwise import blockwise_annotation_numpy as blockwise_annotation_numpy
from spectral_jax.flops import ConvLayer as ConvLayer
from spectral_jax.flops import FlopCount as FlopCount
from spectral_jax.flops import conv_layers as conv_layers
from spectral_jax.flops import conv_macs as conv_macs
from spectral_jax.flops import count_flops as count_flops
from spectral_jax.flops import flops_per_iou as flops_per_iou
from spectral_jax.frequencies import fig4_frequencies as fig4_frequencies
from spectral_jax.frequencies import flat_frequency_indices as flat_frequency_indices
from spectral_jax.frequencies import ravel_frequencies as ravel_frequencies
from spectral_jax.frequencies import unravel_frequencies as unravel_frequencies
from spectral_jax.iou import IoUTerms as IoUTerms
from spectral_jax.iou import iou_from_terms as iou_from_terms
from spectral_jax.iou import spectral_iou as spectral_iou
from spectral_jax.iou import spectral_iou_terms as spectral_iou_terms
from spectral_jax.layers import LayerHead as LayerHead
from spectral_jax.layers import layer_head as layer_head
from spectral_jax.layers import layer_output as layer_output
from spectral_jax.layers import layer_outputs as layer_outputs
from spectral_jax.layers import layer_paths as layer_paths
from spectral_jax.layers import layer_spectral_gradient as layer_spectral_gradient
from spectral_jax.loss_spectrum import MagnitudeProfiles as MagnitudeProfiles
from spectral_jax.loss_spectrum import ParsevalWarning as ParsevalWarning
from spectral_jax.loss_spectrum import band_limit_sweep as band_limit_sweep
from spectral_jax.loss_spectrum import band_profile as band_profile
from spectral_jax.loss_spectrum import ce_half_spectrum as ce_half_spectrum
from spectral_jax.loss_spectrum import ce_spectrum as ce_spectrum
from spectral_jax.loss_spectrum import magnitude_profiles as magnitude_profiles
from spectral_jax.loss_spectrum import relative_discrepancy as relative_discrepancy
from spectral_jax.loss_spectrum import sweep_from_band_profile as sweep_from_band_profile
from spectral_jax.loss_spectrum import truncated_ce as truncated_ce
from spectral_jax.spectral_gradient import ce_spectral_gradient as ce_spectral_gradient
from spectral_jax.spectral_gradient import diagonal_energy_fraction as diagonal_energy_fraction
from spectral_jax.spectral_gradient import energy_by_distance as energy_by_distance
from spectral_jax.spectral_gradient import frequency_distance as frequency_distance
from spectral_jax.spectral_gradient import spectral_jacobian as spectral_jacobian
from spectral_jax.spectral_gradient import (
    spectral_jacobian_band_energy as spectral_jacobian_band_energy,
)
from spectral_jax.spectral_gradient import spectral_jacobian_columns as spectral_jacobian_columns
from spectral_jax.spectral_gradient import spectral_jacobian_rows as spectral_jacobian_rows
from spectral_jax.spectral_gradient import (
    within_distance_energy_fraction as within_distance_energy_fraction,
)
from spectral_jax.statistics import SpectralStatistics as SpectralStatistics
from spectral_jax.truncation import resize_features as resize_features
from spectral_jax.truncation import spectral_resize as spectral_resize

# The installed distribution's version (pyproject.toml); a source tree that was never
# installed has none.
try:
    __version__ = _metadata.version("spectral_jax")
except _metadata.PackageNotFoundError:
    __version__ = "0+unknown"

__all__ = [
    "ConvLayer",
    "FlopCount",
    "IoUTerms",
    "LayerHead",
    "MagnitudeProfiles",
    "ParsevalWarning",
    "SpectralStatistics",
    "band_index",
    "band_limit_of_grid",
    "band_limit_sweep",
    "band_profile",
    "band_sizes",
    "blockwise_annotation",
    "blockwise_annotation_numpy",
    "ce_half_spectrum",
    "ce_spectral_gradient",
    "ce_spectrum",
    "centered_frequencies",
    "centered_spectrum",
    "conv_layers",
    "conv_macs",
    "count_flops",
    "diagonal_energy_fraction",
    "energy_by_distance",
    "fig4_frequencies",
    "flat_frequency_indices",
    "flops_per_iou",
    "frequency_distance",
    "grid_of_band_limit",
    "half_band_index",
    "half_spectrum_weights",
    "iou_from_terms",
    "layer_head",
    "layer_output",
    "layer_outputs",
    "layer_paths",
    "layer_spectral_gradient",
    "magnitude_profiles",
    "num_bands",
    "ravel_frequencies",
    "relative_discrepancy",
    "resize_features",
    "signed_frequencies",
    "spectral_iou",
    "spectral_iou_terms",
    "spectral_jacobian",
    "spectral_jacobian_band_energy",
    "spectral_jacobian_columns",
    "spectral_jacobian_rows",
    "spectral_resize",
    "sweep_from_band_profile",
    "truncated_ce",
    "unravel_frequencies",
    "within_distance_energy_fraction",
]
