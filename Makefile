# The commands of the README. CI calls the same targets a user types.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# Bytecode goes to the state dir (imports of Airflow, GX,
# Evidently and MLflow are seconds faster with a cache).
export PYTHONPYCACHEPREFIX ?= $(CURDIR)/.ct/pycache
# With PYTHONDONTWRITEBYTECODE set no cache is written at all, prefix or not.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: install lock demo demo-cluster test test-e2e test-ui test-cluster test-load bench bench-quick lint format stack-up stack-down stack-status clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$$(grep -E '^uv==' requirements.lock)"
	$(BIN)/uv pip sync -q --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install -q --python $(BIN)/python --no-deps -e .
	touch $@

lock:  ## re-resolve requirements.in into requirements.lock
	$(BIN)/uv pip compile -q requirements.in -o requirements.lock --python-version 3.11

demo: install
	$(BIN)/ct demo

demo-cluster: install
	$(BIN)/ct demo --cluster

test: install
	$(BIN)/pytest

test-e2e: install
	$(BIN)/pytest -m e2e

test-ui: install  ## the UI in Debian's chromium, on a stack of its own after the demo (~8 min)
	$(BIN)/pytest -m ui tests/ui

test-cluster: install  ## stacks under load and failures: the embedded one, then the cluster (~30 min)
	$(BIN)/pytest -m cluster tests/cluster -k embedded
	$(BIN)/pytest -m cluster tests/cluster -k "not embedded"

test-load: install  ## the endpoint under 10 min of 1-row traffic at 3x the demo's rate, then a promotion (~14 min)
	$(BIN)/pytest -m load tests/load

bench: install  ## every benchmark beside its anchor; table + bench/results/*.json (~15 min)
	$(BIN)/python -m bench

bench-quick: install  ## smaller sizes, no loop (< 2 min): a check before commit
	$(BIN)/python -m bench --quick

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

stack-up: install
	$(BIN)/ct stack up

stack-down: install
	$(BIN)/ct stack down

stack-status: install
	$(BIN)/ct stack status

clean: stack-down
	rm -rf .ct
