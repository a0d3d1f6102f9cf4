# Two commands on a fresh machine: `make run` and `make test`. Everything else is a convenience on top.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROTOS := $(shell find protos -name '*.proto' | sort)
export SAGA_DATA_DIR ?= $(CURDIR)/.data

.PHONY: setup run test test-fast proto proto-check lint fmt clean

# The venv is (re)built whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(PY) -m deploy.local

test: setup
	$(PY) -m pytest -q

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
