# The quick start is two commands: `make demo` and `make test`. Each sets up .venv when it is missing
# or when pyproject.toml changed since the last install; otherwise it installs nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
QUESTION ?= How do durable workflows survive worker failures?

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

demo: setup
	$(BIN)/raysquad run research --input '{"question": "$(QUESTION)"}'

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check runtime agents serve benchmarks tests
	$(BIN)/mypy runtime agents serve

bench: setup
	$(BIN)/python benchmarks/step_overhead.py

clean:
	rm -rf .raysquad benchmarks/results
