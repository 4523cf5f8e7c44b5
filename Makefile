# The one task runner: the README's commands and CI call these targets.
# `make demo` and `make test` create .venv and install everything on first use.

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	@# No CUDA here: take the CPU build of torch first, so nothing can pull a multi-GB CUDA one.
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "CUDA found: torch will come from the CUDA index when an extra needs it"; \
	else \
		$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0; \
	fi
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@# NVIDIA's TensorRT API as type stubs, so mypy checks the TensorRT backend without
	@# TensorRT; --no-deps because the stubs' metadata pulls TensorRT itself.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps tensorrt-stubs==10.13.0.35.1
	@# Two generator slips in those stubs stop mypy: a parameter named `in` (a keyword) and a
	@# required parameter after defaults. Fix them in place; nothing else is touched.
	sed -i -E 's/([(,] ?)in: /\1in_: /g; s/channel_axis: int\) -> IScaleLayer/channel_axis: int = 0) -> IScaleLayer/' \
		$$($(PY) -c 'import tensorrt_bindings; print(list(tensorrt_bindings.__path__)[0])')/tensorrt.pyi
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/streamfuse demo

lint: $(STAMP)
	$(VENV)/bin/ruff check streamfuse plugins tests benchmarks
	$(VENV)/bin/ruff format --check streamfuse plugins tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

bench: $(STAMP)
	$(PY) benchmarks/transport.py --write docs/benchmarks.md
	$(PY) benchmarks/sync.py --write docs/benchmarks.md
	$(PY) benchmarks/model.py --write docs/benchmarks.md
	$(PY) benchmarks/engine.py --write docs/benchmarks.md

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
