# One entry point for developers and CI. `make serve` installs and starts the server;
# `make test` installs and runs the checks and every test tier.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install serve test check lint typecheck pytest bench load clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,local,providers]'
	# The official SDK 1.x (Tripo API v3) beside the 0.4.2 of the dev extra, for the v3
	# end-to-end test, which puts this directory first on a child process's path.
	$(BIN)/python -m pip install --quiet --target $(VENV)/tripo3d-v1 'tripo3d[async]==1.0.0'
	touch $@

serve: install
	$(BIN)/easel serve --host $(HOST) --port $(PORT)

test: check pytest

check: lint typecheck

lint: install
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest -q

bench: install
	$(BIN)/python bench/throughput.py

RATE ?= 500
DURATION ?= 20

load: install
	$(BIN)/python bench/load.py --rate $(RATE) --duration $(DURATION)

clean:
	rm -rf $(VENV) easel-data .mypy_cache .pytest_cache .ruff_cache
