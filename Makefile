# EzAigent Streams: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EZ     := $(BIN)/ezstream

.PHONY: install demo test test-unit test-integration up down status fetch clean airflow airflow-install airflow-stop

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[stream,test,inference]'
	touch $@

fetch: install
	$(EZ) fetch

up: install
	$(EZ) up

down:
	@if [ -x $(EZ) ]; then $(EZ) down; fi

status: install
	$(EZ) status

## demo: set up, start the stack and a worker, send a minute of agent traffic, compare lake and ClickHouse
demo: install
	$(EZ) demo

## test: set up and run the whole suite (the integration fixtures start and stop their own stack)
test: fetch airflow-install
	$(BIN)/python -m pytest tests

test-unit: install airflow-install
	$(BIN)/python -m pytest tests/unit

test-integration: fetch airflow-install
	$(BIN)/python -m pytest tests/integration

clean: down
	rm -rf $(VENV) .ezstream

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
