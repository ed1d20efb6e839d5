"""README.md's Python examples run as written, and give the references' numbers.

Every ```python block of the README is executed, in order, in one namespace, as a reader
pasting them into one session would, in a temporary working directory (the blocks may
write files, such as an analysis report). A block may be left out only by an HTML comment
``<!-- readme-test: skip: <reason> -->`` on the lines just above it (blank lines
allowed), and the reason must be given. The values the examples compute are then
checked against the float64 NumPy references (tests/helpers/references.py) and against each
other, each section's names as they stand after that section's blocks (a later section
may reuse a name such as ``labels``).
"""

from __future__ import annotations

import ast
import pathlib
import re

import jax
import matplotlib.image
import numpy as np
import pytest

import spectral_jax as sj
from experiments import overview_figure
from tests.helpers import references

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
SKIP = re.compile(r"<!-- readme-test: skip: (?P<reason>\S.*?) -->")
FENCE = re.compile(r"^```python\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """``(line, code, skip reason or None)`` of each ```python block of ``text``."""
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").splitlines()
        reason = None
        if before and (marker := SKIP.fullmatch(before[-1].strip())):
            reason = marker["reason"]
        line = text[: match.start()].count("\n") + 1
        blocks.append((line, match["code"], reason))
    return blocks


def section_of(text: str, line: int) -> str:
    """The ``## `` heading above ``line`` (1-based) of ``text``."""
    headings = [h for h in text.splitlines()[: line - 1] if h.startswith("## ")]
    return headings[-1][3:] if headings else ""


def test_the_extractor_finds_blocks_and_skip_markers():
    text = (
        "intro\n```python\na = 1\n```\n\n<!-- readme-test: skip: slow -->\n\n"
        "```python\nb = 2\n```\n```bash\nls\n```\n```python\nc = a\n```\n"
    )
    assert python_blocks(text) == [
        (2, "a = 1\n", None),
        (8, "b = 2\n", "slow"),
        (14, "c = a\n", None),
    ]


@pytest.fixture(scope="module")
def readme_dir(tmp_path_factory) -> pathlib.Path:
    """The working directory the README's blocks run in."""
    return tmp_path_factory.mktemp("readme")


@pytest.fixture(scope="module")
def sections(readme_dir) -> dict[str, dict]:
    """``{section heading: the README's namespace after that section's blocks}``."""
    text = README.read_text()
    blocks = python_blocks(text)
    run = [(line, code) for line, code, reason in blocks if reason is None]
    assert len(run) >= 3, f"only {len(run)} of {len(blocks)} README blocks run"
    scope: dict = {"__name__": "readme"}
    snapshots: dict[str, dict] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(readme_dir)
        for line, code in run:
            exec(compile(code, f"README.md:{line}", "exec"), scope)  # noqa: S102
            snapshots[section_of(text, line)] = dict(scope)
    return snapshots


def code_lines(script: str) -> list[str]:
    """The lines of ``script`` that are neither blank nor comments."""
    return [code for code in script.splitlines() if code.strip() and code[0] != "#"]


def test_array_quickstart_gives_the_reference(sections):
    text = README.read_text()
    first, *_ = [code for line, code, reason in python_blocks(text) if reason is None]
    assert len(code_lines(first)) <= 15, code_lines(first)
    namespace = sections["Quickstart: arrays"]
    logits, labels = namespace["logits"], namespace["labels"]
    spectrum = references.ce_spectrum(logits, labels)  # [B, H, W] float64
    np.testing.assert_allclose(namespace["spectrum"], spectrum, atol=1e-6)
    profile = references.band_sums(spectrum, "chebyshev")  # [B, R]
    np.testing.assert_allclose(namespace["profile"], profile, rtol=1e-5, atol=1e-7)
    # R(nu_max) as a ratio of batch means, at every band limit (the sweep) and, streamed
    # image by image, at 4, 8, 16 (the statistics).
    total = profile.sum(axis=-1)
    expected = [
        references.ratio_of_sums(profile[:, : r + 1].sum(-1), total)
        for r in range(profile.shape[-1])
    ]
    np.testing.assert_allclose(namespace["r"], expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        np.asarray(namespace["stats"].relative_discrepancy_curve())[[4, 8, 16]],
        np.asarray(expected)[[4, 8, 16]],
        rtol=1e-4,
        atol=1e-7,
    )
    assert int(namespace["stats"].num_images) == 2


def test_jacobian_quickstart_agrees_with_the_dense_matrix(sections):
    namespace = sections["Quickstart: arrays"]
    jac, rows = np.asarray(namespace["jac"]), np.asarray(namespace["rows"])
    shape = (namespace["H"], namespace["W"])
    # J = F A F^-1 of the layer's real Jacobian A (jax.jacfwd), in float64.
    x = np.asarray(namespace["x"], np.float64)
    dense = np.asarray(jax.jacfwd(namespace["layer"])(namespace["x"]), np.float64)
    dense = dense.reshape(x.size, x.size)  # [H W, H W]: one channel in, one out
    n = x.size
    dft = np.fft.fft2(np.eye(n).reshape(n, *shape), axes=(1, 2)).reshape(n, n).T  # [n, n]
    reference = dft @ dense @ np.linalg.inv(dft)
    scale = np.abs(reference).max()
    np.testing.assert_allclose(jac, reference, atol=1e-5 * scale)
    nu_i = sj.ravel_frequencies(namespace["nu_i"], shape)
    np.testing.assert_allclose(rows, reference[nu_i], atol=1e-5 * scale)


def test_analyse_your_own_model_in_fifteen_lines(sections, readme_dir):
    # The README's block as a user copies it: their own Flax model, NumPy batches, one
    # call of analyze, at most 15 lines besides the model.
    text = README.read_text()
    ((line, script),) = [
        (line, code)
        for line, code, reason in python_blocks(text)
        if reason is None and section_of(text, line) == "Quickstart: your model"
    ]
    tree = ast.parse(script)
    model_lines = sum(
        node.end_lineno - node.lineno + 1 for node in tree.body if isinstance(node, ast.ClassDef)
    )
    lines = code_lines(script)
    assert len(lines) - model_lines <= 15, (len(lines), model_lines)
    namespace = sections["Quickstart: your model"]
    assert "np.asarray" not in script
    batch = namespace["batches"][0]
    assert all(isinstance(batch[key], np.ndarray) for key in ("image", "label"))
    result = namespace["result"]
    assert result.num_classes == 5 and result.image_shape == (33, 33)
    assert result.num_images == 4
    assert result.layer("encoder").shape == (11, 11, 8)
    assert result.layer("encoder").rows.shape == (1, 3, 121)
    # R(nu_max) and mIoU against float64 NumPy on the model's own logits.
    images = namespace["images"]  # [4, H, W, 3]
    labels = np.asarray(namespace["labels"])  # [4, 33, 33]
    model, variables = namespace["model"], namespace["variables"]
    logits = np.asarray(model.apply(variables, images), np.float64)
    profile = references.band_sums(references.ce_spectrum(logits, labels), "chebyshev")
    total = profile.sum(axis=-1)
    expected = [references.ratio_of_sums(profile[:, : r + 1].sum(-1), total) for r in range(17)]
    np.testing.assert_allclose(result.relative_discrepancy_curve, expected, rtol=1e-4, atol=1e-6)
    intersection, union = references.hard_iou_counts(logits, labels)
    np.testing.assert_allclose(
        result.mean_iou, np.nanmean(intersection.sum(0) / union.sum(0)), rtol=1e-12
    )
    report = readme_dir / "analysis_report"
    assert (report / "report.md").exists() and (report / "analysis.json").exists()
    assert not (README.parent / "analysis_report").exists()


LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def test_relative_links_point_into_the_repository():
    text = README.read_text()
    root = README.parent
    targets = [m["target"] for m in LINK.finditer(text) if "://" not in m["target"]]
    assert "docs/images/overview.png" in targets and "LICENSE" in targets, targets
    # The docs pages come with the documentation site; until docs/index.md exists only
    # the other links are checked.
    has_docs = (root / "docs" / "index.md").exists()
    missing = [
        target
        for target in targets
        if not (root / target).exists()
        and (has_docs or not target.startswith("docs/") or target.startswith("docs/images/"))
    ]
    assert not missing, missing
    assert "../" not in text and "shared/" not in text


def test_overview_figure_is_small_and_the_script_redraws_it(tmp_path):
    committed = README.parent / overview_figure.DEFAULT_OUTPUT
    assert committed.stat().st_size < 150_000
    drawn = overview_figure.main(["--output", str(tmp_path / "overview.png")])
    image = matplotlib.image.imread(drawn)
    assert image.shape == matplotlib.image.imread(committed).shape
    assert image.std() > 0.1  # not blank
