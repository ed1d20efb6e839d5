"""Executes the notebooks in ``notebooks/`` on their tiny default settings (nbclient).

A notebook that raises fails its test. Execution starts a kernel and compiles every
cell. ``analyze_your_model.ipynb`` runs in the default tests: its ``R(nu_max)`` and mIoU
are recomputed in float64 NumPy from its model's logits. ``spectral_jacobians.ipynb``
(slow) also trains a tiny DeepLab v3+ for 30 steps on the embedded data set, which it
builds in a temporary TFDS data directory (``TFDS_DATA_DIR``). Every notebook is stored
in git with its outputs and figures (``python -m tests.helpers.notebooks`` stores them).
"""

from __future__ import annotations

import base64
import json

import nbformat
import numpy as np
import pytest

from tests.helpers import references
from tests.helpers.notebooks import NOTEBOOKS, execute_notebook, stored_outputs_problems

# The up-sampling rows are chosen at the input's signed frequencies: each holds its energy
# on the diagonal (tests/test_frequencies.py has the dense float64 reference).
UPSAMPLING_CHECK = "assert np.min(np.asarray(up_fraction)) > 0.97, up_fraction"


@pytest.mark.slow  # About a minute: 30 training steps and every cell compiled.
@pytest.mark.parametrize("name", ["spectral_jacobians.ipynb"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    execute_notebook(NOTEBOOKS / name, tmp_path, monkeypatch, extra_cells=[UPSAMPLING_CHECK])


# Run in the kernel after analyze_your_model.ipynb: what it computed, and the logits of
# its model on its batches for an independent recomputation, as JSON on stdout.
_EXPORT_ANALYSIS = """
import json as _json
_images = np.concatenate([b["image"] for b in batches])
print(_json.dumps({
    "r": result.relative_discrepancy_curve.tolist(),
    "mean_iou": result.mean_iou,
    "logits": np.asarray(jax.jit(model.apply)(variables, _images)).tolist(),
    "labels": np.concatenate([b["label"] for b in batches]).tolist(),
    "report": sorted(p.name for p in pathlib.Path("analysis_report").iterdir()),
}))
"""


# Stored with outputs, so that a reader sees the figures without running anything; each
# notebook small enough for git (its PNGs at screen resolution).
MAX_NOTEBOOK_BYTES = 400_000
MAX_PNG_BYTES = 150_000


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda path: path.name)
def test_notebook_is_stored_with_its_outputs_and_figures(path):
    assert not stored_outputs_problems(path, max_bytes=MAX_NOTEBOOK_BYTES)
    notebook = nbformat.read(path, as_version=4)
    pngs = [
        output["data"]["image/png"]
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    assert pngs, "no figure stored"
    assert max(len(base64.b64decode(png)) for png in pngs) <= MAX_PNG_BYTES


def test_stored_outputs_problems_finds_each_problem(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("print(1)", execution_count=2),
        nbformat.v4.new_code_cell("x", execution_count=1),
    ]
    notebook.cells[0].outputs = [nbformat.v4.new_output("stream", text="/tmp/run_1: done\n")]
    notebook.cells[1].outputs = [
        nbformat.v4.new_output("error", ename="E", evalue="", traceback=[])
    ]
    path = tmp_path / "bad.ipynb"
    nbformat.write(notebook, path)
    problems = stored_outputs_problems(path, max_bytes=10)
    assert len(problems) == 4, problems  # size, order, the path and the error


def test_analyze_your_model_notebook_executes(tmp_path, monkeypatch):
    notebook = execute_notebook(
        NOTEBOOKS / "analyze_your_model.ipynb",
        tmp_path,
        monkeypatch,
        extra_cells=[_EXPORT_ANALYSIS],
    )
    exported = json.loads(notebook.cells[-1].outputs[0]["text"])
    logits = np.asarray(exported["logits"], np.float64)  # [8, 33, 33, 5]
    labels = np.asarray(exported["labels"])
    spectra = references.ce_spectrum(logits, labels)
    total = references.spatial_ce(logits, labels)
    expected = [
        references.ratio_of_sums(references.truncated_ce(spectra, nu, "chebyshev"), total)
        for nu in range(17)
    ]
    np.testing.assert_allclose(exported["r"], expected, rtol=1e-4, atol=1e-6)
    intersection, union = references.hard_iou_counts(logits, labels)
    iou = intersection.sum(0) / union.sum(0)
    np.testing.assert_allclose(exported["mean_iou"], np.nanmean(iou), rtol=1e-12)
    for name in ("report.md", "analysis.json", "context_rows.png", "fuse_rows.png"):
        assert name in exported["report"], name
    images = [
        o
        for cell in notebook.cells
        for o in cell.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(images) == 4  # the four figures shown inline
