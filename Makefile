# mrnet_ray: `make demo` runs the whole job on the built-in corpus, `make test` the test suite.
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RUNS ?= runs/demo
DATA ?= data
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1

# Debian packages: FluidSynth + a General MIDI soundfont render the demo corpus,
# Chromium drives the MLflow UI test.
APT_PACKAGES := fluidsynth timgm6mb-soundfont chromium

.PHONY: install sysdeps lint format test test-fast demo bench bench-quick ui clean

install: $(STAMP) sysdeps

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,demo]'
	touch $(STAMP)

sysdeps:
	missing=""
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done
	if [ -z "$$missing" ]; then exit 0; fi
	if [ "$$(id -u)" = 0 ]; then
	  echo "installing Debian packages:$$missing"
	  apt-get update -qq || true
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null
	else
	  echo "missing Debian packages:$$missing; run: sudo apt-get install$$missing" >&2
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install lint
	$(VENV)/bin/pytest

test-fast: install
	$(VENV)/bin/pytest -m "not slow"

clean:
	rm -rf runs .pytest_cache .ruff_cache
