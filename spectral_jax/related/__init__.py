"""Related frequency-domain methods one import away from the core.

Like ``optax.contrib``: ``import spectral_jax.related as related`` (or
``from spectral_jax import related``) and ``related.<name>``.

* :mod:`~spectral_jax.related.dct_input`: DCT-domain input of *Learning in the Frequency
  Domain* (Xu et al., CVPR 2020, arXiv:2002.12416).
* :mod:`~spectral_jax.related.frequency_masking`: low/high frequency splits and the
  frequency CAMs of *FFR: Frequency Feature Rectification for Weakly Supervised
  Semantic Segmentation* (CVPR 2025, supplementary material).
* :mod:`~spectral_jax.related.aliasing`: the aliasing score and the de-aliasing filter
  of *When Semantic Segmentation Meets Frequency Aliasing* (Chen, Gu, Fu, ICLR 2024,
  arXiv:2403.09065), as pure functions of feature maps.
* :mod:`~spectral_jax.related.boundary_metrics`: the boundary metrics of the same paper.

The Flax modules and interceptors that place these methods in a network (DAF, FreqMix,
the down-sampling probes) are in :mod:`spectral_jax.models.anti_aliasing`; their plots in
:mod:`spectral_jax.plotting`. This package imports only the core.
"""

from spectral_jax.related.aliasing import EQUIVALENT_SAMPLING_FACTOR as EQUIVALENT_SAMPLING_FACTOR
from spectral_jax.related.aliasing import aliasing_score as aliasing_score
from spectral_jax.related.aliasing import de_alias as de_alias
from spectral_jax.related.aliasing import nyquist_cutoff as nyquist_cutoff
from spectral_jax.related.boundary_metrics import BoundaryStatistics as BoundaryStatistics
from spectral_jax.related.boundary_metrics import boundary_regions as boundary_regions
from spectral_jax.related.boundary_metrics import boundary_scores as boundary_scores
from spectral_jax.related.boundary_metrics import boundary_statistics as boundary_statistics
from spectral_jax.related.boundary_metrics import label_edges as label_edges
from spectral_jax.related.dct_input import ChannelStatistics as ChannelStatistics
from spectral_jax.related.dct_input import block_dct as block_dct
from spectral_jax.related.dct_input import block_idct as block_idct
from spectral_jax.related.dct_input import dct_to_ycbcr as dct_to_ycbcr
from spectral_jax.related.dct_input import images_to_dct as images_to_dct
from spectral_jax.related.dct_input import images_to_dct_420 as images_to_dct_420
from spectral_jax.related.dct_input import normalize_channels as normalize_channels
from spectral_jax.related.dct_input import rgb_to_ycbcr as rgb_to_ycbcr
from spectral_jax.related.dct_input import select_channels as select_channels
from spectral_jax.related.dct_input import selection_mask as selection_mask
from spectral_jax.related.dct_input import selection_pattern as selection_pattern
from spectral_jax.related.dct_input import ycbcr_to_rgb as ycbcr_to_rgb
from spectral_jax.related.dct_input import zigzag_order as zigzag_order
from spectral_jax.related.frequency_masking import band_energies as band_energies
from spectral_jax.related.frequency_masking import class_activation_maps as class_activation_maps
from spectral_jax.related.frequency_masking import (
    classifier_frequency_cams as classifier_frequency_cams,
)
from spectral_jax.related.frequency_masking import (
    cutoff_of_masking_ratio as cutoff_of_masking_ratio,
)
from spectral_jax.related.frequency_masking import (
    frequency_class_activation_maps as frequency_class_activation_maps,
)
from spectral_jax.related.frequency_masking import low_frequency_mask as low_frequency_mask
from spectral_jax.related.frequency_masking import split_by_masking_ratio as split_by_masking_ratio
from spectral_jax.related.frequency_masking import split_frequencies as split_frequencies

__all__ = [
    "BoundaryStatistics",
    "ChannelStatistics",
    "EQUIVALENT_SAMPLING_FACTOR",
    "aliasing_score",
    "band_energies",
    "block_dct",
    "block_idct",
    "boundary_regions",
    "boundary_scores",
    "boundary_statistics",
    "class_activation_maps",
    "classifier_frequency_cams",
    "cutoff_of_masking_ratio",
    "dct_to_ycbcr",
    "de_alias",
    "frequency_class_activation_maps",
    "images_to_dct",
    "images_to_dct_420",
    "label_edges",
    "low_frequency_mask",
    "normalize_channels",
    "nyquist_cutoff",
    "rgb_to_ycbcr",
    "select_channels",
    "selection_mask",
    "selection_pattern",
    "split_by_masking_ratio",
    "split_frequencies",
    "ycbcr_to_rgb",
    "zigzag_order",
]
