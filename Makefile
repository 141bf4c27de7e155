# Two commands run everything on a fresh machine:
#   make demo   - set up the environment, then the whole pipeline on a phantom cohort (no server)
#   make test   - set up the environment, then the test suite
#   make train-ms - the real-data recipe: train on MS patient07, evaluate on patient19 (../shared/data; <= 45 min on 2 CPU cores)
#   make train-lgg - the brain-tumour recipe: 4-fold cross-validation by patient on the LGG slice stacks, final model (<= 45 min on 2 CPU cores)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed first, pinned, so that nothing pulls a multi-GB CUDA build by accident.
# Elsewhere, point pip at a CPU (or CUDA) wheel index through TORCH_PIP_ARGS.
TORCH_VERSION  ?= 2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS    ?=

.PHONY: setup demo test bench train-ms train-lgg clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

demo: setup
	$(BIN)/lesionflow demo --workdir work/demo

train-ms: setup
	$(BIN)/lesionflow train-ms --workdir work/train-ms

train-lgg: setup
	$(BIN)/lesionflow train-lgg --workdir work/train-lgg

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/bench_convert.py
	$(BIN)/python benchmarks/bench_ingest.py

clean:
	rm -rf work test-artifacts .pytest_cache
