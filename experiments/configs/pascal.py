"""PASCAL VOC 2012 (+SBD): DeepLab v3+ on ResNet-101, the paper's settings.

Paper (Sec. 3): 513 x 513 crops, batch 8, learning rate 0.0007, 100 epochs, ImageNet
ResNet-101. 10,582 training images (``voc_sbd``): 1,322 steps per epoch, 132,200 steps.

Launch (the data set is built by ``spectral_jax.data`` on first use, from the manually
downloaded files; the backbone is a torchvision ImageNet ResNet-101 checkpoint)::

  python -m experiments.train --config experiments/configs/pascal.py \\
      --workdir runs/pascal --config.pretrained_backbone=/path/to/resnet101-63fe2227.pth

Add ``--config.model.feature_size=33`` (or 65) for the truncated decoders of Table 2,
``--config.model.name=dan`` for DAN, ``--config.block_band_limit=16`` for the block-wise
annotation of Table 3, ``--config.pruning.encoder=0.4 --config.pruning.decoder=0.2`` for
soft filter pruning.

Expected result: the paper's Table 2 reports 78.8% validation mIoU for the untruncated
DeepLab v3+ (78.1% at ``feature_size=65``). Runtime: not measured here (132,200 steps of
ResNet-101 at 513 x 513; this project has had no accelerator time for it).
"""

from __future__ import annotations

import ml_collections

from spectral_jax.training import config as config_schema


def get_config() -> ml_collections.ConfigDict:
    """PASCAL VOC with the paper's training policy."""
    config = config_schema.get_config()
    config.dataset = "voc_sbd"
    config.learning_rate = 0.0007
    config.num_epochs = 100
    config.eval_every_steps = 10_000
    config.checkpoint_every_steps = 2_000
    return config
