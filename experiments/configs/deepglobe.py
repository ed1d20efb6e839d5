"""DeepGlobe land cover: DeepLab v3+ on ResNet-101, the paper's settings.

Paper (Sec. 3): 513 x 513 crops, batch 8, learning rate 0.007, 600 epochs, ImageNet
ResNet-101. The builder (``deepglobe_land_cover``) splits the 803 labelled images into
701 training and 102 validation images: 87 steps per epoch, 52,200 steps. Evaluation
runs on the whole 2448 x 2448 images (``eval_crop_size=None``), one image per device
(``eval_batch_size`` must be a multiple of the number of devices).

Launch::

  python -m experiments.train --config experiments/configs/deepglobe.py \\
      --workdir runs/deepglobe --config.pretrained_backbone=/path/to/resnet101-63fe2227.pth

Expected result: the paper's Table 2 reports 53.9% mIoU for the untruncated DeepLab v3+
(53.6% at ``feature_size=65``, 53.1% at 33). Runtime: not measured here (600 epochs of
ResNet-101 at 513 x 513).
"""

from __future__ import annotations

import ml_collections

from spectral_jax.training import config as config_schema


def get_config() -> ml_collections.ConfigDict:
    """DeepGlobe with the paper's training policy."""
    config = config_schema.get_config()
    config.dataset = "deepglobe_land_cover"
    config.learning_rate = 0.007
    config.num_epochs = 600
    config.eval_crop_size = None
    config.eval_batch_size = 1
    config.eval_every_steps = 10_000
    config.checkpoint_every_steps = 2_000
    return config
