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
DEMO_CORPUS ?= $(HOME)/.cache/mrnet_ray/demo-small
DEMO_TRIALS ?= 4
DEMO_CONFIRM ?= 2
DEMO_SEEDS ?= 2
export RAY_USAGE_STATS_ENABLED := 0
export PYTHONUNBUFFERED := 1

# Debian packages: FluidSynth + a General MIDI soundfont render the demo corpus,
# Chromium drives the MLflow UI test.
APT_PACKAGES := fluidsynth timgm6mb-soundfont chromium

.PHONY: install sysdeps lint format test test-fast demo bench bench-quick gpu-check ui clean

install: $(STAMP) sysdeps

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,demo,bench]'
	touch $(STAMP)

sysdeps:
	@missing=""
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

# The MLflow UI on a search's run directory: make ui RUNS=runs/demo [PORT=5000]
ui: $(STAMP)
	$(PY) -m mrnet_ray.ui --run-dir $(RUNS) --port $${PORT:-5000}

# The whole job on the built-in corpus: build it (music21 + FluidSynth, cached), prepare the
# shards (Ray Data), search (Ray Tune + Optuna + ASHA, MLflow), export the best, predict.
# Every step skips what is already done, so a second run is quick.
demo: install
	@echo "== 1/4 prepare: demo corpus -> $(DATA)/demo (log-mel Parquet shards)"
	$(PY) -m mrnet_ray.prepare --dataset demo --root $(DEMO_CORPUS) --out $(DATA)/demo
	@echo "== 2/4 search: $(DEMO_TRIALS) trials of search_spaces/demo.yaml -> $(RUNS)"
	status=$$($(PY) -c "import sys; from mrnet_ray.search.record import status; print(status(sys.argv[1]))" $(RUNS))
	if [ "$$status" = FINISHED ]; then
	  echo "search already finished in $(RUNS) (make clean to start over)"
	elif [ "$$status" != none ]; then
	  $(PY) -m mrnet_ray.tune --resume --run-dir $(RUNS)
	else
	  $(PY) -m mrnet_ray.tune --data $(DATA)/demo --space demo --num-samples $(DEMO_TRIALS) \
	    --name demo --run-dir $(RUNS)
	fi
	@echo "== 3/4 export: the top $(DEMO_CONFIRM) configurations confirmed with $(DEMO_SEEDS) new seeds each, the winner refitted on train + valid, evaluated once on the test split"
	if [ -f $(RUNS)/best/metrics.json ] && [ $(RUNS)/best/metrics.json -nt $(RUNS)/search.json ]; then
	  echo "$(RUNS)/best already holds the search's best model (delete it to export again)"
	else
	  $(PY) -m mrnet_ray.best --run-dir $(RUNS) --export $(RUNS)/best \
	    --confirm $(DEMO_CONFIRM) --seeds $(DEMO_SEEDS)
	fi
	@echo "== 4/4 predict: a few test clips with the exported model"
	clips=$$(awk -F, '{sub(/\r$$/, "")} $$2 == "test" {print "$(DEMO_CORPUS)/" $$1}' \
	  $(DEMO_CORPUS)/split.csv | awk 'NR % 30 == 1' | head -4)
	$(PY) -m mrnet_ray.predict $(RUNS)/best $$clips --top-k 2
	@echo
	@echo "Where to look:"
	@echo "  MLflow UI:    make ui RUNS=$(RUNS)     (then open http://127.0.0.1:5000)"
	@echo "  bundle:       $(RUNS)/best"
	@echo "  model card:   $(RUNS)/best/MODEL_CARD.md"
	@echo "  test metrics: $(RUNS)/best/metrics.json"
	@$(PY) -c "import json,sys; m = json.load(open(sys.argv[1])); t, b = m['test'], m['baseline']; \
	  print('  test accuracy: %.3f per track (%d tracks), %.3f per 3 s segment; chance 0.125' \
	  % (t['test_track_acc'], t['tracks'], t['test_acc'])); \
	  print('  linear baseline (log-mel statistics): %.3f per track; the model %+.1f points' \
	  % (b['test_track_acc'], b['margin_points']))" $(RUNS)/best/metrics.json

# Speed, memory and quality figures (not part of `make test`) -> benchmarks/RESULTS.md + plots.
# Search and quality read the prepared demo corpus (prepared first if missing).
bench: install
	$(PY) benchmarks/run.py --data $(DATA)/demo

# The same, smaller (under 5 minutes) -> benchmarks/quick/RESULTS.md
bench-quick: install
	$(PY) benchmarks/run.py --quick --data $(DATA)/demo

# The CUDA path checked and measured in at most 5 minutes on one GPU (without one: the CPU smoke
# mode, seconds): make gpu-check [JSON=runs/gpu_check.json]. Exits 1 if a check fails.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --json $${JSON:-runs/gpu_check.json}

clean:
	rm -rf runs .pytest_cache .ruff_cache
