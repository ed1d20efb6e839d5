"""Executes the notebooks in ``notebooks/`` on their tiny default settings (nbclient).

A notebook that raises fails its test. Execution starts a kernel and compiles every
cell. ``spectral_jacobians.ipynb`` also trains a tiny DeepLab v3+ for 30 steps on the
embedded data set, which it builds in a temporary TFDS data directory (``TFDS_DATA_DIR``).
"""

from __future__ import annotations

import os
import pathlib

import nbclient
import nbformat
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("name", ["spectral_jacobians.ipynb"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
    # Notebooks that need the embedded data set build it here, not in the user's TFDS dir.
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    # The kernel imports spectral_jax from the working tree, like the tests do.
    root = str(NOTEBOOKS.parent)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors
