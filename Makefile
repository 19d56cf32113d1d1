# clawmesh: every task is one target; `make install` is implied by the others.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: install run test pytest lint bench fuzz clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

## start a peer: a new mesh, or `make run ARGS="--bootstrap ws://HOST:7433"`
run: install
	$(BIN)/python -m peer $(ARGS)

## what CI runs: lint, types, then every test
test: lint pytest

pytest: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench $(ARGS)

## long Hypothesis runs of every decoder that sees network bytes
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -k "fuzz or mutat or any_bytes" tests

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
