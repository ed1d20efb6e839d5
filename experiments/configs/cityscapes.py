"""Cityscapes (fine annotations): DeepLab v3+ on ResNet-101, the paper's settings.

Paper (Sec. 3): 513 x 513 crops, batch 8, learning rate 0.001, 200 epochs, ImageNet
ResNet-101. 2,975 training images: 371 steps per epoch, 74,200 steps. Evaluation runs
on the whole 1024 x 2048 validation images (``eval_crop_size=None``: no padding, as
they share one size), one image per device (``eval_batch_size`` must be a multiple of
the number of devices).

Launch::

  python -m experiments.train --config experiments/configs/cityscapes.py \\
      --workdir runs/cityscapes --config.pretrained_backbone=/path/to/resnet101-63fe2227.pth

Expected result: the paper's Table 2 reports 67.8% mIoU for the untruncated DeepLab v3+
(62.7% at ``feature_size=65``, 53.3% at 33). Runtime: not measured here (74,200 steps of
ResNet-101 at 513 x 513).
"""

from __future__ import annotations

import ml_collections

from spectral_jax.training import config as config_schema


def get_config() -> ml_collections.ConfigDict:
    """Cityscapes with the paper's training policy."""
    config = config_schema.get_config()
    config.dataset = "cityscapes"
    config.learning_rate = 0.001
    config.num_epochs = 200
    config.eval_crop_size = None
    config.eval_batch_size = 1
    config.eval_every_steps = 10_000
    config.checkpoint_every_steps = 2_000
    return config
