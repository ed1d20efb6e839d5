"""The CI=true rule of tests/optional_dependencies.py, on a generated test file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

TESTS = textwrap.dedent(
    """
    import pytest

    def test_needs_a_missing_module():
        pytest.importorskip("spectral_jax_no_such_module")

    def test_skipped_for_another_reason():
        pytest.skip("no accelerator")

    def test_passes():
        pass
    """
)
MODULE_SKIP = 'import pytest\npytest.importorskip("spectral_jax_no_such_module")\n'


def _run(tmp_path, ci: str | None, source: str):
    (tmp_path / "test_generated.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "tests.optional_dependencies"]
    command += ["-p", "no:cacheprovider", "-o", "addopts=", "--rootdir", str(tmp_path)]
    return subprocess.run(
        [*command, str(tmp_path)], capture_output=True, text=True, env=env, cwd=tmp_path
    )


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_a_missing_dependency_skips(tmp_path, ci):
    result = _run(tmp_path, ci, TESTS)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 2 skipped" in result.stdout


def test_under_ci_a_missing_dependency_fails_and_other_skips_stay(tmp_path):
    result = _run(tmp_path, "true", TESTS)
    assert result.returncode == 1, result.stdout
    assert "1 failed, 1 passed, 1 skipped" in result.stdout
    assert "CI=true and an optional dependency is missing" in result.stdout
    assert "spectral_jax_no_such_module" in result.stdout


def test_under_ci_a_module_level_skip_fails(tmp_path):
    result = _run(tmp_path, "true", MODULE_SKIP)
    assert result.returncode != 0, result.stdout
    assert "optional dependency is missing" in result.stdout
