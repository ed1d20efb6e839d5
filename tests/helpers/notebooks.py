"""Running the notebooks in ``notebooks/`` from the tests (nbclient)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import nbclient
import nbformat

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"


def execute_notebook(
    path: pathlib.Path, tmp_path: pathlib.Path, monkeypatch, *, extra_cells: Sequence[str] = ()
):
    """Executes the notebook at ``path`` (with ``extra_cells`` appended) in a fresh kernel.

    The kernel runs in ``tmp_path`` on the CPU (unless ``JAX_PLATFORMS`` says otherwise),
    draws with the Agg backend, imports ``spectral_jax`` from the working tree, like the
    tests do, and builds the embedded data set in ``tmp_path / "tfds"``, not in the user's
    TFDS directory.

    Returns:
      The executed notebook; its cells hold their outputs.

    Raises:
      AssertionError: if a cell's output is an error.
    """
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JAX_PLATFORMS", os.environ.get("JAX_PLATFORMS", "cpu"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    root = str(NOTEBOOKS.parent)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    )
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.extend(nbformat.v4.new_code_cell(source) for source in extra_cells)
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
    assert not errors, errors
    return notebook
