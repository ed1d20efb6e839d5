"""Names every docstring example may use without importing them.

pytest collects the ``>>>`` examples of ``spectral_jax`` as doctests (``--doctest-modules``
and ``testpaths`` in ``pyproject.toml``). An example runs in the namespace of its module
(the module's own names are there) plus the names below, the imports a reader of any
example is assumed to have made; anything else an example imports itself, so that it can
be copied as it stands. This file sits at the repository root so that it applies to the
doctests in ``spectral_jax/`` as well as to ``tests/``.
"""

from __future__ import annotations

import os

from tests.helpers import compiler

# The tests' cheaper XLA settings (see the module), set before JAX creates its backend.
os.environ["XLA_FLAGS"] = compiler.with_test_flags(os.environ.get("XLA_FLAGS", ""))
# PyTorch (the reference models) and NumPy's BLAS on one thread per process: `make test`
# runs two pytest workers on a 2-core CPU, and two threads per worker outnumber the cores
# and spin waiting for each other (a reference ResNet-101 forward pass took 3.3 CPU-s on
# two threads and 0.27 on one). The results agree to rounding. Read when torch is first
# imported, which is after this file; a value given in the environment wins.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_jax

# Under CI=true a skip for a missing optional dependency fails (see the module).
pytest_plugins = ("tests.optional_dependencies",)


# The test modules that take longest on 2 cores (CPU seconds per module, child processes
# included), longest first.
# `make test` distributes whole modules over the workers (``--dist loadscope``), so that a
# module's shared fixture (a trained run, the demo, a compiled model) is computed by one
# worker instead of both; starting with the longest modules keeps one worker from being
# left alone with a long module at the end. The other modules follow in collection order.
LONGEST_MODULES = (
    "test_multiprocess",
    "test_loss_spectrum",
    "test_demo",
    "test_spectral_gradient",
    "test_segmentation_checkpoints",
    "test_pruning",
    "test_experiment_analyze",
    "test_docs",
    "test_seeds",
    "test_training",
    "test_layers",
    "test_resnet_scan",
    "test_anti_aliasing",
    "test_mixed_precision",
    "test_notebooks",
    "test_dan",
    "test_dct_deeplab",
    "test_parallel",
    "test_decoder_values",
    "test_flops",
    "test_training_frequency_methods",
    "test_pretrained",
    "test_aliasing",
    "test_truncation",
    "test_deeplab",
    "test_readme",
    "test_statistics",
    "test_notebook_band_limit_sweeps",
    "test_frequency_masking",
    "test_analysis",
    "test_accelerator_check",
    "test_evaluator",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Puts the tests of :data:`LONGEST_MODULES` first (a stable sort: the order of the
    tests within a module is kept)."""
    del config
    rank = {name: k for k, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


@pytest.fixture(autouse=True, scope="session")
def _doctest_names(doctest_namespace: dict) -> None:
    doctest_namespace.update(jax=jax, jnp=jnp, np=np, spectral_jax=spectral_jax)
