# Every target sets itself up on a fresh machine: `make test` and `make demo` need nothing else.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-floors test-slurm demo demo-packages venv clean bench gpu-wheels

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: this exact version is a local CPU wheel; anything else pulls CUDA gigabytes.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The suite, then the install test: the wheel in a fresh venv, used from an empty directory (tests/install_test.sh).
# One intra-op thread per process: the tests start 2-process runs and loader workers, and OpenMP threads that
# spin on an oversubscribed 2-core machine made single tests up to 40x slower (a nano ViT step: 1.1 s vs 0.03 s).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q tests
	PY=$(PY) bash tests/install_test.sh

# The suite on the oldest versions pyproject.toml admits: a fresh .venv-floors with every runtime dependency but
# torch pinned at its floor (tests/floors.txt, which tests/test_floors.py holds equal to pyproject's floors), so
# a floor is a version that ran. torch is the local CPU wheel (any other torch pulls CUDA gigabytes); its floor
# was run once by hand (docs/benchmarks.md, "The oldest torch"). Extras take their newest (but pyarrow: floors.txt).
# In .ci/run after `make test`: 16.5 min from scratch on the 2-core machine (install 2, suite 14.5, with another
# suite running beside it, 2026-12-06), so CI's ~15 min become ~32, well inside its 90.
FLOORS := .venv-floors
test-floors:
	rm -rf $(FLOORS)
	$(PY) -m venv $(FLOORS)
	$(FLOORS)/bin/pip install -q --upgrade pip
	$(FLOORS)/bin/pip install -q torch==2.13.0
	$(FLOORS)/bin/pip install -q -e '.[test]' -c tests/floors.txt
	OMP_NUM_THREADS=1 $(FLOORS)/bin/python -m pytest -q tests

# The SLURM recipe against a real slurmctld + slurmd on this machine (root; installs slurm-wlm and munge if missing).
test-slurm: $(STAMP)
	command -v slurmctld >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m slurm tests/test_slurm.py

# The demo: `make demo` on Unicode's emoji in colour (two Debian packages, installed here when this is root with
# apt, otherwise the target stops with the one command to run); `make demo DATA=digits` on the grey digits.
DATA ?= emoji
DEMO_PACKAGES := fonts-noto-color-emoji unicode-data
DEMO_FILES := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf /usr/share/unicode/emoji/emoji-test.txt
APT_INSTALL := apt-get install -y --no-install-recommends $(DEMO_PACKAGES)

demo: $(STAMP) $(if $(filter emoji,$(DATA)),demo-packages)
	$(BIN)/python -m ssl_vit demo --data $(DATA) --workdir runs/demo$(if $(filter-out emoji,$(DATA)),_$(DATA))

demo-packages:
	@for f in $(DEMO_FILES); do test -f $$f || missing=yes; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		$(APT_INSTALL) || { apt-get update && $(APT_INSTALL); }; \
	else \
		echo "make demo draws Unicode's emoji from two Debian packages; install them with:  sudo $(APT_INSTALL)" \
			"(or run the grey control: make demo DATA=digits)" >&2; exit 2; \
	fi

bench: $(STAMP)
	$(BIN)/python bench/data.py && $(BIN)/python bench/step.py && $(BIN)/python bench/loader_vs_gpu.py

# The packages the GPU machine lacks (Python 3.12, x86_64, no network there): wheels into the git-ignored .whl/,
# which travels with the working tree; bench/gpu_check.py's docstring and docs/benchmarks.md give the command
# that installs them there offline. The versions are the ones the test suite runs with.
GPU_WHEELS ?= webdataset==1.0.2 braceexpand==0.1.7 simplejpeg==1.9.0
GPU_PLATFORMS := manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64

gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(addprefix --platform ,$(GPU_PLATFORMS)) -d .whl $(GPU_WHEELS)
	ls -l .whl

clean:
	rm -rf $(VENV) $(FLOORS) runs build dist *.egg-info .whl
