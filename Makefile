# Every target sets itself up on a fresh machine: `make test` and `make demo` need nothing else.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo venv clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: this exact version is a local CPU wheel; anything else pulls CUDA gigabytes.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The suite, then the install test: the wheel in a fresh venv, used from an empty directory (tests/install_test.sh).
test: $(STAMP)
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q tests
	PY=$(PY) bash tests/install_test.sh

demo: $(STAMP)
	$(BIN)/python -m ssl_vit demo --workdir runs/demo

bench: $(STAMP)
	$(BIN)/python bench/data.py && $(BIN)/python bench/step.py && $(BIN)/python bench/loader_vs_gpu.py

clean:
	rm -rf $(VENV) runs build dist *.egg-info
