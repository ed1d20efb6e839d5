"""DeepLab v3+ on DCT input (Xu et al. 2020) with the deepglobe settings of ``deepglobe.py``.

512 x 512 training crops (a multiple of 16) instead of 513; everything else as in
``deepglobe.py``. The 2448 x 2448 images (153 x 16) are evaluated whole. The argument picks the variant of
``experiments.configs.dct.VARIANTS`` (default ``dct24s``)::

  python -m experiments.train --config experiments/configs/dct_deepglobe.py:dct192_gate \\
      --workdir runs/dct_deepglobe_gate

Not run here (GPU/TPU settings); the embedded-data counterpart is
``python -m experiments.frequency_input --config experiments/configs/tiny.py``.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import deepglobe
from experiments.configs.dct import apply_variant


def get_config(variant: str = "dct24s") -> ml_collections.ConfigDict:
    """The deepglobe configuration with the DCT-input model ``variant``."""
    return apply_variant(deepglobe.get_config(), variant, crop_size=512, eval_crop_size=None)
