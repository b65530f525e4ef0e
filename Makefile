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
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks

chaos: $(STAMP)
	SNAKEPIT_CHAOS_FULL=1 $(BIN)/pytest -q -m slow tests

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
