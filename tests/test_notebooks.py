"""Executes the notebooks in ``notebooks/`` on their tiny default settings (nbclient).

A notebook that raises fails its test. Execution starts a kernel and compiles every
cell. ``spectral_jacobians.ipynb`` also trains a tiny DeepLab v3+ for 30 steps on the
embedded data set, which it builds in a temporary TFDS data directory (``TFDS_DATA_DIR``).
"""

from __future__ import annotations

import pytest

from tests.notebook_helpers import NOTEBOOKS, execute_notebook

# The up-sampling rows are chosen at the input's signed frequencies: each holds its energy
# on the diagonal (tests/test_frequencies.py has the dense float64 reference).
UPSAMPLING_CHECK = "assert np.min(np.asarray(up_fraction)) > 0.97, up_fraction"


@pytest.mark.slow  # About a minute: 30 training steps and every cell compiled.
@pytest.mark.parametrize("name", ["spectral_jacobians.ipynb"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    execute_notebook(NOTEBOOKS / name, tmp_path, monkeypatch, extra_cells=[UPSAMPLING_CHECK])
