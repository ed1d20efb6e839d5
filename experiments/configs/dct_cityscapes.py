"""DeepLab v3+ on DCT input (Xu et al. 2020) with the cityscapes settings of ``cityscapes.py``.

512 x 512 training crops (a multiple of 16) instead of 513; everything else as in
``cityscapes.py``. The 1024 x 2048 validation images are multiples of 16 and are evaluated whole. The argument picks the variant of
``experiments.configs.dct.VARIANTS`` (default ``dct24s``)::

  python -m experiments.train --config experiments/configs/dct_cityscapes.py:dct192_gate \\
      --workdir runs/dct_cityscapes_gate

Not run here (GPU/TPU settings); the embedded-data counterpart is
``python -m experiments.frequency_input --config experiments/configs/tiny.py``.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import cityscapes
from experiments.configs.dct import apply_variant


def get_config(variant: str = "dct24s") -> ml_collections.ConfigDict:
    """The cityscapes configuration with the DCT-input model ``variant``."""
    return apply_variant(cityscapes.get_config(), variant, crop_size=512, eval_crop_size=None)
