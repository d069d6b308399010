# Two entry points: `make demo` (set up, then plan the embedded mixed workload)
# and `make test` (set up, then lint, type-check and run the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test setup lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# llama-cpp-python compiles llama.cpp from source the first time (~9 min on 2 cores);
	# pip's wheel cache makes later installs fast.
	$(BIN)/python -m pip install -q -e '.[engine,dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/planner demo

lint: $(STAMP)
	$(BIN)/ruff check planner profiler tests benchmarks
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
