# EzAigent Streams: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EZ     := $(BIN)/ezstream

.PHONY: install native demo test test-unit test-integration up down status fetch grafana-schema clean airflow airflow-install airflow-stop kcat

install: $(VENV)/.installed $(VENV)/.native

## native: build the Rust batch decoder (native/) with maturin and install it into the venv; cargo's registry
## and build cache live in $EZ_CACHE_DIR/cargo (~/.cache/ezstream/cargo by default), so a rebuild takes seconds
NATIVE_CACHE   := $(or $(EZ_CACHE_DIR),$(HOME)/.cache/ezstream)/cargo
NATIVE_SOURCES := $(shell find native/src -type f) native/Cargo.toml native/Cargo.lock native/build.rs native/pyproject.toml
native: $(VENV)/.installed
	@command -v cargo >/dev/null || { echo "make native: cargo not found; install Rust 1.88 or newer with rustup (https://rustup.rs)" >&2; exit 1; }
	$(BIN)/pip install --quiet maturin==1.16.0
	rm -rf $(NATIVE_CACHE)/wheels
	CARGO_HOME=$(NATIVE_CACHE)/home CARGO_TARGET_DIR=$(NATIVE_CACHE)/target $(BIN)/maturin build --release --locked \
		--manifest-path native/Cargo.toml --interpreter $(BIN)/python --auditwheel skip --out $(NATIVE_CACHE)/wheels
	$(BIN)/pip install --quiet --force-reinstall --no-deps $(NATIVE_CACHE)/wheels/ezstream_native-*.whl
	touch $(VENV)/.native

$(VENV)/.native: $(NATIVE_SOURCES) | $(VENV)/.installed
	$(MAKE) native

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[stream,test,inference]'
	touch $@

## fetch: download/build the local services into $EZ_CACHE_DIR: Kafka's jars, MinIO and the OpenTelemetry
## Collector (collector builder, a few minutes the first time), and grafana-schema; `make test` runs it, `make demo`
## builds the services in `ezstream up`
fetch: install
	$(EZ) fetch

## grafana-schema: Grafana's published schema (@grafana/schema) and TypeScript, pinned in
## infra/grafana/schema-check/, installed with npm ci into $EZ_CACHE_DIR/grafana-schema for tests/unit/test_grafana.py
grafana-schema: install
	$(EZ) fetch grafana-schema

up: install
	$(EZ) up

down:
	@if [ -x $(EZ) ]; then $(EZ) down; fi

status: install
	$(EZ) status

## demo: set up, start the stack and a worker, send a minute of agent traffic, compare lake and ClickHouse;
## prints the live dashboard's URL (http://127.0.0.1:8501, EZ_DASHBOARD_PORT), which runs until `make down`
demo: install
	$(EZ) demo

## test: set up and run the whole suite (the integration fixtures start and stop their own stack)
test: fetch airflow-install kcat
	$(BIN)/python -m pytest tests

test-unit: install airflow-install grafana-schema
	$(BIN)/python -m pytest tests/unit

test-integration: fetch airflow-install kcat
	$(BIN)/python -m pytest tests/integration

clean: down
	rm -rf $(VENV) .ezstream

## kcat: Debian's kcat, the plain Kafka client tests/integration/test_json_ingest.py produces JSON events with
kcat:
	@command -v kcat >/dev/null || \
		{ SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq kcat >/dev/null; }

## airflow-install: Airflow's own virtualenv (pinned, cached under ~/.cache/ezstream) and Debian's chromium for the UI test
airflow-install: install
	$(BIN)/python -m infra.local.airflow install
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }

## airflow: start Airflow (UI, scheduler) on 127.0.0.1:8080 with airflow_dags/; prints how to log in
airflow: airflow-install
	$(BIN)/python -m infra.local.airflow start

airflow-stop:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m infra.local.airflow stop; fi
