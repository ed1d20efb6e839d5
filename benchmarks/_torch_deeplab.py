"""DeepLab v3+ in PyTorch for the benchmarks (PyTorch is not a dependency of the package).

Importing this module imports ``torch``; the benchmarks import it inside
``try: ... except ImportError`` and skip their PyTorch part without it.

Two encoders under one ASPP and decoder, both written like
:class:`spectral_jax.models.DeepLabV3Plus` (ASPP with image pooling, BatchNorm and ReLU
after every convolution, dropout after the projection; the decoder on the stride-4 grid,
bilinear up-sampling with ``align_corners=False``) and with its parameter names:

* :func:`mirror_deeplab`: a ResNet written here layer by layer with the Flax model's
  names (``encoder.layer3_block5.conv2``...), so that :func:`copy_flax_to_torch` copies
  Flax variables into it (``benchmarks/bench_train_step.py`` checks that both frameworks
  compute the same losses);
* :func:`torchvision_deeplab`: torchvision's ResNet (``torchvision.models.resnet101``
  for ``"resnet101"``) with ``replace_stride_with_dilation`` for the output stride, the
  model a PyTorch user would write (``benchmarks/accelerator_check.py``).

And :class:`ReferenceRepositoryDeepLab`, the DeepLab v3+ ResNet of the widely used
PyTorch reference repository (pytorch-deeplab-xception) written here from its structure
(multi-grid, ``align_corners=True``, its key names), whose checkpoints
:mod:`spectral_jax.models.segmentation_checkpoints` imports
(``benchmarks/bench_imported_deeplab.py``, ``tests/test_segmentation_checkpoints.py``).

Tensors are ``[B, C, H, W]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flax import traverse_util
from torch import nn
from torch.nn import functional

from spectral_jax.models.block_stacking import unstack_blocks
from spectral_jax.models.deeplab import aspp_rates
from spectral_jax.models.resnet import RESNET_CONFIGS, stage_dilations


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, bias=False):
    pad = dilation * (kernel - 1) // 2
    return nn.Conv2d(cin, cout, kernel, stride, pad, dilation, bias=bias)


def _add_conv_bn(module: nn.Module, name: str, cin, cout, kernel, dilation=1) -> None:
    """Registers ``<name>_conv`` and ``<name>_bn``, the Flax module names."""
    setattr(module, f"{name}_conv", _conv(cin, cout, kernel, dilation=dilation))
    setattr(module, f"{name}_bn", nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1))


def _conv_bn_relu(module: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    bn = getattr(module, f"{name}_bn")
    return functional.relu(bn(getattr(module, f"{name}_conv")(x)))


class Bottleneck(nn.Module):
    """The Flax :class:`spectral_jax.models.resnet.Bottleneck` (3x3 stride and dilation)."""

    def __init__(self, cin: int, features: int, stride: int, dilation: int):
        super().__init__()
        self.conv1 = _conv(cin, features, 1)
        self.bn1 = nn.BatchNorm2d(features)
        self.conv2 = _conv(features, features, 3, stride, dilation)
        self.bn2 = nn.BatchNorm2d(features)
        self.conv3 = _conv(features, 4 * features, 1)
        self.bn3 = nn.BatchNorm2d(4 * features)
        self.downsample_conv = self.downsample_bn = None
        if cin != 4 * features or stride != 1:
            self.downsample_conv = _conv(cin, 4 * features, 1, stride)
            self.downsample_bn = nn.BatchNorm2d(4 * features)

    def forward(self, x):
        y = functional.relu(self.bn1(self.conv1(x)))
        y = functional.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if self.downsample_conv is not None:
            x = self.downsample_bn(self.downsample_conv(x))
        return functional.relu(x + y)


class MirrorResNet(nn.Module):
    """The Flax ResNet of ``backbone`` with its names; returns ``(low_level, high_level)``."""

    def __init__(self, backbone: str, output_stride: int):
        super().__init__()
        resnet = RESNET_CONFIGS[backbone]
        width = resnet.width
        self.conv1 = _conv(3, width, 7, 2)
        self.bn1 = nn.BatchNorm2d(width)
        self.blocks = []
        cin, previous_dilation = width, 1
        plan = stage_dilations(output_stride)
        for stage, (num_blocks, (stride, dilation)) in enumerate(
            zip(resnet.stage_sizes, plan, strict=True)
        ):
            for block in range(num_blocks):
                first = block == 0
                module = Bottleneck(
                    cin,
                    width * 2**stage,
                    stride if first else 1,
                    previous_dilation if first else dilation,
                )
                setattr(self, f"layer{stage + 1}_block{block}", module)
                self.blocks.append((stage, module))
                cin = 4 * width * 2**stage
            previous_dilation = dilation
        self.low_level_channels, self.high_level_channels = 4 * width, 32 * width

    def forward(self, x):
        x = functional.relu(self.bn1(self.conv1(x)))
        x = functional.max_pool2d(x, 3, 2, 1)
        low_level = None
        for stage, block in self.blocks:
            x = block(x)
            if stage == 0:
                low_level = x
        return low_level, x


class TorchvisionResNet(nn.Module):
    """torchvision's ResNet with dilation for ``output_stride``; ``(low_level, high_level)``.

    ``"resnet101"`` and ``"resnet50"`` are ``torchvision.models.resnet101`` and
    ``resnet50``; other backbones (``"resnet_tiny"``) are torchvision's
    ``ResNet(Bottleneck, stage_sizes)`` with the Flax config's block counts (torchvision's
    widths: its stem has 64 channels).
    """

    def __init__(self, backbone: str, output_stride: int):
        super().__init__()
        import torchvision  # Only this encoder needs it.

        dilate = [
            stride == 1 and dilation > 1 for stride, dilation in stage_dilations(output_stride)
        ]
        replace = dilate[1:]  # torchvision's flags for layer2, layer3, layer4
        models = torchvision.models
        if backbone in ("resnet50", "resnet101"):
            net = getattr(models, backbone)(weights=None, replace_stride_with_dilation=replace)
        else:
            stage_sizes = list(RESNET_CONFIGS[backbone].stage_sizes)
            net = models.resnet.ResNet(
                models.resnet.Bottleneck, stage_sizes, replace_stride_with_dilation=replace
            )
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1,
            net.layer2,
            net.layer3,
            net.layer4,
        )
        self.low_level_channels = net.layer1[-1].conv3.out_channels
        self.high_level_channels = net.layer4[-1].conv3.out_channels

    def forward(self, x):
        low_level = self.layer1(self.stem(x))
        return low_level, self.layer4(self.layer3(self.layer2(low_level)))


class ASPP(nn.Module):
    """The Flax ASPP: 1x1, three atrous 3x3, image pooling, 1x1 projection, dropout."""

    def __init__(self, cin: int, features: int, rates, dropout_rate: float):
        super().__init__()
        _add_conv_bn(self, "branch0", cin, features, 1)
        for i, rate in enumerate(rates):
            _add_conv_bn(self, f"branch{i + 1}", cin, features, 3, rate)
        _add_conv_bn(self, "pool", cin, features, 1)
        _add_conv_bn(self, "project", 5 * features, features, 1)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x):
        branches = [_conv_bn_relu(self, f"branch{i}", x) for i in range(4)]
        pooled = _conv_bn_relu(self, "pool", x.mean(dim=(2, 3), keepdim=True))
        branches.append(pooled.expand(-1, -1, *x.shape[2:]))
        return self.dropout(_conv_bn_relu(self, "project", torch.cat(branches, dim=1)))


class Decoder(nn.Module):
    """The Flax decoder on the low-level grid (``feature_size=None``)."""

    def __init__(self, low_channels, aspp_channels, low_level_channels, decoder_channels, classes):
        super().__init__()
        _add_conv_bn(self, "low_level", low_channels, low_level_channels, 1)
        _add_conv_bn(self, "fuse1", aspp_channels + low_level_channels, decoder_channels, 3)
        _add_conv_bn(self, "fuse2", decoder_channels, decoder_channels, 3)
        self.classifier = _conv(decoder_channels, classes, 1, bias=True)

    def forward(self, aspp, low_level):
        low_level = _conv_bn_relu(self, "low_level", low_level)
        aspp = functional.interpolate(
            aspp, size=low_level.shape[2:], mode="bilinear", align_corners=False
        )
        y = _conv_bn_relu(self, "fuse1", torch.cat([aspp, low_level], dim=1))
        return self.classifier(_conv_bn_relu(self, "fuse2", y))


class DeepLabV3Plus(nn.Module):
    """Encoder, ASPP and decoder; logits ``[B, C, H, W]`` for images ``[B, 3, H, W]``."""

    def __init__(self, encoder: nn.Module, aspp: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder, self.aspp, self.decoder = encoder, aspp, decoder

    def forward(self, images):
        low_level, high_level = self.encoder(images)
        logits = self.decoder(self.aspp(high_level), low_level)
        return functional.interpolate(
            logits, size=images.shape[2:], mode="bilinear", align_corners=False
        )


def _deeplab(
    encoder,
    *,
    num_classes: int,
    output_stride: int,
    aspp_channels: int,
    low_level_channels: int,
    decoder_channels: int,
    dropout_rate: float,
) -> DeepLabV3Plus:
    aspp = ASPP(encoder.high_level_channels, aspp_channels, aspp_rates(output_stride), dropout_rate)
    decoder = Decoder(
        encoder.low_level_channels,
        aspp_channels,
        low_level_channels,
        decoder_channels,
        num_classes,
    )
    return DeepLabV3Plus(encoder, aspp, decoder)


def mirror_deeplab(*, backbone: str, output_stride: int = 16, **settings) -> DeepLabV3Plus:
    """DeepLab v3+ on :class:`MirrorResNet`: the Flax model's layers, order and names.

    Args:
      backbone: a name of :data:`spectral_jax.models.resnet.RESNET_CONFIGS`.
      output_stride: 8, 16 or 32.
      **settings: ``num_classes``, ``aspp_channels``, ``low_level_channels``,
        ``decoder_channels``, ``dropout_rate`` (the Flax model's attributes).
    """
    encoder = MirrorResNet(backbone, output_stride)
    return _deeplab(encoder, output_stride=output_stride, **settings)


def torchvision_deeplab(*, backbone: str, output_stride: int = 16, **settings) -> DeepLabV3Plus:
    """DeepLab v3+ on :class:`TorchvisionResNet` (needs torchvision); as :func:`mirror_deeplab`."""
    encoder = TorchvisionResNet(backbone, output_stride)
    return _deeplab(encoder, output_stride=output_stride, **settings)


def copy_flax_to_torch(variables: dict[str, Any], module: nn.Module) -> None:
    """Copies Flax variables into a :func:`mirror_deeplab` module (kernels ``HWIO -> OIHW``).

    Stacked blocks (``scan_blocks``) are copied block by block, as torch holds them.

    Raises:
      ValueError: if a parameter or buffer of ``module`` has no Flax counterpart or a
        different shape, or a Flax variable has no torch counterpart.
    """
    variables = unstack_blocks(variables)
    params = traverse_util.flatten_dict(variables["params"], sep=".")
    stats = traverse_util.flatten_dict(variables["batch_stats"], sep=".")
    copied = set()
    with torch.no_grad():
        for key, tensor in module.state_dict().items():
            prefix, leaf = key.rsplit(".", 1)
            if leaf == "num_batches_tracked":
                continue
            if leaf == "weight" and f"{prefix}.kernel" in params:
                source = f"{prefix}.kernel"
                value = np.transpose(np.asarray(params[source]), (3, 2, 0, 1))
            else:
                source = {
                    "weight": f"{prefix}.scale",
                    "bias": f"{prefix}.bias",
                    "running_mean": f"{prefix}.mean",
                    "running_var": f"{prefix}.var",
                }[leaf]
                table = stats if leaf.startswith("running") else params
                if source not in table:
                    raise ValueError(f"no Flax variable for the torch entry {key!r}.")
                value = np.asarray(table[source])
            if tuple(value.shape) != tuple(tensor.shape):
                raise ValueError(f"{key}: torch {tuple(tensor.shape)}, flax {value.shape}.")
            tensor.copy_(torch.from_numpy(np.array(value, dtype=np.float32)))
            copied.add(source)
    left = (set(params) | set(stats)) - copied
    if left:
        raise ValueError(f"Flax variables without a torch counterpart: {sorted(left)[:8]}.")


# ---------------------------------------------------------------------------------------
# The reference DeepLab v3+ repository's ResNet model (pytorch-deeplab-xception), written
# here in torch.nn from its documented structure:
# ResNet v1.5 bottlenecks; output stride 16: strides (1, 2, 2, 1), dilations (1, 1, 1, 2),
# every block of a stage at the stage's dilation, the last stage a multi-grid unit of
# three blocks at dilation 2 x (1, 2, 4); ASPP with rates (1, 6, 12, 18) and image
# pooling ("aspp1".."aspp4": atrous_conv + bn; global_avg_pool: pool, conv, bn, relu;
# conv1 + bn1 projection); decoder: conv1 + bn1 (256 -> 48) on the stride-4 features,
# the ASPP output resized to them with align_corners=True, last_conv = conv 304 -> 256,
# bn, relu, dropout, conv 256 -> 256, bn, relu, dropout, conv 256 -> classes; logits
# resized to the input with align_corners=True.


class ReferenceBottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride, dilation, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.downsample = None
        if downsample:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, 4 * planes, 1, stride, bias=False), nn.BatchNorm2d(4 * planes)
            )

    def forward(self, x):
        y = functional.relu(self.bn1(self.conv1(x)))
        y = functional.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return functional.relu(y + (x if self.downsample is None else self.downsample(x)))


class ReferenceResNet(nn.Module):
    def __init__(self, layers, output_stride=16, multi_grid=(1, 2, 4)):
        super().__init__()
        strides, dilations = {16: ((1, 2, 2, 1), (1, 1, 1, 2)), 8: ((1, 2, 1, 1), (1, 1, 2, 4))}[
            output_stride
        ]
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for stage in range(4):
            planes = 64 * 2**stage
            block_dilations = [dilations[stage]] * layers[stage]
            if stage == 3:
                block_dilations = [dilations[stage] * m for m in multi_grid]
            blocks = []
            for index, dilation in enumerate(block_dilations):
                stride = strides[stage] if index == 0 else 1
                downsample = index == 0 and (stride != 1 or inplanes != 4 * planes)
                blocks.append(ReferenceBottleneck(inplanes, planes, stride, dilation, downsample))
                inplanes = 4 * planes
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))

    def forward(self, x):
        x = self.maxpool(functional.relu(self.bn1(self.conv1(x))))
        low_level = self.layer1(x)
        return self.layer4(self.layer3(self.layer2(low_level))), low_level


class ReferenceASPPModule(nn.Module):
    def __init__(self, inplanes, kernel, dilation):
        super().__init__()
        padding = 0 if kernel == 1 else dilation
        self.atrous_conv = nn.Conv2d(inplanes, 256, kernel, 1, padding, dilation, bias=False)
        self.bn = nn.BatchNorm2d(256)

    def forward(self, x):
        return functional.relu(self.bn(self.atrous_conv(x)))


class ReferenceASPP(nn.Module):
    def __init__(self, output_stride=16, inplanes=2048):
        super().__init__()
        rates = {16: (1, 6, 12, 18), 8: (1, 12, 24, 36)}[output_stride]
        for i, rate in enumerate(rates):
            setattr(self, f"aspp{i + 1}", ReferenceASPPModule(inplanes, 1 if i == 0 else 3, rate))
        self.global_avg_pool = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Conv2d(inplanes, 256, 1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(),
        )
        self.conv1 = nn.Conv2d(1280, 256, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(256)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x):
        branches = [getattr(self, f"aspp{i}")(x) for i in range(1, 5)]
        pooled = functional.interpolate(
            self.global_avg_pool(x), size=x.shape[2:], mode="bilinear", align_corners=True
        )
        y = torch.cat([*branches, pooled], dim=1)
        return self.dropout(functional.relu(self.bn1(self.conv1(y))))


class ReferenceDecoder(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(256, 48, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(48)
        self.last_conv = nn.Sequential(
            nn.Conv2d(304, 256, 3, 1, 1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Conv2d(256, 256, 3, 1, 1, bias=False),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Conv2d(256, num_classes, 1),
        )

    def forward(self, x, low_level):
        low_level = functional.relu(self.bn1(self.conv1(low_level)))
        x = functional.interpolate(x, size=low_level.shape[2:], mode="bilinear", align_corners=True)
        return self.last_conv(torch.cat([x, low_level], dim=1))


class ReferenceRepositoryDeepLab(nn.Module):
    """Logits ``[B, C, H, W]``; key names ``backbone.*``, ``aspp.*``, ``decoder.*``."""

    def __init__(self, layers=(3, 4, 23, 3), num_classes=21, output_stride=16):
        super().__init__()
        self.backbone = ReferenceResNet(layers, output_stride)
        self.aspp = ReferenceASPP(output_stride)
        self.decoder = ReferenceDecoder(num_classes)

    def forward(self, images):
        x, low_level = self.backbone(images)
        x = self.decoder(self.aspp(x), low_level)
        return functional.interpolate(x, size=images.shape[2:], mode="bilinear", align_corners=True)


def randomise_batch_norm(model: nn.Module, seed: int) -> nn.Module:
    """``model`` in eval mode with random BatchNorm affine parameters and statistics.

    A freshly built PyTorch model has BatchNorm weight 1, bias 0, mean 0 and variance 1,
    which would hide a mix-up of the four in an import; these draws make each matter.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                shape = module.weight.shape
                module.weight.copy_(0.5 + 0.5 * torch.rand(shape, generator=generator))
                module.bias.normal_(0.0, 0.1, generator=generator)
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.copy_(0.5 + 1.5 * torch.rand(shape, generator=generator))
                module.num_batches_tracked.fill_(11)
    return model.eval()
