# dte-stream developer targets. `make` alone prints this help.
# CI runs `make ci` (through .ci/run), exactly what the README's test command runs.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
DATA   ?= dte-data
# pytest-xdist workers for `make ci` and `make test` (0: none, in-process; see docs/testing.md):
# each test file runs whole in one worker (its fixtures and order kept); each worker starts the
# services its tests ask for
TEST_WORKERS ?= 3

.DEFAULT_GOAL := help
.PHONY: help install install-run demo services test test-unit test-integration chaos lint typecheck check ci bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  make %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# The first install takes a few minutes: pip's own lines show what it fetches and builds.
$(BIN)/dte-stream: pyproject.toml
	@echo "make: installing dte-stream into $(VENV) (a few minutes the first time; pip shows its progress)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --progress-bar on -e '.[plots]'
	@touch $@

$(VENV)/.dev-tools: $(BIN)/dte-stream
	@echo "make: installing the test and lint tools into $(VENV)"
	$(BIN)/pip install --progress-bar on -e '.[dev]'
	@touch $@

install: $(VENV)/.dev-tools ## create .venv and install dte-stream with its dev tools

install-run: $(BIN)/dte-stream ## create .venv and install dte-stream alone (what the demo needs)

demo: install-run ## run the demo for 30 s (simulator -> twin bank -> local store), then query it and its alerts
	$(BIN)/dte-stream demo --twins 100 --duration 30 --data-dir $(DATA)
	$(BIN)/dte-stream query --data-dir $(DATA) --twin pump-0000 --limit 10
	$(BIN)/dte-stream alerts list --data-dir $(DATA)

services: ## install the real services for integration tests (Debian packages, Kafka jars)
	deploy/services/install.sh

test-unit: install ## unit tests (no services)
	$(PY) -m pytest tests/unit -q

test-integration: install services ## integration tests against real services
	$(PY) -m pytest tests/integration -q

chaos: install services ## chaos tests, long mode: InfluxDB down 120 s, kills, Kafka and Mosquitto restarts, MQTT spool, alert receiver down (docs/reliability.md)
	DTE_CHAOS_LONG=1 $(PY) -m pytest tests/integration/test_chaos_kafka_influxdb.py tests/integration/test_chaos_mqtt.py \
		tests/integration/test_chaos_mqtt_spool.py tests/integration/test_chaos_alerts.py -q -s

test: install services ## the whole suite: unit and integration tests
	$(PY) -m pytest tests -q -n $(TEST_WORKERS) --dist loadfile

lint: install ## ruff on the code and tests
	$(BIN)/ruff check --no-cache dte_stream connectors tests benchmarks deploy
	$(BIN)/ruff format --no-cache --check dte_stream connectors

typecheck: install ## mypy --strict on the package
	$(BIN)/mypy --strict dte_stream connectors

check: lint typecheck ## lint and typecheck

ci: install services lint typecheck ## what CI runs: install everything, lint, typecheck, whole suite
	$(PY) -m pytest tests -q -p no:cacheprovider --durations=15 -n $(TEST_WORKERS) --dist loadfile

bench: install ## the benchmarks recorded in docs/benchmarks.md
	$(PY) benchmarks/bench_twin_bank.py

clean: ## remove the venv, caches and demo data
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache $(DATA)
