# Two-command setup: `make demo` and `make test` create .venv on first use.
#
#   make demo        the paper's analyses end to end on the embedded data, 4 seeds -> runs/demo/
#   make test        ruff check, ruff format --check, mypy, then pytest -n 2 (PYTEST_WORKERS=2);
#                    installs the torch extra for the PyTorch comparisons
#   make timings     times `make demo` and `make test` on a fresh clone (wall and CPU seconds)
#   make test-slow   the tests marked `slow` (none collected counts as success)
#   make notebook    JupyterLab on notebooks/ (installs the notebook extra)
#   make dist        the sdist and the wheel in dist/ (python -m build)
#   make bench       the timing scripts in benchmarks/
#   make docs        the documentation site -> docs/_build/html (warnings are errors)
#   make clean       caches and outputs; `make distclean` also removes .venv
#
# Measured by `make timings` on a 2-core CPU with nothing else running: `make demo` 138 s
# wall (211 s CPU), `make test` 290 s wall (550 s CPU; pytest 280 s), after an 82 s install.
#
# Override the interpreter that creates the venv with `make PYTHON=python3.11 ...`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install; older than pyproject.toml means "install again".
STAMP := $(VENV)/.installed
# PyTorch (the `torch` extra) for the tests that compare the weight import and the
# decoder with PyTorch; `make test` installs it, `make demo` does not need it. Its CPU
# build comes from TORCH_INDEX where that index is reachable (otherwise pip warns and
# takes the default index's build); `make TORCH_INDEX= test` uses the default index only.
TORCH_STAMP := $(VENV)/.installed-torch
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# JupyterLab (the `notebook` extra) for `make notebook` only.
NOTEBOOK_STAMP := $(VENV)/.installed-notebook
# The index only where it answers: pip would retry an unreachable one for every package.
torch_index_flag = $(shell $(BIN)/python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' '$(TORCH_INDEX)' >/dev/null 2>&1 && echo '--extra-index-url $(TORCH_INDEX)')
PYTEST_WORKERS ?= 2
# pytest-xdist's distribution: whole modules per worker, so that a module's shared fixture
# (a trained run, the demo) is computed once, not by both workers; conftest.py puts the
# longest modules first, so that no worker is left alone with a long one at the end.
PYTEST_DIST ?= --dist loadscope
DEMO_WORKDIR ?= runs/demo

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1
# Plots are written to files; never open a window (CI has no display).
export MPLBACKEND := Agg

.PHONY: help .venv venv demo test lint typecheck test-slow bench docs timings notebook dist clean distclean

help:
	@sed -n '3,16s/^# \{0,1\}//p' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

$(TORCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install $(torch_index_flag) -e '.[torch]'
	touch $@

$(NOTEBOOK_STAMP): $(STAMP)
	$(BIN)/python -m pip install -e '.[notebook]'
	touch $@

.venv venv: $(STAMP)

demo: .venv
	XLA_PYTHON_CLIENT_PREALLOCATE=false $(BIN)/python -m experiments.demo --workdir $(DEMO_WORKDIR)

lint: .venv $(TORCH_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The library's type check ([tool.mypy] in pyproject.toml); the cache in .mypy_cache makes a
# second run take about a second.
typecheck: .venv
	$(BIN)/mypy

# pytest exits with 5 when it collects no tests; for `make test` that is a failure.
test: lint typecheck
	@rc=0; $(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_DIST) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	exit $$rc

# There may be no slow tests yet: exit code 5 (none collected) counts as success here.
test-slow: .venv $(TORCH_STAMP)
	@rc=0; $(BIN)/python -m pytest -m slow -n $(PYTEST_WORKERS) $(PYTEST_DIST) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test-slow: no slow tests collected"; rc=0; fi; \
	exit $$rc

notebook: $(NOTEBOOK_STAMP)
	$(BIN)/jupyter lab notebooks/

dist: .venv
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

# Each benchmarks/<name>.py runs as `python -m benchmarks.<name>` from the repository root.
bench: .venv
	@shopt -s nullglob; scripts=(benchmarks/[!_]*.py); scripts=($${scripts[@]/benchmarks\/time_commands.py}); \
	if [ $${#scripts[@]} -eq 0 ]; then echo "make bench: no scripts in benchmarks/" >&2; exit 1; fi; \
	for script in "$${scripts[@]}"; do \
	  module=$$(basename "$$script" .py); \
	  echo "+ $(BIN)/python -m benchmarks.$$module"; \
	  $(BIN)/python -m "benchmarks.$$module"; \
	done

# Sphinx with warnings as errors and every cross-reference checked (nitpicky); the
# notebooks are shown with their committed outputs, not executed.
DOCS_BUILD ?= docs/_build
docs: .venv
	$(BIN)/python -m sphinx -b html -W --keep-going -n docs $(DOCS_BUILD)/html
	@echo "make docs: open $(DOCS_BUILD)/html/index.html"

# The two commands' wall and CPU time on a fresh clone of HEAD (minutes; run it alone).
timings: .venv
	$(BIN)/python -m benchmarks.time_commands --clone

clean:
	rm -rf runs build dist .pytest_cache .ruff_cache .mypy_cache .hypothesis *.egg-info docs/_build
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
