"""Shared fixtures.

``tests/`` is a package, so pytest puts the repository root on ``sys.path`` and
``spectral_jax`` imports from the working tree even before it is pip-installed.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from spectral_jax.models import resnet as resnet_lib
from tests.model_helpers import DEEP_TINY_BACKBONE, DEEP_TINY_STAGES


@pytest.fixture
def rng() -> np.random.Generator:
    """A fixed-seed generator: every test sees the same data on every run."""
    return np.random.default_rng(20240601)


@pytest.fixture
def x64():
    """Enables float64 in JAX for the test only (restored afterwards, also on failure)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def deep_tiny_backbone(monkeypatch) -> str:
    """Registers a 4-channel backbone with (2, 3, 2, 2) blocks for the test; its name."""
    config = resnet_lib.ResNetConfig(DEEP_TINY_STAGES, width=4)
    monkeypatch.setitem(resnet_lib.RESNET_CONFIGS, DEEP_TINY_BACKBONE, config)
    return DEEP_TINY_BACKBONE
