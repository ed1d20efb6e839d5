"""Segmentation models in Flax linen: dilated ResNet backbones and DeepLab v3+."""

from spectral_jax.models.deeplab import ASPP as ASPP
from spectral_jax.models.deeplab import Decoder as Decoder
from spectral_jax.models.deeplab import DeepLabV3Plus as DeepLabV3Plus
from spectral_jax.models.deeplab import aspp_rates as aspp_rates
from spectral_jax.models.resnet import RESNET_CONFIGS as RESNET_CONFIGS
from spectral_jax.models.resnet import Bottleneck as Bottleneck
from spectral_jax.models.resnet import ResNet as ResNet
from spectral_jax.models.resnet import ResNetConfig as ResNetConfig
from spectral_jax.models.resnet import create_resnet as create_resnet
from spectral_jax.models.resnet import stage_dilations as stage_dilations
