"""README.md's Python examples run as written, and give the references' numbers.

Every ```python block of the README is executed, in order, in one namespace, as a reader
pasting them into one session would. A block may be left out only by an HTML comment
``<!-- readme-test: skip: <reason> -->`` on the lines just above it (blank lines
allowed), and the reason must be given. The values the examples compute are then
checked against the float64 NumPy references (tests/references.py) and against each
other.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

import spectral_jax as sj
from tests import references

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
def namespace() -> dict:
    """The README's namespace after running its blocks in order."""
    blocks = python_blocks(README.read_text())
    run = [(line, code) for line, code, reason in blocks if reason is None]
    assert len(run) >= 2, f"only {len(run)} of {len(blocks)} README blocks run"
    scope: dict = {"__name__": "readme"}
    for line, code in run:
        exec(compile(code, f"README.md:{line}", "exec"), scope)
    return scope


def test_core_examples_give_the_reference(namespace):
    logits, labels = namespace["logits"], namespace["labels"]
    spectrum = references.ce_spectrum(logits, labels)  # [B, H, W] float64
    np.testing.assert_allclose(namespace["spectrum"], spectrum, atol=1e-6)
    profile = references.band_sums(spectrum, "chebyshev")  # [B, R]
    np.testing.assert_allclose(namespace["profile"], profile, rtol=1e-5, atol=1e-7)
    # stats: both images, R(nu_max) as a ratio of means at 4, 8, 16
    total = profile.sum(axis=-1)
    expected = [references.ratio_of_sums(profile[:, : r + 1].sum(-1), total) for r in (4, 8, 16)]
    np.testing.assert_allclose(
        np.asarray(namespace["stats"].relative_discrepancy())[[4, 8, 16]],
        expected,
        rtol=1e-4,
        atol=1e-7,
    )
    assert int(namespace["stats"].num_images) == 2


def test_jacobian_examples_agree_with_the_full_matrix(namespace):
    jac, rows, cols = (np.asarray(namespace[name]) for name in ("jac", "rows", "cols"))
    shape = (namespace["H"], namespace["W"])
    nu_i = sj.ravel_frequencies(namespace["nu_i"], shape)
    nu_j = sj.ravel_frequencies(namespace["nu_j"], shape)
    scale = np.abs(jac).max()
    np.testing.assert_allclose(rows, jac[nu_i], atol=1e-5 * scale)
    np.testing.assert_allclose(cols, jac[:, nu_j], atol=1e-5 * scale)
    np.testing.assert_allclose(namespace["rows_now"], rows, atol=1e-5 * scale)
    assert not np.allclose(namespace["rows_later"], rows, atol=1e-3 * scale)
    # E[r_i, r_j] sums |J|^2 between bands: its total is the full matrix's energy.
    np.testing.assert_allclose(np.sum(namespace["energy"]), np.sum(np.abs(jac) ** 2), rtol=1e-4)
    assert namespace["grad"].shape == (3, shape[0] * shape[1])
