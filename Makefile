# Two commands on a fresh machine: `make run` and `make test`. Everything else is a convenience on top.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROTOS := $(shell find protos -name '*.proto' | sort)
export SAGA_DATA_DIR ?= $(CURDIR)/.data

.PHONY: setup run test proto proto-check lint fmt clean bench chaos browser-deps

# The venv is (re)built whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(PY) -m deploy.local

test: setup browser-deps
	$(PY) -m pytest -q

# The dashboard's browser test drives Debian's Chromium (Playwright's own browser download does not work offline).
# Installed only when missing and when this user may run apt-get; otherwise that one test is skipped with the reason.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && \
	    apt-get install -y -q chromium >/dev/null 2>&1; }; } ; } || echo "chromium unavailable: the browser test will skip"

# Local cluster under load: a table plus one JSON line; results under bench/results/. BENCH_ARGS="--help" lists modes.
bench: setup
	$(PY) -m bench $(BENCH_ARGS)

# Every chaos scenario, the long version (a minute or more each). The short versions run inside `make test`.
chaos: setup
	$(PY) -m tests.chaos $(CHAOS_ARGS)

# Also writes protos/descriptor_set.binpb (with comments) for server reflection: grpcurl describe shows the docs.
PROTOC = -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. \
	--include_source_info --include_imports --descriptor_set_out=protos/descriptor_set.binpb

proto: setup
	$(PY) $(PROTOC) $(PROTOS)

# Fails if the committed generated code differs from what `make proto` produces.
proto-check: setup
	@tmp=$$(mktemp -d) && cp -r protos $$tmp/ && cd $$tmp && \
	  $(CURDIR)/$(PY) $(PROTOC) $(PROTOS) && \
	  diff -r $(CURDIR)/protos $$tmp/protos -x __pycache__ && echo "generated code is fresh"; \
	  rc=$$?; rm -rf $$tmp; exit $$rc

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
