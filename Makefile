# `make run` and `make test` work on a fresh machine with only Python 3.11: they create .venv
# and install the project into it first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
ARGS ?=
# pytest workers for `make test` (pytest-xdist); 0 runs the suite in this process. Work
# stealing: a worker that runs out takes queued tests from the other, so the long real-time
# tests (chaos, cluster, recovery) do not leave one worker idle at the end.
TEST_WORKERS ?= 2

BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run test lint format bench bench-mqtt clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(STAMP)

## run: start the gateway with its embedded broker (HTTP 127.0.0.1:8080, MQTT 127.0.0.1:1883)
run: $(STAMP)
	$(BIN)/pm serve $(ARGS)

## test: the whole suite (the MQTT client tests also need mosquitto, the store tests
## PostgreSQL, the dashboard's browser tests chromium and chromium-driver: all installed if
## missing)
test: $(TEST_STAMP) mosquitto postgresql chromium
	$(BIN)/ruff check pm actors tests bench
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal $(ARGS)

# The tests start their own mosquitto on a free port; this only makes sure the binary exists.
.PHONY: mosquitto
mosquitto:
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || \
	  { echo "installing mosquitto (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; }

# The store tests start their own throwaway PostgreSQL (initdb in a temporary directory, a free
# port, removed afterwards; as root it runs as "nobody"); this only makes sure the server's
# binaries exist: on PATH, or where the Debian package puts them.
.PHONY: postgresql
postgresql:
	@{ command -v initdb && command -v postgres; } >/dev/null || \
	  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { echo "installing postgresql (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

# The dashboard's browser tests drive Debian's headless Chromium through its chromedriver.
.PHONY: chromium
chromium:
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || \
	  { echo "installing chromium and chromium-driver (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium chromium-driver >/dev/null; }

lint: $(TEST_STAMP)
	$(BIN)/ruff check pm actors tests bench
	$(BIN)/ruff format --check pm actors tests bench

format: $(TEST_STAMP)
	$(BIN)/ruff format pm actors tests bench

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@ $(STAMP)

## bench: the standard benchmark set (a few minutes); tables and plots under bench/results/
bench: $(BENCH_STAMP) mosquitto
	$(BIN)/python -m bench.standard $(ARGS)

## bench-mqtt: sequential QoS 1 round trips between two of the gateway's MQTT clients through the
## embedded broker (a few seconds; ARGS="--help" for the other modes, docs/mqtt-client.md)
bench-mqtt: $(STAMP)
	$(BIN)/python -m bench.mqtt_roundtrip --embedded $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
