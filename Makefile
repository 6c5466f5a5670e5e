# Two commands on a fresh machine: `make demo` (runs the MiniCanvas demo) and `make test` (the fast test tier;
# `make test-all` adds the slow MiniCanvas end-to-end tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test test-all lint bench

$(BIN)/hirm: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU torch wheel first and pinned: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,eval]'
	touch $(BIN)/hirm

install: $(BIN)/hirm

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/hirm demo --out hirm-demo

# the fast tier: unit tests and dummy-pipeline tests (a few minutes on 2 cores)
test: install
	HF_HUB_OFFLINE=1 $(BIN)/ruff check src tests benchmarks
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow"

# everything, with the MiniCanvas end-to-end tests (`@pytest.mark.slow`); what CI runs
test-all: install
	HF_HUB_OFFLINE=1 $(BIN)/ruff check src tests benchmarks
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/erase_cost.py
