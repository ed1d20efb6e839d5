"""The defaults of every field (the library's schema); not meant to be launched as is.

:func:`spectral_jax.training.config.get_config` defines the fields, with their meaning
and the paper's values (``python -m experiments.train --config default --print_config``
prints them); this file gives it a config name. With these defaults the trainer would
train ResNet-101 DeepLab v3+ on the generated scenes.
"""

from __future__ import annotations

import ml_collections

from spectral_jax.training import config as config_schema


def get_config() -> ml_collections.ConfigDict:
    """The library's default configuration (:func:`spectral_jax.training.config.get_config`)."""
    return config_schema.get_config()
