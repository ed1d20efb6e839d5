"""Defaults of every training configuration (the fields read by the trainer).

The variants (``pascal.py``, ``deepglobe.py``, ``cityscapes.py``, ``tiny.py``) start
from :func:`get_config` and override what changes. This one is not meant to be launched
as is (it trains ResNet-101 DeepLab v3+ on the generated scenes).

Settings from the paper (Chen, Chiu, Wu, Sec. 3, "Segmentation models and
implementation details"): DeepLab v3+ or DAN on an ImageNet ResNet-101, random 513 x 513
crops and flips, batch size 8, initial learning rates 0.0007 (PASCAL), 0.007
(DeepGlobe), 0.001 (Cityscapes) and 100 / 600 / 200 epochs. DeepLab conventions the
paper does not state (Chen et al. 2017, 2018): SGD with momentum 0.9, the "poly"
schedule with power 0.9, L2 weight decay 1e-4 on the kernels, random scaling in
[0.5, 2.0], output stride 16.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """The default configuration (fields documented inline)."""
    config = ml_collections.ConfigDict()

    # Data (spectral_jax.data).
    config.dataset = "synthetic_scenes/pascal_like"
    config.data_dir = ml_collections.config_dict.placeholder(str)
    config.train_split = "train"
    config.eval_split = "validation"
    config.crop_size = 513
    # Evaluation images are padded (ignore label) to this size; None: to the largest
    # image of each batch (the spectral statistics then need one size over the split).
    config.eval_crop_size = 513
    config.scale_range = (0.5, 2.0)
    config.flip = True
    config.worker_count = 0
    # The label of pixels left out of the loss and the metrics (and of the crops'
    # padding); None: the data set's own (255). Any other label outside
    # [0, num_classes) stops training with an error naming the step.
    config.ignore_index = ml_collections.config_dict.placeholder(int)
    # Block-wise weak annotation (paper Sec. 3.3): band limit of the training labels;
    # None trains on the pixel-wise labels.
    config.block_band_limit = ml_collections.config_dict.placeholder(int)

    # Model (spectral_jax.models): `name` picks the class, the other fields are its
    # attributes ("deeplabv3plus" -> DeepLabV3Plus, "dan" -> DAN, "dct_deeplabv3plus" ->
    # DCTDeepLabV3Plus, which takes DCT coefficients: crops multiple of 16). A field
    # `downsample_filter` (None, "daf" or "freqmix"; DeepLab only) puts a de-aliasing
    # filter or FreqMix before every strided block of the backbone.
    config.model = ml_collections.ConfigDict()
    config.model.name = "deeplabv3plus"
    config.model.backbone = "resnet101"
    config.model.output_stride = 16
    config.model.feature_size = ml_collections.config_dict.placeholder(int)
    config.model.resample = "bilinear"
    config.model.dropout_rate = 0.5  # ASPP dropout, the model's default (torchvision).
    # Computation dtype of the convolutions: "float32" or "bfloat16" (mixed precision:
    # parameters, optimizer state, BatchNorm statistics, logits, loss and spectral
    # statistics stay float32). "float16" is refused (it would need loss scaling).
    config.model.dtype = "float32"
    # Path of ImageNet weights for the backbone (spectral_jax.models.pretrained); None
    # trains from scratch.
    config.pretrained_backbone = ml_collections.config_dict.placeholder(str)
    # Path of a trained PyTorch segmentation network's checkpoint, the whole network, in
    # the layout that config.model.name names (spectral_jax.models.segmentation_checkpoints:
    # torchvision_deeplabv3, torchvision_fcn, smp_deeplabv3plus, smp_deeplabv3,
    # pytorch_deeplab_xception): the run fine-tunes it. None: no such start.
    config.pretrained_weights = ml_collections.config_dict.placeholder(str)

    # Optimisation.
    config.batch_size = 8
    config.eval_batch_size = 8
    config.learning_rate = 0.007
    config.lr_power = 0.9
    config.momentum = 0.9
    config.weight_decay = 1e-4
    config.num_epochs = 100
    config.num_train_steps = -1  # > 0 overrides num_epochs.

    # Soft filter pruning at the end of every epoch (paper Sec. 3.2, Table 2): pruning
    # rates of the encoder's and the decoder's filters (e.g. 0.4 and 0.2); all zero
    # disables it.
    config.pruning = ml_collections.ConfigDict({"encoder": 0.0, "decoder": 0.0})

    # Loop, logging, checkpoints.
    config.seed = 0
    # Replicas trained at once (one jax.vmap-ped step): replica k has the seed seed + k
    # (initialisation, data order, dropout) and ends as a run with that seed would.
    config.num_seeds = 1
    # Training batches on the devices at once (spectral_jax.data.sharding.
    # prefetch_to_device): 2 places the next batch while a step runs; 1 places each
    # batch when the step asks for it.
    config.prefetch_batches = 2
    config.log_every_steps = 50
    config.eval_every_steps = -1  # <= 0: evaluate only at the end.
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3
    config.spectral_statistics = True  # Band profile, mean CE, R(nu_max) at evaluation.
    # Boundary metrics at evaluation (BIoU, BAcc, FErr, MErr, DErr of Chen, Gu, Fu 2024,
    # spectral_jax.related.boundary_metrics), on the unpadded images.
    config.boundary_metrics = True

    # Frequency-domain input (Xu et al. 2020), read when model.name = "dct_deeplabv3plus":
    # training batches over which the per-channel DCT statistics are estimated (the
    # gate's regulariser weight is the model's, config.model.gate_weight: configs/dct.py).
    config.dct_statistics_batches = 10
    config.tensorboard = True
    config.progress_bar = True
    config.distributed = False  # jax.distributed.initialize() before anything else.
    return config
