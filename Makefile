# `make run`: set up and run one MoE layer of a bundled model on this machine (CPU reference
# backend where no GPU is present), printing each stage as it goes. `make test`: set up and
# run the tests. Both create .venv on first use. constraints.txt pins torch's version, not
# its build: see the README for a CPU-only torch where PyPI would give the CUDA one.
VENV ?= .venv
BIN = $(VENV)/bin
# The demo plugin (examples/) is not installed: it would take part in every resolution.
PLUGINS = $(wildcard plugins/*/pyproject.toml)
EDITABLE = -e core $(foreach p,$(PLUGINS),-e $(dir $(p)))

.PHONY: dev run test bench
$(BIN)/.installed: constraints.txt requirements-dev.txt core/pyproject.toml $(PLUGINS)
	@echo "setting up $(VENV): torch, transformers and the plugins (first use: minutes)"
	python3 -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -r requirements-dev.txt $(EDITABLE)
	touch $@

dev: $(BIN)/.installed

run: dev
	@echo "running one layer on this machine; each stage prints its time (about 1-2 min on 2 cores)"
	$(BIN)/moe run --model Qwen/Qwen3-30B-A3B-FP8 --tokens 64

test: dev
	$(BIN)/python -m pytest

bench: dev
	$(BIN)/python benchmarks/resolve_bench.py
