"""Shared fixtures.

``tests/`` is a package, so pytest puts the repository root on ``sys.path`` and
``spectral_jax`` imports from the working tree even before it is pip-installed.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A fixed-seed generator: every test sees the same data on every run."""
    return np.random.default_rng(20240601)


@pytest.fixture
def x64():
    """Enables float64 in JAX for the test only (restored afterwards, also on failure)."""
    with jax.enable_x64(True):
        yield
