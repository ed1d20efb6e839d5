"""A pytest plugin: under ``CI=true`` a missing optional dependency fails, not skips.

The tests that compare with PyTorch (or plot with matplotlib) ``pytest.importorskip``
their optional dependency, so that a contributor's machine without it still runs the
rest. CI installs every extra the tests use (``make test``), so there such a skip means
that a comparison silently stopped running: this plugin turns a skip whose reason is
``importorskip``'s "could not import ..." into a failure when the environment variable
``CI`` is ``true``, for single tests and for whole modules. Loaded by the root
``conftest.py``; other skips (a missing GPU, say) are left alone.
"""

from __future__ import annotations

import os

import pytest


def _is_missing_dependency_skip(report) -> bool:
    return report.skipped and "could not import" in str(report.longrepr)


def _fail_under_ci(report) -> None:
    if os.environ.get("CI", "").lower() == "true" and _is_missing_dependency_skip(report):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"CI=true and an optional dependency is missing: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_under_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_under_ci(outcome.get_result())
