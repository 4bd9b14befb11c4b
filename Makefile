# EzAigent Streams: the two set-up commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EZ     := $(BIN)/ezstream

.PHONY: install demo test test-unit test-integration up down status fetch clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[stream,test]'
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
test: fetch
	$(BIN)/python -m pytest tests

test-unit: install
	$(BIN)/python -m pytest tests/unit

test-integration: fetch
	$(BIN)/python -m pytest tests/integration

clean: down
	rm -rf $(VENV) .ezstream
