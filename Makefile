# Two commands matter: `make demo` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint types unit bench chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,metrics]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.demo

test: $(STAMP) lint types unit

lint: $(STAMP)
	$(BIN)/ruff check snakepit_celery tests benchmarks examples
	$(BIN)/ruff format --check snakepit_celery tests benchmarks examples

types: $(STAMP)
	$(BIN)/mypy --strict snakepit_celery examples

unit: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m benchmarks

# `make chaos CHAOS_KILLS=300 CHAOS_BROKER=amqp`: go on until 300 whole-node kills, on RabbitMQ.
CHAOS_KILLS ?= 0
CHAOS_BROKER ?= redis
chaos: $(STAMP)
	SNAKEPIT_CHAOS_FULL=1 SNAKEPIT_CHAOS_KILLS=$(CHAOS_KILLS) SNAKEPIT_CHAOS_BROKER=$(CHAOS_BROKER) \
		$(BIN)/pytest -q -m slow tests

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
