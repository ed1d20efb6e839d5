"""The package as a user installs it: its version, and the wheel in a clean environment.

The slow test builds the sdist and the wheel with ``python -m build`` (the ``dev``
extra), installs the wheel with the ``plot`` extra into a new virtual environment that
sees nothing of this one (its dependencies from the configured package index), and runs
README.md's two quickstarts there, from a directory outside the repository.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile

import numpy as np
import pytest

import spectral_jax
from tests import test_readme

ROOT = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
QUICKSTARTS = ("Quickstart: arrays", "Quickstart: your model")
# What a working tree holds besides its sources.
LOCAL_FILES = (
    ".git",
    ".venv",
    "runs",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "_build",
)


def quickstart_script() -> str:
    """README.md's quickstart blocks, in order, as one script."""
    text = test_readme.README.read_text()
    blocks = [
        code
        for line, code, reason in test_readme.python_blocks(text)
        if reason is None and test_readme.section_of(text, line) in QUICKSTARTS
    ]
    assert len(blocks) == 3, len(blocks)
    return "\n".join(blocks)


def test_version_is_the_installed_metadata_of_pyproject():
    # `make` installs the working tree (editable); a tree run without installing has no
    # version, and says so.
    try:
        installed = importlib.metadata.version("spectral_jax")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    assert spectral_jax.__version__ == (installed or "0+unknown")
    assert installed in (VERSION, None)
    assert "dynamic" not in PYPROJECT["project"]  # one place for the version
    # CITATION.cff names the version too.
    (cited,) = re.findall(r"^version: (\S+)$", (ROOT / "CITATION.cff").read_text(), re.MULTILINE)
    assert cited == VERSION


def test_the_wheel_declares_its_typing_marker():
    assert (ROOT / "spectral_jax" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["spectral_jax"]


@pytest.fixture(scope="module")
def distributions(tmp_path_factory) -> dict[str, pathlib.Path]:
    """``{"wheel": path, "sdist": path}`` built from the working tree."""
    pytest.importorskip("build", reason="python -m build needs the dev extra")
    outdir = tmp_path_factory.mktemp("dist")
    # A copy of the working tree, so that the build's files (build/, *.egg-info) stay out
    # of the repository, where importlib.metadata would find them.
    source = tmp_path_factory.mktemp("source") / "spectral_jax"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*LOCAL_FILES))
    subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(outdir), str(source)],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = outdir.glob("spectral_jax-*.whl")
    (sdist,) = outdir.glob("spectral_jax-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


@pytest.mark.slow  # About 20 s: python -m build in an isolated environment.
def test_build_makes_a_typed_wheel_and_a_complete_sdist(distributions):
    wheel = distributions["wheel"]
    assert wheel.name == f"spectral_jax-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"spectral_jax-{VERSION}.dist-info/METADATA").decode()
    assert "spectral_jax/py.typed" in names
    assert "spectral_jax/loss_spectrum.py" in names
    assert f"spectral_jax-{VERSION}.dist-info/licenses/LICENSE" in names
    assert not [name for name in names if name.startswith("tests/")]
    assert "License-Expression: Apache-2.0" in metadata
    with tarfile.open(distributions["sdist"]) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for name in (
        "README.md",
        "LICENSE",
        "CITATION.cff",
        "Makefile",
        "spectral_jax/py.typed",
        "experiments/configs/tiny.py",
        "notebooks/analyze_your_model.ipynb",
        "tests/helpers/references.py",
    ):
        assert name in members, name


@pytest.mark.slow  # A few minutes: a new virtual environment and its dependencies.
def test_the_wheel_runs_the_quickstart_in_a_clean_environment(distributions, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env.update(JAX_PLATFORMS="cpu", MPLBACKEND="Agg", PIP_DISABLE_PIP_VERSION_CHECK="1")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", f"{distributions['wheel']}[plot]"],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    script = tmp_path / "quickstart.py"
    report = "sorted(p.name for p in pathlib.Path('analysis_report').iterdir())"
    script.write_text(
        quickstart_script()
        + "\nimport json, pathlib\n"
        + "print(json.dumps({'file': sj.__file__, 'version': sj.__version__,"
        + f" 'r': np.asarray(r).tolist(), 'report': {report}}}))\n"
    )
    run = subprocess.run(
        [python, script.name], check=True, env=env, cwd=tmp_path, capture_output=True, text=True
    )
    result = json.loads(run.stdout.splitlines()[-1])
    assert pathlib.Path(result["file"]).is_relative_to(venv), result["file"]
    assert result["version"] == VERSION
    assert {"report.md", "analysis.json"} <= set(result["report"])
    # The same R(nu_max) as the quickstart run against the working tree here.
    namespace: dict = {}
    exec(test_readme.python_blocks(test_readme.README.read_text())[0][1], namespace)  # noqa: S102
    np.testing.assert_allclose(result["r"], np.asarray(namespace["r"]), rtol=1e-5, atol=1e-7)
