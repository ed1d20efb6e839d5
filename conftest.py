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

# The tests compile hundreds of small programs and run each a few times: compilation is
# most of their time. Two XLA settings make it cheaper, measured on `tests/test_pruning.py`
# (2-core CPU; backend compile seconds of its 543 programs, from `jax.monitoring`):
# - the LLVM back end at optimisation level 0 (the default run took 7.0 instead of 9.8
#   minutes);
# - XLA's older loop emitters instead of its fusion emitters
#   (`--xla_cpu_use_fusion_emitters=false`): 10.8 instead of 20.0 s, 37 instead of 52 CPU-s.
# The HLO is the same; the machine code differs, and float32 results can differ from the
# default code's at the rounding level (reduction order). Set before JAX creates its
# backend (it reads XLA_FLAGS then); the processes the tests start inherit them (tests
# that set XLA_FLAGS for a child append to it). A value given in XLA_FLAGS wins:
# `XLA_FLAGS="--xla_backend_optimization_level=3 --xla_cpu_use_fusion_emitters=true"
# make test` tests the code that users' runs compile.
_TEST_XLA_FLAGS = {
    "--xla_backend_optimization_level": "0",
    "--xla_cpu_use_fusion_emitters": "false",
}
for _flag, _value in _TEST_XLA_FLAGS.items():
    if _flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}={_value}".strip()
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
