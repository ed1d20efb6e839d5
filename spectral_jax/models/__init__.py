"""Segmentation models in Flax linen: dilated ResNet backbones, DeepLab v3+ and DAN.

Also: DeepLab v3+ on DCT-domain input with its channel gate (Xu et al., CVPR 2020), the
de-aliasing filter and FreqMix with the interceptors that place them (Chen, Gu, Fu, ICLR 2024), soft filter pruning
and its hard-pruned export, torchvision backbone checkpoints, trained segmentation networks
from PyTorch checkpoints (torchvision, segmentation_models_pytorch and the reference
DeepLab v3+ repository's layouts), and
:func:`~spectral_jax.models.registry.create_model`, the one place a config becomes a model.
"""

from spectral_jax.models.anti_aliasing import DeAliasingFilter as DeAliasingFilter
from spectral_jax.models.anti_aliasing import FreqMix as FreqMix
from spectral_jax.models.anti_aliasing import (
    downsampling_aliasing_scores as downsampling_aliasing_scores,
)
from spectral_jax.models.anti_aliasing import (
    downsampling_inputs_interceptor as downsampling_inputs_interceptor,
)
from spectral_jax.models.anti_aliasing import (
    freqmix_params_from_torch as freqmix_params_from_torch,
)
from spectral_jax.models.anti_aliasing import (
    insert_de_aliasing_filters as insert_de_aliasing_filters,
)
from spectral_jax.models.block_stacking import stack_blocks as stack_blocks
from spectral_jax.models.block_stacking import unstack_blocks as unstack_blocks
from spectral_jax.models.dan import DAN as DAN
from spectral_jax.models.dan import AggregationDecoder as AggregationDecoder
from spectral_jax.models.dct_deeplab import DCTDeepLabV3Plus as DCTDeepLabV3Plus
from spectral_jax.models.dct_deeplab import DCTResNet as DCTResNet
from spectral_jax.models.dct_gate import FrequencyGate as FrequencyGate
from spectral_jax.models.dct_gate import GateFrequency as GateFrequency
from spectral_jax.models.dct_gate import gate_regularizer as gate_regularizer
from spectral_jax.models.dct_gate import selection_heat_map as selection_heat_map
from spectral_jax.models.deeplab import ASPP as ASPP
from spectral_jax.models.deeplab import Decoder as Decoder
from spectral_jax.models.deeplab import DeepLabV3Plus as DeepLabV3Plus
from spectral_jax.models.deeplab import aspp_rates as aspp_rates
from spectral_jax.models.pretrained import load_pretrained_backbone as load_pretrained_backbone
from spectral_jax.models.pretrained import (
    load_torchvision_state_dict as load_torchvision_state_dict,
)
from spectral_jax.models.pretrained import (
    torchvision_to_flax_resnet as torchvision_to_flax_resnet,
)
from spectral_jax.models.pruning import PruningPlan as PruningPlan
from spectral_jax.models.pruning import PruningRates as PruningRates
from spectral_jax.models.pruning import hard_prune as hard_prune
from spectral_jax.models.pruning import hard_pruned_model as hard_pruned_model
from spectral_jax.models.pruning import pruning_plan as pruning_plan
from spectral_jax.models.pruning import soft_prune as soft_prune
from spectral_jax.models.registry import DOWNSAMPLE_FILTERS as DOWNSAMPLE_FILTERS
from spectral_jax.models.registry import INPUT_KINDS as INPUT_KINDS
from spectral_jax.models.registry import MODELS as MODELS
from spectral_jax.models.registry import create_model as create_model
from spectral_jax.models.registry import input_kind as input_kind
from spectral_jax.models.registry import input_shape as input_shape
from spectral_jax.models.resnet import RESNET_CONFIGS as RESNET_CONFIGS
from spectral_jax.models.resnet import Bottleneck as Bottleneck
from spectral_jax.models.resnet import ResNet as ResNet
from spectral_jax.models.resnet import ResNetConfig as ResNetConfig
from spectral_jax.models.resnet import Widths as Widths
from spectral_jax.models.resnet import create_resnet as create_resnet
from spectral_jax.models.resnet import stage_dilations as stage_dilations
from spectral_jax.models.segmentation_checkpoints import LAYOUTS as LAYOUTS
from spectral_jax.models.segmentation_checkpoints import (
    flax_to_torch_state_dict as flax_to_torch_state_dict,
)
from spectral_jax.models.segmentation_checkpoints import (
    load_segmentation_checkpoint as load_segmentation_checkpoint,
)
from spectral_jax.models.segmentation_checkpoints import (
    torch_to_flax_variables as torch_to_flax_variables,
)

__all__ = [
    "ASPP",
    "AggregationDecoder",
    "Bottleneck",
    "DAN",
    "DCTDeepLabV3Plus",
    "DCTResNet",
    "DOWNSAMPLE_FILTERS",
    "DeAliasingFilter",
    "Decoder",
    "DeepLabV3Plus",
    "FreqMix",
    "FrequencyGate",
    "GateFrequency",
    "INPUT_KINDS",
    "LAYOUTS",
    "MODELS",
    "PruningPlan",
    "PruningRates",
    "RESNET_CONFIGS",
    "ResNet",
    "ResNetConfig",
    "Widths",
    "aspp_rates",
    "create_model",
    "create_resnet",
    "downsampling_aliasing_scores",
    "downsampling_inputs_interceptor",
    "flax_to_torch_state_dict",
    "freqmix_params_from_torch",
    "gate_regularizer",
    "hard_prune",
    "hard_pruned_model",
    "input_kind",
    "input_shape",
    "insert_de_aliasing_filters",
    "load_pretrained_backbone",
    "load_segmentation_checkpoint",
    "load_torchvision_state_dict",
    "pruning_plan",
    "selection_heat_map",
    "soft_prune",
    "stack_blocks",
    "stage_dilations",
    "torch_to_flax_variables",
    "torchvision_to_flax_resnet",
    "unstack_blocks",
]
