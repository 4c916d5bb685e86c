# The README's two commands: `make demo` and `make test`. Both create .venv when it is
# missing and install the package (editable, with its dev extra) into it first.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.avc_nb-installed
DEMO_OUT ?= outputs/demo

.PHONY: install demo test test-all lab sync-check docs docs-full runall

$(STAMP): settings.ini setup.py
	@test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(STAMP)

demo: install
	$(BIN)/avc_replicate --quick --out $(DEMO_OUT)

# 1) the library and the notebooks agree and the notebooks are clean, 2) every notebook's
# cells run as tests (cells flagged slow or gpu are skipped), 3) pytest.
# Two notebooks run at once, so each gets one OpenMP thread: with more, their threads spin-wait
# against each other and a 10-second notebook takes minutes.
NBTEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
test: install sync-check
	$(NBTEST_ENV) $(BIN)/nbdev_test --n_workers 2 --timing
	$(BIN)/pytest -q tests

sync-check: install
	PATH="$(abspath $(BIN)):$$PATH" bash .ci/check_sync

# Run All: every notebook executed as Jupyter does (all cells, slow and gpu ones included), each in a
# fresh temporary copy of the repository, two at a time with one thread each; fails on an error
# (naming notebook and cell) or a notebook over 5 minutes. About 20 minutes on 2 cores.
runall: install
	$(BIN)/pytest -q tests/test_runall.py

# The same, with the slow cells too (the gpu cells need a CUDA machine: add `gpu` there).
test-all: install sync-check
	$(NBTEST_ENV) $(BIN)/nbdev_test --n_workers 2 --flags "slow" --timing
	$(BIN)/pytest -q tests

lab: install
	$(BIN)/jupyter lab nbs

# A static HTML site in _docs/ from the notebooks (Sphinx + myst-nb from pip: nbdev_docs needs
# Quarto, which cannot be installed here). Tutorials keep their committed figures; docs-full also
# executes the library notebooks.
docs: install
	$(BIN)/python docs/build.py
docs-full: install
	$(BIN)/python docs/build.py --execute
