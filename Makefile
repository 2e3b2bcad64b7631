# Everything hivla needs on a fresh Debian/Ubuntu machine is installed from here.
# `make coach` and `make test` set themselves up first (idempotent, stamp-file guarded).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hivla-installed
# Headless MuJoCo rendering: EGL first (works on CPUs through Mesa), OSMesa as the fallback.
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= $(MUJOCO_GL)

.PHONY: setup system-deps coach run test test-all bench clean

setup: $(STAMP)

# Debian packages: GL libraries for headless rendering and tmux for the console's terminal test.
system-deps:
	@bash .ci/system-deps.sh

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

coach: setup
	$(BIN)/hivla coach $(ARGS)

run: setup
	$(BIN)/hivla run $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

test-all: setup
	$(BIN)/python -m pytest -q -m '' $(ARGS)

bench: setup
	$(BIN)/python benchmarks/env_speed.py

clean:
	rm -rf $(VENV) build *.egg-info
