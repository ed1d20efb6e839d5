"""Executes ``notebooks/band_limit_sweeps.ipynb`` (nbclient) and checks what it computed.

The notebook's vmapped grid is read back from the kernel and compared with float64
NumPy references (:mod:`tests.references`) of the same predictions; its trace counter
must read one compilation. ``tests/test_notebooks.py`` checks the outputs stored in git.
"""

from __future__ import annotations

import json

import numpy as np

from tests.helpers import references
from tests.helpers.notebooks import NOTEBOOKS, execute_notebook

NOTEBOOK = NOTEBOOKS / "band_limit_sweeps.ipynb"

# Run in the kernel after the notebook: its results, as JSON on stdout.
_EXPORT = """
import json as _json
print(_json.dumps({
    "r": r.tolist(), "traces": len(traces), "sigmas": list(SIGMAS), "presets": list(PRESETS),
    "num_images": NUM_IMAGES,
}))
"""


def test_notebook_executes_and_its_grid_matches_the_reference(tmp_path, monkeypatch):
    notebook = execute_notebook(NOTEBOOK, tmp_path, monkeypatch, extra_cells=[_EXPORT])
    exported = json.loads(notebook.cells[-1].outputs[0]["text"])
    assert exported["traces"] == 1
    r = np.asarray(exported["r"])  # [S, D, K]
    assert r.shape == (len(exported["sigmas"]), 3, 65)

    # Independent recomputation of one preset and one blur width, float64 NumPy.
    from spectral_jax.data import blurred_label_logits, synthetic

    d, s = 2, 1  # deepglobe_like (7 of the 21 padded classes), sigma = 1
    config = synthetic.preset(exported["presets"][d])
    labels = np.stack(
        [
            synthetic.generate_example(config, "validation", i)["label"]
            for i in range(exported["num_images"])
        ]
    ).astype(np.int64)
    logits = blurred_label_logits(
        labels, num_classes=config.num_classes, sigma=exported["sigmas"][s]
    )
    spectrum = references.ce_spectrum(logits, labels)
    total = references.spatial_ce(logits, labels)
    expected = [
        references.ratio_of_sums(references.truncated_ce(spectrum, nu, "chebyshev"), total)
        for nu in range(65)
    ]
    np.testing.assert_allclose(r[s, d], expected, rtol=0, atol=5e-5)
