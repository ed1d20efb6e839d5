"""DeepLab v3+ on DCT input (Xu et al. 2020) with the pascal settings of ``pascal.py``.

512 x 512 training crops (a multiple of 16) instead of 513; everything else as in
``pascal.py``. PASCAL VOC images are at most 500 x 500: evaluation pads them to 512. The argument picks the variant of
``experiments.configs.dct.VARIANTS`` (default ``dct24s``)::

  python -m experiments.train --config experiments/configs/dct_pascal.py:dct192_gate \\
      --workdir runs/dct_pascal_gate

Not run here (GPU/TPU settings); the embedded-data counterpart is
``python -m experiments.frequency_input --config experiments/configs/tiny.py``.
"""

from __future__ import annotations

import ml_collections

from experiments.configs import pascal
from experiments.configs.dct import apply_variant


def get_config(variant: str = "dct24s") -> ml_collections.ConfigDict:
    """The pascal configuration with the DCT-input model ``variant``."""
    return apply_variant(pascal.get_config(), variant, crop_size=512, eval_crop_size=512)
