# Two commands do all the set-up on a fresh clone: `make repro` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export PYTHONUNBUFFERED := 1

.PHONY: setup repro test bench clean-venv

setup: $(STAMP)

# --system-site-packages: an existing (e.g. CUDA) torch on the system is kept.
# Only when no torch is importable is the CPU wheel torch==2.13.0 installed.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

repro: $(STAMP)
	$(BIN)/dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Side-by-side ratios, printed and written to bench/results/ (see bench/README.md).
bench: $(STAMP)
	$(BIN)/python bench/precompute.py --n 600
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/qlora_memory.py

clean-venv:
	rm -rf $(VENV)
