"""Shared fixtures.

``tests/`` is a package, so pytest puts the repository root on ``sys.path`` and
``spectral_jax`` imports from the working tree even before it is pip-installed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spectral_jax.models import create_resnet
from spectral_jax.models import resnet as resnet_lib
from tests.helpers.models import DEEP_TINY_BACKBONE, DEEP_TINY_STAGES, random_variables


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


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """The TFDS directory the experiment tests build the embedded data sets into.

    One per session (per worker under ``pytest -n``): a data set that one test module
    generated is read back by the next instead of being generated again.
    """
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def tiny_resnet():
    """``(model, variables, images)``: ``resnet_tiny`` at output stride 32, random
    variables (:func:`tests.helpers.models.random_variables`) and 2 images of 29 x 26."""
    model = create_resnet("resnet_tiny", output_stride=32)
    shape = (2, 29, 26, 3)
    variables = random_variables(model, shape, seed=1)
    images = jnp.asarray(np.random.default_rng(5).normal(size=shape), jnp.float32)
    return model, variables, images
