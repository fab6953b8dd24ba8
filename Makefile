# g2sd developer entry points.  Every target that runs Python first makes sure .venv exists
# (tools/setup_env.sh is idempotent: once .venv is complete it returns in well under a second).
#
#   make setup     create / update .venv (first time on a fresh machine: ~10 min, mmcv compile)
#   make test      setup, then pytest (PYTEST_ARGS='-k vit -x' to narrow; exit code is pytest's)
#   make demo      setup, then tools/demo.py (DEMO_ARGS='--seed 1 --data-root DIR'; ~4 min on 2 cores)
#   make reproduce setup, then tools/reproduce.py: the paper's tables + figures (REPRO_ARGS='--quick')
#   make lint      ruff check + ruff format --check
#   make format    ruff format + ruff check --fix
#   make clean     remove caches and run outputs (keeps .venv); make distclean also drops .venv

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
DEMO_ARGS ?=
REPRO_ARGS ?=
RUFF_PATHS ?= .

.PHONY: help setup test demo reproduce lint format clean distclean

help:
	@sed -n '4,10p' Makefile | sed 's/^# \{0,1\}//'

setup:
	VENV='$(abspath $(VENV))' bash tools/setup_env.sh

# pytest exit codes: 0 passed, 1 failures, 2 interrupted, 3 internal error, 4 usage error,
# 5 no tests collected.  5 is reported as an error (a test run that runs nothing must not look
# green, e.g. a broken testpaths or a -k that matches nothing); set ALLOW_NO_TESTS=1 to accept it.
test: setup
	@rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then \
	  echo 'make test: pytest collected no tests (exit 5)' >&2; \
	  if [ "$${ALLOW_NO_TESTS:-0}" = 1 ]; then rc=0; fi; \
	fi; \
	if [ $$rc -ne 0 ]; then echo "make test: pytest exit code $$rc" >&2; fi; \
	exit $$rc

demo: setup
	$(PY) tools/demo.py $(DEMO_ARGS)

reproduce: setup
	$(PY) tools/reproduce.py $(REPRO_ARGS)

lint: setup
	$(PY) -m ruff check $(RUFF_PATHS)
	$(PY) -m ruff format --check $(RUFF_PATHS)

format: setup
	$(PY) -m ruff format $(RUFF_PATHS)
	$(PY) -m ruff check --fix $(RUFF_PATHS)

clean:
	rm -rf work_dirs outputs build dist .eggs .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name '__pycache__' -type d -prune -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name '*.egg-info' -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
