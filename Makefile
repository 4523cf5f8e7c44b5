# The one task runner: the README's commands and CI call these targets.
# `make demo` installs the runtime only (no torch); `make test` the development set.

VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip --disable-pip-version-check
RUNTIME := $(VENV)/.runtime-stamp
DEV     := $(VENV)/.dev-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-deps lint typecheck unit bench wheel-check clean

$(PY):
	python3 -m venv $(VENV)

# The daemon, capture, demo, record/replay and ONNX Runtime: no torch.
$(RUNTIME): pyproject.toml | $(PY)
	@echo "installing the streamfuse runtime into $(VENV) (no torch; pip's progress below) ..."
	$(PIP) install --progress-bar on -e .
	@echo "$(VENV): $$(du -sh $(VENV) | cut -f1) after the runtime install"
	@touch $@

$(DEV): pyproject.toml $(RUNTIME)
	@# torch before the extras that need it: the CPU build where there is no CUDA.
	scripts/install-torch.sh $(PY)
	$(PIP) install --progress-bar on -e '.[dev]'
	@# NVIDIA's TensorRT API as type stubs, so mypy checks the TensorRT backend without
	@# TensorRT; --no-deps because the stubs' metadata pulls TensorRT itself.
	$(PIP) install --quiet --no-deps tensorrt-stubs==10.13.0.35.1
	@# Two generator slips in those stubs stop mypy: a parameter named `in` (a keyword) and a
	@# required parameter after defaults. Fix them in place; nothing else is touched.
	sed -i -E 's/([(,] ?)in: /\1in_: /g; s/channel_axis: int\) -> IScaleLayer/channel_axis: int = 0) -> IScaleLayer/' \
		$$($(PY) -c 'import tensorrt_bindings; print(list(tensorrt_bindings.__path__)[0])')/tensorrt.pyi
	@echo "$(VENV): $$(du -sh $(VENV) | cut -f1) after the development install"
	@touch $@

demo: $(RUNTIME)
	$(VENV)/bin/streamfuse demo

lint: $(DEV)
	$(VENV)/bin/ruff check streamfuse plugins tests benchmarks
	$(VENV)/bin/ruff format --check streamfuse plugins tests benchmarks

typecheck: $(DEV)
	$(VENV)/bin/mypy

# Foxglove's TypeScript MCAP reader, an independent check of recordings (tests/ts; skipped,
# or failed in CI, without node).
TSREADER := tests/ts/node_modules/.stamp
$(TSREADER): tests/ts/package.json tests/ts/package-lock.json
	@if command -v npm >/dev/null; then npm ci --prefix tests/ts --no-audit --no-fund && touch $@; \
	else echo "no npm: the TypeScript MCAP reader test will skip"; fi

# A real Triton Inference Server for the triton backend's tests: nvidia-pytriton bundles
# tritonserver; its own venv, as it pins numpy < 2 (tests/triton_server.py runs in it).
TRITON_VENV ?= .venv-triton
TRITON := $(TRITON_VENV)/.stamp
$(TRITON):
	python3 -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --disable-pip-version-check --progress-bar off \
		'nvidia-pytriton>=0.5' onnxruntime
	@touch $@

# The unit tests (pure, CPU-bound) on both cores side by side; then everything else, one at
# a time (real processes and timings). PYTEST_ARGS goes to both runs.
test: test-deps
	$(PY) -m pytest -n 2 tests/unit $(PYTEST_ARGS)
	$(PY) -m pytest --ignore=tests/unit $(PYTEST_ARGS)

# librosa (the log-mel test's reference) compiles its numba kernels when first imported:
# ~40 s in a fresh venv. Done once, beside lint and mypy, not inside the first test.
NUMBA := $(VENV)/.numba-stamp
$(NUMBA): $(DEV)
	$(PY) -c "import librosa.util.utils"
	@touch $@

# Everything pytest needs first (`make -j3 test-deps` builds them side by side; .ci/run does).
test-deps: lint typecheck $(TSREADER) $(TRITON) $(NUMBA)

unit: $(DEV)
	$(PY) -m pytest tests/unit -q

# The built wheel in a fresh venv without torch, run from outside the repository.
wheel-check:
	scripts/check-wheel.sh

bench: $(DEV)
	$(PIP) install --quiet -e '.[peers]'
	$(PY) benchmarks/transport.py --write docs/benchmarks.md
	$(PY) benchmarks/sync.py --write docs/benchmarks.md
	$(PY) benchmarks/model.py --write docs/benchmarks.md
	$(PY) benchmarks/engine.py --write docs/benchmarks.md

clean:
	rm -rf $(VENV) $(TRITON_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
