"""User-facing text points only inside the repository or at public identifiers.

README.md, the citation file, the library, the experiments, the notebooks, the benchmark
scripts and the documentation name the papers by title and identifier: no path outside
the repository (the papers' text is not part of it), no internal work-item number.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
GLOBS = (
    "README.md",
    "CITATION.cff",
    "spectral_jax/**/*.py",
    "experiments/**/*.py",
    "experiments/**/*.md",
    "notebooks/*.ipynb",
    "notebooks/*.md",
    "benchmarks/*.py",
    "benchmarks/*.md",
    "docs/**/*.md",
    "docs/**/*.py",
)
FORBIDDEN = re.compile(r"shared/|\b[Ii]ssues? [0-9]|\bpapers? 00[0-9]")
# A relative path that climbs ("../x", but not an ellipsis before a slash: ".../max_pool").
CLIMBING_PATH = re.compile(r"(?<![.\w])(?:\.\./)+[\w./-]*")


def user_facing_files() -> list[pathlib.Path]:
    return sorted({path for pattern in GLOBS for path in ROOT.glob(pattern)})


def forbidden_mentions(text: str, folder: pathlib.Path = ROOT) -> list[str]:
    """The lines of ``text`` that mention something :data:`FORBIDDEN` matches, or a relative
    path that, read from ``folder`` (where the text lives), leaves the repository."""
    return [
        line.strip()
        for line in text.splitlines()
        if FORBIDDEN.search(line)
        or any(
            not (folder / path).resolve().is_relative_to(ROOT)
            for path in CLIMBING_PATH.findall(line)
        )
    ]


def test_the_pattern_finds_what_it_must():
    assert forbidden_mentions("see ../shared/papers/000_x.txt\nok\nIssue 12: fast\n") == [
        "see ../shared/papers/000_x.txt",
        "Issue 12: fast",
    ]
    assert forbidden_mentions("the related methods (papers 002-004)") != []
    assert forbidden_mentions("Table 2 (arXiv:2012.14123), 2-core CPU, tissue 3D") == []
    assert forbidden_mentions('name is ".../max_pool"') == []
    docs = ROOT / "docs" / "api"
    assert forbidden_mentions("see {doc}`../conventions`", docs) == []
    assert forbidden_mentions("```{include} ../../benchmarks/README.md", docs) == []
    assert forbidden_mentions("read ../../../papers/x.txt", docs) == ["read ../../../papers/x.txt"]


@pytest.mark.parametrize("path", user_facing_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_no_path_outside_the_repository_nor_work_item(path):
    assert not forbidden_mentions(path.read_text(), path.parent)
