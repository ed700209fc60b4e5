# Titan Event Bus: the two commands a new user needs are `make up` and `make test`.
# Every target creates the virtual environment in .venv on its own; it is rebuilt
# only when pyproject.toml changes.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

WATCH_DIR ?= ./watched
REDIS ?= auto
DATA_DIR := data
URL_FILE := $(DATA_DIR)/redis.url

# test-publish and check-streams talk to the Redis that `make up` chose (it
# writes the URL to data/redis.url while it runs) unless TITAN_REDIS_URL is set.
BUS_ENV = TITAN_REDIS_URL="$${TITAN_REDIS_URL:-$$(cat $(URL_FILE) 2>/dev/null)}"

LINT_PATHS := titan_bus tests examples

.PHONY: venv up test-publish check-streams test lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

## up: Redis (yours, the default one, or a private one), processor, file watcher
up: $(STAMP)
	$(BIN)/python -m titan_bus.devstack --watch-dir "$(WATCH_DIR)" --redis $(REDIS) \
		--data-dir $(DATA_DIR)

## test-publish: one sample event per built-in topic (prints topic and event id)
test-publish: $(STAMP)
	@printf 'chat.v1    '; $(BUS_ENV) $(BIN)/titan-bus publish chat.v1 \
		'{"conversation_id": "demo", "role": "user", "text": "hello from make"}'
	@printf 'fs.v1      '; $(BUS_ENV) $(BIN)/titan-bus publish fs.v1 --priority low \
		'{"change": "created", "path": "/tmp/titan-demo.txt", "size": 12}'
	@printf 'system.v1  '; $(BUS_ENV) $(BIN)/titan-bus publish system.v1 --priority high \
		'{"name": "demo.started", "details": {"by": "make test-publish"}}'
	@printf 'plugin.v1  '; $(BUS_ENV) $(BIN)/titan-bus publish plugin.v1 \
		--source demo-plugin '{"plugin": "demo-plugin", "name": "demo.ping", "data": {"n": 1}}'

## check-streams: length, groups, pending and lag of every topic
check-streams: $(STAMP)
	@$(BUS_ENV) $(BIN)/titan-bus streams

## test: the whole suite, on a private redis-server started by the tests
test: $(STAMP)
	env -u TITAN_REDIS_URL -u TITAN_CONFIG $(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/mypy --strict examples

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis build dist
	rm -rf titan_bus.egg-info $(URL_FILE)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
