# airflow-dataset-forwarder: `make test` and `make demo` are the two entry points (see README).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
CACHE ?= $(HOME)/.cache/airflow-dataset-forwarder
DEV_HASH := $(shell cat requirements-dev.txt layers/dependencies/requirements.txt pyproject.toml | sha256sum | cut -c1-12)
VENV := $(CACHE)/venv-dev-$(DEV_HASH)
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
VERSION := $(shell cat VERSION)
DIST_DIR ?= $(CURDIR)/dist
SAM_DIST = $(DIST_DIR)/airflow-dataset-forwarder-sam-$(VERSION)
# Wheels with the same content are the same bytes (zip timestamps): the e2e test's Airflow venv is keyed by them.
SOURCE_DATE_EPOCH ?= 315532800

.PHONY: test lint unit integration listener-test e2e e2e-latency bench-latency chaos bench bench-smoke venv demo demo-down clean-venvs dist dist-wheels dist-listener dist-cli
.DEFAULT_GOAL := test

include mk/sam.mk

# The venv is shared by every checkout of this machine (CI clones too): point its editable installs (the project and
# its development kit, devkit/) at this one.
EDITABLE := -e . -e ./devkit
venv: $(VENV)/.installed
	@(cd / && $(PY) -c "import sys, dataset_forwarder_cli as m, devkit as d; \
		sys.exit(not all(x.__file__.startswith('$(CURDIR)/') for x in (m, d)))") \
		2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(EDITABLE)

# No file prerequisites: the path carries the hash of their content, and a fresh clone must not rebuild it.
$(VENV)/.installed:
	@echo "==> creating dev venv $(VENV)"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps $(EDITABLE)
	touch $@

test: lint unit listener-test integration template-test bench-smoke e2e ## everything CI runs

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

listener-test: venv
	cd listener && $(PY) -m pytest tests $(PYTEST_ARGS)

integration: venv
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

CHAOS_EVENTS ?= 5000
chaos: venv ## the chaos test alone, printing its figures (CHAOS_EVENTS=5000, ~4.5 min, CHAOS_SEED=N for other faults; make test runs it too)
	CHAOS_EVENTS=$(CHAOS_EVENTS) $(PY) -m pytest tests/integration/test_chaos.py -s $(PYTEST_ARGS)

bench: venv ## the benchmarks of bench/README.md, side by side with their naive baselines (~40 min); then the plot
	$(PY) bench/forwarder_throughput.py
	$(PY) bench/cold_start.py
	$(PY) bench/listener_cost.py
	$(PY) bench/e2e_latency.py
	$(PY) bench/scale.py
	$(PY) bench/plot.py

bench-smoke: venv ## a tiny run of every benchmark (part of make test)
	$(PY) -m pytest tests/bench $(PYTEST_ARGS)

e2e: venv ## real Airflow 2 and 3 (venvs cached under $(CACHE))
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

bench-latency: venv ## the e2e latency rows (asset_event, trigger_dag, MWAA, dag_run) and their floors, ~6 min
	$(PY) bench/e2e_latency.py --no-asset-watcher --out bench/results/e2e_latency_quiet.json $(BENCH_ARGS)

e2e-latency: venv ## the e2e module, recording its latency table in bench/results/e2e_latency.json
	E2E_LATENCY_OUT=$(CURDIR)/bench/results/e2e_latency.json $(PY) -m pytest tests/e2e/test_end_to_end.py $(PYTEST_ARGS)

demo: venv ## upstream Airflow 3 -> local stack (moto, template.yaml, real handler) -> downstream Airflow 3, with a DLQ redrive
	$(PY) demo/run_demo.py

demo-down: venv ## stop what an interrupted `make demo` left running
	$(PY) demo/run_demo.py --down

dist: dist-wheels dist-sam ## the release in dist/: listener wheel, CLI wheel, packaged SAM template (listener/README.md)
	@ls -1 $(DIST_DIR)

dist-wheels: dist-listener dist-cli

# pip builds in the project's own tree: an earlier build's build/ (stale modules) and *.egg-info (its file list,
# which setuptools reuses) must not shape this wheel, so both go before and after.
dist-listener: ## the listener plugin's wheel (what Airflow deployments install)
	rm -rf listener/build listener/src/*.egg-info $(DIST_DIR)/airflow_dataset_forwarder_listener-*.whl
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(PYTHON) -m pip wheel --quiet --disable-pip-version-check --no-deps \
		--wheel-dir $(DIST_DIR) ./listener
	rm -rf listener/build listener/src/*.egg-info

dist-cli: ## the CLI's wheel, with the core it reuses (package airflow-dataset-forwarder)
	rm -rf build *.egg-info $(DIST_DIR)/airflow_dataset_forwarder-*.whl
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(PYTHON) -m pip wheel --quiet --disable-pip-version-check --no-deps \
		--wheel-dir $(DIST_DIR) .
	rm -rf build *.egg-info

clean-venvs: clean-sam-venvs
	rm -rf $(CACHE)/venv-dev-*
