# Two commands on a fresh machine: `make run` and `make test`. Everything else is a convenience on top.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PROTOS := $(shell find protos -name '*.proto' | sort)
export SAGA_DATA_DIR ?= $(CURDIR)/.data

.PHONY: setup run run-tls test proto proto-check lint fmt clean bench chaos sim soak browser-deps k8s-deps go-deps lock \
	buf-lint buf-breaking buf-generate-check image image-deps image-check

# The venv is (re)built whenever pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# Tools from outside Python that `make test` needs: chromium (the dashboard in a browser), kubectl and promtool (the
# Kubernetes manifests, the alert rules), go (the Go client's build) and buf (the API checks; from npm). `make setup`
# and `make test` install them where they can; a tool they cannot install fails the run, saying why. To run without
# some, name them: SAGA_ALLOW_MISSING_TOOLS=chromium,go make test. `make image` and `make image-check` (CI runs the
# latter after make test) install buildah and debootstrap the same way; the tool name `buildah` covers both. Their tests are then skipped, and pytest's summary
# (-ra) says each was skipped because that variable names the tool (tests/helpers/tools.py reads it too).
SAGA_ALLOW_MISSING_TOOLS ?=
export SAGA_ALLOW_MISSING_TOOLS
# $(call missing,TOOL,WHY): in a recipe, when TOOL is unavailable: exit 1 with WHY, unless SAGA_ALLOW_MISSING_TOOLS
# names TOOL (then one line saying its tests will be skipped). No commas in WHY: they would split the arguments.
empty :=
ALLOWED_MISSING = ,$(subst $(empty) $(empty),,$(SAGA_ALLOW_MISSING_TOOLS)),
missing = case "$(ALLOWED_MISSING)" in \
	*,$(1),*) echo "$(1) unavailable: $(2). Its tests will be skipped: SAGA_ALLOW_MISSING_TOOLS names it";; \
	*) echo "$(1) unavailable: $(2). make test needs it; to run without it set SAGA_ALLOW_MISSING_TOOLS=$(1)" >&2; \
	   exit 1;; esac
# $(call apt_install,PACKAGES): installs Debian packages if this user may (root, with apt-get), refreshing the package
# lists once if the first attempt fails; false otherwise.
apt_install = [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	{ apt-get install -y -q $(1) >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && \
	  apt-get install -y -q $(1) >/dev/null 2>&1; }; }
NO_APT := apt-get could not install it (it needs root and an apt source)

# buf (protos/ lint and breaking-change checks) comes from npm, pinned in package-lock.json; reinstalled when the lock
# changes. Without npm `make setup` fails, unless SAGA_ALLOW_MISSING_TOOLS names buf.
BUF := node_modules/.bin/buf
$(BUF): package-lock.json
	@if command -v npm >/dev/null 2>&1; then npm ci --no-audit --no-fund --loglevel=error && touch $(BUF); \
	else $(call missing,buf,npm not found: install Node.js to get buf); fi

# The venv and buf: what `make test` and `make lint` need. The targets that need only the venv (run, bench, proto, ...)
# depend on it alone, so `make run` works without Node.js.
setup: $(STAMP) $(BUF)

# TLS=1 (or `make run-tls`): mutual TLS between every process and the auth policy, certificates from a local CA in
# $(SAGA_DATA_DIR)/tls; the launcher prints the grpcurl and sagactl commands with their certificate flags.
run: $(STAMP)
	$(PY) -m deploy.local $(if $(filter-out 0,$(TLS)),--tls)

run-tls: $(STAMP)
	$(PY) -m deploy.local --tls

# Two workers, each taking whole files (module-scoped systems stay with their tests): most of the suite waits on real
# processes starting and stopping, so two workers on two cores take about 60% of the time one does. TEST_WORKERS=0
# runs it in one process (pytest -p no:xdist semantics); PYTEST_ARGS adds to the command line.
TEST_WORKERS ?= 2
test: setup browser-deps k8s-deps go-deps
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

# The dashboard's browser tests drive Debian's Chromium (Playwright's own browser download does not work offline).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { $(call apt_install,chromium) && command -v chromium >/dev/null 2>&1; } || \
	  { $(call missing,chromium,not found and $(NO_APT): Debian package chromium); }

# tests/deploy renders deploy/k8s with `kubectl kustomize` (kustomize 5: kubectl 1.27 or later): the `kubectl` package
# where an apt source has it (the Kubernetes project's own repository), else the distribution's kubernetes-client.
# promtool (Debian's prometheus package) checks and unit-tests deploy/grafana/alerts.yml.
k8s-deps:
	@command -v kubectl >/dev/null 2>&1 || { { $(call apt_install,kubectl) || $(call apt_install,kubernetes-client); } \
	  && command -v kubectl >/dev/null 2>&1; } || \
	  { $(call missing,kubectl,not found and $(NO_APT): Debian package kubectl or kubernetes-client); }
	@command -v promtool >/dev/null 2>&1 || \
	  { $(call apt_install,--no-install-recommends prometheus) && command -v promtool >/dev/null 2>&1; } || \
	  { $(call missing,promtool,not found and $(NO_APT): Debian package prometheus); }

# Go's protobuf and gRPC plugins and libraries (Debian's packages: offline, no module proxy), for the Go client that
# buf.gen.yaml generates and `make buf-generate-check` builds.
GO_DEBS := golang-go protoc-gen-go protoc-gen-go-grpc golang-google-protobuf-dev golang-google-grpc-dev
GO_MISSING := Go or its protobuf/gRPC plugins and libraries are missing and $(NO_APT): Debian packages $(GO_DEBS)
HAVE_GO := command -v go && command -v protoc-gen-go && command -v protoc-gen-go-grpc && \
	test -d /usr/share/gocode/src/google.golang.org/grpc
go-deps:
	@{ $(HAVE_GO); } >/dev/null 2>&1 || \
	  { $(call apt_install,--no-install-recommends $(GO_DEBS)) && { $(HAVE_GO); } >/dev/null 2>&1; } || \
	  { $(call missing,go,$(GO_MISSING)); }

# deploy/requirements.lock: the image's runtime dependencies (pyproject.toml [project] dependencies), each pinned with
# the hash of every file PyPI has for that version, so `pip install --require-hashes` in deploy/Dockerfile accepts the
# wheels of any platform (x86_64 and aarch64 alike). Existing pins are kept; LOCK_ARGS=--upgrade moves them to the
# newest allowed versions.
lock: $(STAMP)
	$(VENV)/bin/pip-compile -q --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
	  --no-emit-find-links --output-file=deploy/requirements.lock $(LOCK_ARGS) pyproject.toml

# Local cluster under load: a table plus one JSON line; results under bench/results/. BENCH_ARGS="--help" lists modes.
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

# The long versions of the soak tests (the short ones run in make test): the journal's WAL under a 60-second burst;
# 10,000 sagas waiting a minute on long-running operations (the shard's CPU between polls and its memory).
soak: $(STAMP)
	SAGA_SOAK_S=60 $(PY) -m pytest -q -s tests/coordinator/test_retention.py -k burst
	SAGA_WAITING_N=10000 SAGA_WAITING_S=60 $(PY) -m pytest -q -s tests/coordinator/test_operations_process.py \
	  -k many_waiting

# The ring protocol's deterministic simulation, many more schedules than make test runs (SIM_ARGS="--help").
SIM_ARGS ?= --seeds 20000
sim: $(STAMP)
	$(PY) -m tests.simulation $(SIM_ARGS)

# Every chaos scenario, the long version (a minute or more each). The short versions run inside `make test`.
chaos: $(STAMP)
	$(PY) -m tests.chaos $(CHAOS_ARGS)

# Also writes protos/descriptor_set.binpb (with comments) for server reflection: grpcurl describe shows the docs.
PROTOC = -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. --pyi_out=. \
	--include_source_info --include_imports --descriptor_set_out=protos/descriptor_set.binpb

proto: $(STAMP)
	$(PY) $(PROTOC) $(PROTOS)

# Fails if the committed generated code differs from what `make proto` produces.
proto-check: $(STAMP)
	@tmp=$$(mktemp -d) && cp -r protos $$tmp/ && cd $$tmp && \
	  $(CURDIR)/$(PY) $(PROTOC) $(PROTOS) && \
	  diff -r $(CURDIR)/protos $$tmp/protos -x __pycache__ && echo "generated code is fresh"; \
	  rc=$$?; rm -rf $$tmp; exit $$rc

# Rules and every documented exception: buf.yaml.
buf-lint: setup
	@test -x $(BUF) || { echo "buf is missing: install Node.js/npm, then make setup"; exit 1; }
	$(BUF) lint

# Breaking changes (buf.yaml: FILE rules) against two references: the commit where saga.v1's compatibility promise was
# made (API_BASELINE: every change since must be additive) and the previous commit (a field added and removed again
# after the baseline broke the clients built in between). CI runs on a full clone of main (a shallow clone: git fetch
# --unshallow). On a branch, compare with where it left main too: BUF_AGAINST=".git#ref=$$(git merge-base HEAD
# origin/main)". A tag, when there is one, replaces the previous commit.
API_BASELINE := cee692189575298bf81d22e46510fce4ce1e241a
BUF_AGAINST ?= .git\#ref=$(shell git describe --tags --abbrev=0 2>/dev/null || echo HEAD~1)
buf-breaking: setup
	@test -x $(BUF) || { echo "buf is missing: install Node.js/npm, then make setup"; exit 1; }
	$(BUF) breaking --against '.git#ref=$(API_BASELINE)'
	$(BUF) breaking --against '$(BUF_AGAINST)'
	@echo "saga.v1 compatible with $(API_BASELINE) and $(BUF_AGAINST)"

# Other languages' clients: buf.gen.yaml itself, run into build/gopath (not committed); the Go package built with
# Debian's Go libraries (GOPATH mode: no module proxy, no network) and the TypeScript type-checked with tsc --strict.
# Without Go (make go-deps) it fails, unless SAGA_ALLOW_MISSING_TOOLS names go.
GEN := build/gopath/src/example.com/yourteam/sagaapi
buf-generate-check: setup
	@test -x $(BUF) || { echo "buf is missing: install Node.js/npm, then make setup"; exit 1; }
	@command -v protoc-gen-go >/dev/null 2>&1 && command -v protoc-gen-go-grpc >/dev/null 2>&1 || \
	  { echo "protoc-gen-go/protoc-gen-go-grpc missing (make go-deps): Go client not generated"; exit 1; }
	rm -rf build/gopath
	$(BUF) generate --template buf.gen.yaml --path protos/saga/v1 -o $(GEN)
	node_modules/.bin/tsc --noEmit --strict --target es2022 --module esnext --moduleResolution bundler \
	  $$(find $(GEN)/gen/ts -name '*.ts') && echo "TypeScript client generated and type-checked"
	@if command -v go >/dev/null 2>&1 && test -d /usr/share/gocode/src/google.golang.org/grpc; then \
	  GO111MODULE=off GOFLAGS= GOPATH=$(CURDIR)/build/gopath:/usr/share/gocode \
	    GOCACHE=$${GOCACHE:-$${HOME:+$$HOME/.cache/go-build}} GOCACHE=$${GOCACHE:-$(CURDIR)/build/gocache} \
	    go vet example.com/yourteam/sagaapi/gen/go/... && echo "Go client generated, built and vetted"; \
	else $(call missing,go,the Go toolchain is missing (make go-deps): Go client generated but not built); fi

# The container image (deploy/Dockerfile) built with buildah, no daemon and no registry: the Debian bookworm base is
# made by debootstrap from this machine's Debian mirror, under build/image with buildah's storage (deploy/image.sh).
# The first build takes a few minutes, later ones reuse the base and unchanged layers. Without buildah or debootstrap
# (Debian packages of those names) it fails, unless SAGA_ALLOW_MISSING_TOOLS names buildah.
IMAGE ?= saga-coordinator:0.1.0
export IMAGE
image-deps:
	@command -v buildah >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 || \
	  { $(call apt_install,--no-install-recommends buildah debootstrap) && command -v buildah >/dev/null 2>&1 && \
	    command -v debootstrap >/dev/null 2>&1; } || \
	  { $(call missing,buildah,buildah or debootstrap not found and $(NO_APT): Debian packages buildah debootstrap); }

image: image-deps
	@if command -v buildah >/dev/null 2>&1; then deploy/image.sh build; fi

# The image, then a smoke test run from it (tests/deploy/image_smoke.py): stubs, a shard and a router started from
# the image's console scripts (buildah run, chroot isolation: the host's network), an order placed with grpcurl from
# here, its ledger checked, every process stopped.
image-check: image $(STAMP)
	@if command -v buildah >/dev/null 2>&1; then \
	  start=$$(date +%s); $(PY) -m pytest -q -p no:cacheprovider tests/deploy/image_smoke.py; rc=$$?; \
	  echo "image smoke test: $$(( $$(date +%s) - start )) s"; exit $$rc; fi

lint: setup buf-lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache
