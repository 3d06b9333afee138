# `make run`: set up and run one MoE layer of a bundled model on this machine (CPU reference
# backend where no GPU is present). `make test`: set up and run the tests. Both create
# .venv on first use; constraints.txt pins the CPU build of torch.
VENV ?= .venv
BIN = $(VENV)/bin
# The demo plugin (examples/) is not installed: it would take part in every resolution.
PLUGINS = $(wildcard plugins/*/pyproject.toml)
EDITABLE = -e core $(foreach p,$(PLUGINS),-e $(dir $(p)))

.PHONY: dev run test bench
$(BIN)/.installed: constraints.txt requirements-dev.txt core/pyproject.toml $(PLUGINS)
	python3 -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -r requirements-dev.txt $(EDITABLE)
	touch $@

dev: $(BIN)/.installed

run: dev
	$(BIN)/moe run --model Qwen/Qwen3-30B-A3B-FP8 --tokens 64

test: dev
	$(BIN)/python -m pytest

bench: dev
	$(BIN)/python benchmarks/resolve_bench.py
