"""spectral_jax: spectral analysis of semantic segmentation networks in JAX."""

from spectral_jax import models as models
from spectral_jax.aliasing import EQUIVALENT_SAMPLING_FACTOR as EQUIVALENT_SAMPLING_FACTOR
from spectral_jax.aliasing import aliasing_score as aliasing_score
from spectral_jax.aliasing import de_alias as de_alias
from spectral_jax.aliasing import downsampling_aliasing_scores as downsampling_aliasing_scores
from spectral_jax.aliasing import (
    downsampling_inputs_interceptor as downsampling_inputs_interceptor,
)
from spectral_jax.aliasing import nyquist_cutoff as nyquist_cutoff
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
from spectral_jax.blockwise import block_partition as block_partition
from spectral_jax.blockwise import blockwise_annotation as blockwise_annotation
from spectral_jax.blockwise import blockwise_annotation_numpy as blockwise_annotation_numpy
from spectral_jax.boundary_metrics import BoundaryStatistics as BoundaryStatistics
from spectral_jax.boundary_metrics import boundary_regions as boundary_regions
from spectral_jax.boundary_metrics import boundary_scores as boundary_scores
from spectral_jax.boundary_metrics import boundary_statistics as boundary_statistics
from spectral_jax.boundary_metrics import dilate_square as dilate_square
from spectral_jax.boundary_metrics import label_edges as label_edges
from spectral_jax.dct_input import ChannelStatistics as ChannelStatistics
from spectral_jax.dct_input import block_dct as block_dct
from spectral_jax.dct_input import block_idct as block_idct
from spectral_jax.dct_input import dct_to_ycbcr as dct_to_ycbcr
from spectral_jax.dct_input import images_to_dct as images_to_dct
from spectral_jax.dct_input import images_to_dct_420 as images_to_dct_420
from spectral_jax.dct_input import normalize_channels as normalize_channels
from spectral_jax.dct_input import rgb_to_ycbcr as rgb_to_ycbcr
from spectral_jax.dct_input import select_channels as select_channels
from spectral_jax.dct_input import selection_mask as selection_mask
from spectral_jax.dct_input import selection_pattern as selection_pattern
from spectral_jax.dct_input import ycbcr_to_rgb as ycbcr_to_rgb
from spectral_jax.dct_input import zigzag_order as zigzag_order
from spectral_jax.flops import ConvLayer as ConvLayer
from spectral_jax.flops import FlopCount as FlopCount
from spectral_jax.flops import conv_layers as conv_layers
from spectral_jax.flops import conv_macs as conv_macs
from spectral_jax.flops import count_flops as count_flops
from spectral_jax.flops import flops_per_iou as flops_per_iou
from spectral_jax.frequency_masking import band_energies as band_energies
from spectral_jax.frequency_masking import class_activation_maps as class_activation_maps
from spectral_jax.frequency_masking import classifier_frequency_cams as classifier_frequency_cams
from spectral_jax.frequency_masking import cutoff_of_masking_ratio as cutoff_of_masking_ratio
from spectral_jax.frequency_masking import (
    frequency_class_activation_maps as frequency_class_activation_maps,
)
from spectral_jax.frequency_masking import low_frequency_mask as low_frequency_mask
from spectral_jax.frequency_masking import plot_frequency_cams as plot_frequency_cams
from spectral_jax.frequency_masking import split_by_masking_ratio as split_by_masking_ratio
from spectral_jax.frequency_masking import split_frequencies as split_frequencies
from spectral_jax.iou import IoUTerms as IoUTerms
from spectral_jax.iou import iou_from_terms as iou_from_terms
from spectral_jax.iou import spectral_iou as spectral_iou
from spectral_jax.iou import spectral_iou_terms as spectral_iou_terms
from spectral_jax.loss_spectrum import MagnitudeProfiles as MagnitudeProfiles
from spectral_jax.loss_spectrum import band_limit_sweep as band_limit_sweep
from spectral_jax.loss_spectrum import band_profile as band_profile
from spectral_jax.loss_spectrum import ce_half_spectrum as ce_half_spectrum
from spectral_jax.loss_spectrum import ce_spectrum as ce_spectrum
from spectral_jax.loss_spectrum import magnitude_profiles as magnitude_profiles
from spectral_jax.loss_spectrum import relative_discrepancy as relative_discrepancy
from spectral_jax.loss_spectrum import sweep_from_band_profile as sweep_from_band_profile
from spectral_jax.loss_spectrum import truncated_ce as truncated_ce
from spectral_jax.pruning import PruningPlan as PruningPlan
from spectral_jax.pruning import PruningRates as PruningRates
from spectral_jax.pruning import hard_prune as hard_prune
from spectral_jax.pruning import hard_pruned_model as hard_pruned_model
from spectral_jax.pruning import pruning_plan as pruning_plan
from spectral_jax.pruning import soft_prune as soft_prune
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
    within_radius_energy_fraction as within_radius_energy_fraction,
)
from spectral_jax.statistics import SpectralStatistics as SpectralStatistics
from spectral_jax.truncation import resize_features as resize_features
from spectral_jax.truncation import spectral_resize as spectral_resize

__version__ = "0.1.0"
