# Two commands on a fresh machine: `make demo` (runs the MiniCanvas demo) and `make test` (the test suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench

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

test: install
	HF_HUB_OFFLINE=1 $(BIN)/ruff check src tests benchmarks
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/erase_cost.py
