"""Frequency-domain input (Xu et al. 2020): turn a configuration into a DCT-input variant.

:func:`apply_variant` switches ``config.model`` to ``"dct_deeplabv3plus"``
(:class:`spectral_jax.models.DCTDeepLabV3Plus`: DCT coefficients of 8 x 8 blocks,
192 channels, the ResNet stem removed) with a static channel selection (DCT-6/24/48/64
S or T, :func:`spectral_jax.related.dct_input.selection_pattern`), all 192 channels, or all 192
behind the learned gate (``model.gate_weight`` the regulariser's weight,
:data:`GATE_WEIGHT`). The input layout, ``config.model.layout``, is the authors'
segmentation one by default (``"segmentation"``: luma of the 2x, chroma of the 4x
up-scaled image, ``[H / 4, W / 4, 192]``, entering stage 1 where the RGB stem's output
does); ``"classification"`` is their ImageNet layout ``[H / 8, W / 8, 192]``. Crops must
be multiples of 16: the RGB configs' 513 becomes 512 (module docstring of
``spectral_jax/models/dct_deeplab.py``). The per-channel DCT statistics are estimated
over ``dct_statistics_batches`` training batches at the start of a run and saved in its
work directory (``dct_statistics.npz``).

The launchable files are ``dct_pascal.py``, ``dct_cityscapes.py`` and
``dct_deepglobe.py``; the variant is the config argument::

  python -m experiments.train --config experiments/configs/dct_pascal.py:dct24s \\
      --workdir runs/dct_pascal_24s
"""

from __future__ import annotations

import ml_collections

from spectral_jax.related.dct_input import (
    DEFAULT_LAYOUT,
    DCTLayout,
    check_layout,
    selection_pattern,
)

#: Weight lambda of the gate regulariser (mean open gates per image) in the loss of a
#: gated variant, ``config.model.gate_weight`` (the paper states no value; ours).
GATE_WEIGHT = 0.01

#: Variant name -> (number of channels, selection shape, gate); "rgb" is the RGB model.
VARIANTS: dict[str, tuple[int, str, bool] | None] = {
    "rgb": None,
    "dct6s": (6, "square", False),
    "dct24s": (24, "square", False),
    "dct24t": (24, "triangle", False),
    "dct48s": (48, "square", False),
    "dct64s": (64, "square", False),
    "dct64t": (64, "triangle", False),
    "dct192": (192, "square", False),
    "dct192_gate": (192, "square", True),
}


def apply_variant(
    config: ml_collections.ConfigDict,
    variant: str,
    *,
    crop_size: int = 512,
    eval_crop_size: int | None = 512,
    layout: DCTLayout = DEFAULT_LAYOUT,
) -> ml_collections.ConfigDict:
    """``config`` (changed in place and returned) as the DCT ``variant``.

    Args:
      config: an RGB DeepLab v3+ configuration.
      variant: a key of :data:`VARIANTS` (``"rgb"`` leaves the model as it is).
      crop_size: training crop of the DCT model (multiple of 16).
      eval_crop_size: evaluation padding size (multiple of 16) or ``None``.
      layout: the DCT input layout, ``"segmentation"`` (default) or
        ``"classification"``.

    Raises:
      ValueError: for an unknown variant or layout.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {tuple(VARIANTS)}, got {variant!r}.")
    check_layout(layout)
    spec = VARIANTS[variant]
    if spec is None:
        return config
    num_channels, shape, gate = spec
    config.model.name = "dct_deeplabv3plus"
    config.model.layout = layout
    config.model.channels = (
        None
        if num_channels == 192
        else tuple(int(c) for c in selection_pattern(num_channels, shape=shape))
    )
    config.model.gate = gate
    if gate:
        config.model.gate_weight = GATE_WEIGHT
    config.crop_size = crop_size
    config.eval_crop_size = eval_crop_size
    return config
