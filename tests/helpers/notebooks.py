"""Running the notebooks in ``notebooks/`` (nbclient), in the tests and to store their outputs.

The notebooks are committed with their outputs, so that their figures can be read without
running them. After changing a notebook, store its outputs again, from the repository
root (``MPLBACKEND`` is left to the kernel: inline figures)::

  python -m tests.helpers.notebooks notebooks/spectral_jacobians.ipynb ...
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Sequence

import nbclient
import nbformat

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[2] / "notebooks"
# What the stored outputs may not mention: paths of the machine that ran them.
MACHINE_PATHS = ("/tmp/", "/work/", "/home/", "/root/", "site-packages", "/usr/")


def kernel_environment(tmp_path: pathlib.Path) -> dict[str, str]:
    """The environment variables the kernel runs with.

    The CPU (unless ``JAX_PLATFORMS`` says otherwise), matplotlib's inline backend (the
    figures become outputs), the embedded data set built in ``tmp_path / "tfds"`` rather
    than in the user's TFDS directory, and the working tree's packages importable, as an
    installation would make them.
    """
    return {
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
        "TFDS_DATA_DIR": str(tmp_path / "tfds"),
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(NOTEBOOKS.parent), os.environ.get("PYTHONPATH")])
        ),
    }


def _run(path: pathlib.Path, tmp_path: pathlib.Path, extra_cells: Sequence[str]):
    """Executes a copy of ``notebooks/`` in ``tmp_path``, from the notebook's own folder."""
    folder = tmp_path / "notebooks"
    if not folder.exists():
        shutil.copytree(path.parent, folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.extend(nbformat.v4.new_code_cell(source) for source in extra_cells)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(folder)}},
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


def execute_notebook(
    path: pathlib.Path, tmp_path: pathlib.Path, monkeypatch, *, extra_cells: Sequence[str] = ()
):
    """Executes the notebook at ``path`` (with ``extra_cells`` appended) in a fresh kernel.

    The kernel's working directory is a copy of the notebook's folder in ``tmp_path``, as
    for a reader who opens it there (what it writes stays out of the repository); its
    environment is :func:`kernel_environment`.

    Returns:
      The executed notebook; its cells hold their outputs.

    Raises:
      AssertionError: if a cell's output is an error.
    """
    for name, value in kernel_environment(tmp_path).items():
        monkeypatch.setenv(name, value)
    return _run(path, tmp_path, extra_cells)


def stored_outputs_problems(path: pathlib.Path, *, max_bytes: int) -> list[str]:
    """What is wrong with the outputs committed in the notebook at ``path`` (empty: nothing).

    Every code cell has run, in order from 1, without an error; the file is at most
    ``max_bytes``; no output names a path of the machine that ran it.
    """
    problems = []
    if (size := path.stat().st_size) > max_bytes:
        problems.append(f"{path.name} is {size} bytes, more than {max_bytes}")
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    counts = [cell.execution_count for cell in code]
    if counts != list(range(1, len(code) + 1)):
        problems.append(f"execution counts {counts}: not run once, in order")
    for index, cell in enumerate(code):
        for output in cell.outputs:
            if output.output_type == "error":
                problems.append(f"code cell {index}: error {output.ename}")
            text = output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
            text += str(output.get("data", {}).get("text/markdown", ""))
            problems += [
                f"code cell {index}: output names {marker!r}"
                for marker in MACHINE_PATHS
                if marker in text
            ]
    return problems


def store_outputs(paths: Sequence[pathlib.Path]) -> None:
    """Executes each notebook as the tests do and writes it back with its outputs."""
    for path in paths:
        with tempfile.TemporaryDirectory(prefix="notebook_") as tmp:
            os.environ.update(kernel_environment(pathlib.Path(tmp)))
            notebook = _run(path, pathlib.Path(tmp), extra_cells=())
        nbformat.write(notebook, path)
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    store_outputs([pathlib.Path(arg) for arg in sys.argv[1:]])
