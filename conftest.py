"""Names every docstring example may use without importing them.

pytest collects the ``>>>`` examples of ``spectral_jax`` as doctests (``--doctest-modules``
and ``testpaths`` in ``pyproject.toml``). An example runs in the namespace of its module
(the module's own names are there) plus the names below, the imports a reader of any
example is assumed to have made; anything else an example imports itself, so that it can
be copied as it stands. This file sits at the repository root so that it applies to the
doctests in ``spectral_jax/`` as well as to ``tests/``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spectral_jax

# Under CI=true a skip for a missing optional dependency fails (see the module).
pytest_plugins = ("tests.optional_dependencies",)


@pytest.fixture(autouse=True, scope="session")
def _doctest_names(doctest_namespace: dict) -> None:
    doctest_namespace.update(jax=jax, jnp=jnp, np=np, spectral_jax=spectral_jax)
