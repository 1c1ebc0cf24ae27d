# Every target does its own set-up on a fresh machine: it creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# pytest workers (pytest-xdist, one test file per worker at a time): one per core, at most 4;
# 0 (in-process) on a one-core machine. `make test WORKERS=0` runs everything in one process.
WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); if [ $$n -gt 4 ]; then n=4; elif [ $$n -lt 2 ]; then n=0; fi; echo $$n)
XDIST   := -n $(WORKERS) --dist loadfile

.PHONY: all setup test test-all demo bench artifacts gpu-modules clean

all: test

$(STAMP): pyproject.toml runtime/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e ./runtime -e '.[test,bench]'
	touch $(STAMP)

setup: $(STAMP)

## make test: the test suite (slow sweeps excluded; they run in `make bench`)
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q $(XDIST)

## make test-all: everything, slow sweeps included
test-all: $(STAMP)
	$(PY) -m pytest -q $(XDIST)

## make demo: compile adam and a small MLP's loss/gradient, then train with the runtime alone
demo: $(STAMP)
	$(PY) examples/mlp/build.py --out out/demo
	$(PY) examples/mlp/train.py --out out/demo

## make bench: step-time suite, soak (10k steps, RSS), footprint, compile/cold-start times (writes bench/results/)
bench: $(STAMP)
	$(PY) -m pytest -m slow -q
	$(PY) bench/run.py
	$(PY) bench/soak.py
	$(PY) bench/footprint.py
	$(PY) bench/compile_time.py

## make artifacts: rebuild the versioned catalog in artifacts/
artifacts: $(STAMP)
	$(PY) -m polaris_compiler.catalog build

## make gpu-modules: the prebuilt modules a GPU session carries (bench/gpu_session.sh, gpu_profile.py, gpu_count_probe.py and gpu_percall.py run them there)
gpu-modules: $(STAMP)
	$(PY) bench/gpu_check.py build out/gpu-check
	$(PY) bench/build_gpu_modules.py out/gpu-modules
	$(PY) bench/gpu_profile.py build out/gpu-profile
	$(PY) bench/gpu_count_probe.py build out/gpu-count
	$(PY) bench/gpu_percall.py build out/gpu-percall

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info out .cache
