"""tests/README.md's tables name every module of ``spectral_jax`` and every test file.

The first table maps each module (not the sub-packages' ``__init__.py``, which only
re-export) to the test files that test it; the second says what the test files that are
not about one module test. A module added, renamed or removed, or a test file added or
removed, must be entered there.
"""

from __future__ import annotations

import pathlib
import re

TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parent
README = TESTS / "README.md"
#: A table row whose first cell is a backquoted path, then the rest of the row.
ROW = re.compile(r"^\| `(?P<first>[^`]+)` \| (?P<rest>.+) \|$", re.MULTILINE)


def _rows() -> dict[str, str]:
    rows: dict[str, str] = {}
    for match in ROW.finditer(README.read_text()):
        first = match["first"]
        assert first not in rows, f"{first} has two rows in {README.name}"
        rows[first] = match["rest"]
    return rows


def test_every_module_has_a_row_naming_existing_test_files():
    rows = _rows()
    modules = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "spectral_jax").rglob("*.py")
        if path.name != "__init__.py"
    }
    listed = {name for name in rows if name.startswith("spectral_jax/")}
    assert not modules - listed, f"modules without a row: {sorted(modules - listed)}"
    assert not listed - modules, f"rows of no module: {sorted(listed - modules)}"
    for module in sorted(modules):
        files = re.findall(r"`([^`]+)`", rows[module])
        assert files, f"{module}: no test file named"
        missing = [name for name in files if not (TESTS / name).is_file()]
        assert not missing, f"{module}: {missing} do not exist in tests/"


def test_every_test_file_is_in_a_table():
    rows = _rows()
    named = {name for row in rows.values() for name in re.findall(r"`(test_[^`]+\.py)`", row)}
    named |= {name for name in rows if name.startswith("test_")}
    on_disk = {path.name for path in TESTS.glob("test_*.py")}
    assert not on_disk - named, f"test files in no table: {sorted(on_disk - named)}"
    assert not named - on_disk, f"test files named but absent: {sorted(named - on_disk)}"
