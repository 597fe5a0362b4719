# One entry point for developers and CI. `make serve` installs and starts the server;
# `make test` installs and runs the checks and every test tier.
#
# PYTHON picks the interpreter (3.11 to 3.13): `make test PYTHON=python3.13`. The venv is
# made again when it holds another Python. Every install goes through constraints.txt, the
# lock `make lock` refreshes, so every machine gets the same versions.
# The default: python3 when it is 3.11 to 3.13, else the newest python3.1x of those on PATH.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for p in python3 python3.13 python3.12 python3.11; do \
	$$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null \
	&& { echo $$p; break; }; done)
endif
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
CONSTRAINTS ?= constraints.txt

comma := ,
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
# What `make serve` installs besides the server and the provider SDKs: `make serve EXTRAS=local`
# adds torch and diffusers for the local FLUX backend (about 2 GB).
EXTRAS ?=
# What `make test` installs: dev, and local where the lock pins a torch for this Python
# (3.11). Elsewhere the local tier is deselected; `make test TEST_EXTRAS=dev,local` runs it.
# So are the two tiers that test a deployment rather than the interpreter (chaos: workers
# killed and PostgreSQL restarted; hosts: a deployment across network namespaces), which run
# with every other tier on 3.11; `make test PYTEST_ARGS=` runs every tier on any Python.
TEST_EXTRAS ?= $(if $(filter 3.11,$(PYVER)),dev$(comma)local,dev)
WITH_LOCAL := $(filter local,$(subst $(comma), ,$(TEST_EXTRAS)))
PYTEST_ARGS ?= $(if $(WITH_LOCAL),,-m 'not local and not chaos and not hosts')
# Without torch, the `type: ignore`s its stubs call for are unused: not an error there.
MYPY_ARGS ?= $(if $(WITH_LOCAL),,--no-warn-unused-ignores)

# With the dev extra: the official SDK 1.x (Tripo API v3) beside the 0.4.2 of the dev extra,
# for the v3 end-to-end test, which puts that directory first on a child process's path; and
# 0.4.2 with aiohttp, as the README installs it, for the README snippets' test.
define SDK_INSTALLS
$(BIN)/python -m pip install --quiet --upgrade -c constraints-sdk.txt --target $(VENV)/tripo3d-v1 'tripo3d[async]==1.0.0'
	$(BIN)/python -m pip install --quiet --upgrade -c constraints-sdk.txt --target $(VENV)/tripo3d-aiohttp 'tripo3d[async]==0.4.2'
endef

.PHONY: install install-test serve test check lint typecheck pytest browser bench bench-gpu load lock clean

# One stamp per Python and set of extras: `make test` after `make serve` adds the dev extra.
stamp = $(VENV)/.installed-py$(PYVER)-$(or $(subst $(comma),-,$(1)),base)

install: $(call stamp,$(EXTRAS))

install-test:
	@$(MAKE) --no-print-directory install EXTRAS='$(TEST_EXTRAS)'

$(VENV)/.installed-py%: pyproject.toml $(CONSTRAINTS) constraints-sdk.txt
	@test -n "$(PYVER)" || { echo "no Python at PYTHON=$(PYTHON); pass PYTHON=python3.12 or a path" >&2; exit 1; }
	@if [ -x $(BIN)/python ] && [ "$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$(PYVER)" ]; then \
		echo "$(VENV) holds another Python; making it again with $(PYTHON) ($(PYVER))"; rm -rf $(VENV); fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e '.$(if $(EXTRAS),[$(EXTRAS)])'
	$(if $(filter dev,$(subst $(comma), ,$(EXTRAS))),$(SDK_INSTALLS))
	touch $@

serve: install
	$(BIN)/easel serve --host $(HOST) --port $(PORT)

test: check pytest

check: lint typecheck

lint: install-test
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts

typecheck: install-test
	$(BIN)/mypy $(MYPY_ARGS)

pytest: install-test browser
	$(BIN)/pytest -q $(PYTEST_ARGS)

# Debian's Chromium for the browser tests, installed where apt-get is usable (root or
# passwordless sudo); elsewhere it prints the command and the browser tests skip.
browser:
	@scripts/ensure-chromium.sh

# Benchmarks run on SQLite, and also on PostgreSQL when POSTGRES_URL names one
# (postgresql+asyncpg://…; a scratch database is made beside it and dropped after).
POSTGRES_URL ?= $(EASEL_TEST_POSTGRES_URL)
ON_POSTGRES = $(if $(POSTGRES_URL),--postgres $(POSTGRES_URL))

bench: install
	$(BIN)/python bench/throughput.py $(ON_POSTGRES)

# Every diffusers family on this machine's GPU, plain diffusers beside Easel's path, full-size
# models with random weights (nothing downloaded): GPU_BENCH_ARGS='--tiny' checks it on a CPU.
GPU_BENCH_ARGS ?=

bench-gpu:
	@$(MAKE) --no-print-directory install EXTRAS=local
	$(BIN)/python bench/gpu_families.py $(GPU_BENCH_ARGS)

RATE ?= 500
DURATION ?= 20

load: install
	$(BIN)/python bench/load.py --rate $(RATE) --duration $(DURATION) $(ON_POSTGRES)

# Refresh the lock: every extra installed fresh without constraints (the newest releases the
# ranges in pyproject.toml allow), pinned into constraints*.txt, then the whole suite on them.
# Run it on the Python CI tests every tier on (3.11), e.g. weekly. LOCK_PINS holds requirements
# to keep, e.g. `make lock LOCK_PINS=torch==2.13.0` where a CPU build of that torch lies in
# pip's find-links: unpinned, pip takes the newest torch and its CUDA packages (GBs).
LOCK_VENV ?= .lock-venv
LOCK_PINS ?=
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[dev,local]' $(LOCK_PINS)
	$(LOCK_VENV)/bin/python -m pip install --quiet --target $(LOCK_VENV)/tripo3d-v1 'tripo3d[async]==1.0.0'
	$(LOCK_VENV)/bin/python scripts/lock.py $(LOCK_VENV)
	rm -rf $(LOCK_VENV)
	$(MAKE) --no-print-directory test

clean:
	rm -rf $(VENV) $(LOCK_VENV) easel-data .mypy_cache .pytest_cache .ruff_cache
