# igni-token-vendor: every command a developer or CI needs. `make help` lists them.
#
# The dev venv (.venv) is built from pyproject.toml's dev extra, constrained by
# requirements-dev.lock, and rebuilt only when either changes. aws-sam-cli lives in its own venv
# (.venv-sam), installed on first `make build` / `make deploy`: its dependencies conflict with
# the project's pins, and `make test` does not need it.

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

.PHONY: help venv lock lint scan test e2e local invoke build deploy bench clean

help:
	@echo "make venv     dev venv in $(VENV) (pinned by $(LOCK))"
	@echo "make test     lint, then pytest (starts its own moto server and Igni stub)"
	@echo "make e2e      the end-to-end suite against make local, or a deployed one: STACK=<name>"
	@echo "make scan     cfn-lint, checkov (.venv-scan), bandit, pip-audit (scripts/scan.sh)"
	@echo "make lint     ruff check, ruff format --check, mypy --strict, cfn-lint"
	@echo "make local    the service on http://127.0.0.1:3000 (moto + Igni stub; Ctrl-C stops)"
	@echo "make invoke EVENT=events/get_token.json   run the handler once on an event"
	@echo "make build    sam build (aws-sam-cli $(SAM_VERSION) in $(SAM_VENV))"
	@echo "make deploy   sam deploy --guided"
	@echo "make bench    python -m bench.run"
	@echo "make lock     regenerate $(LOCK) from a clean install of the dev extra"
	@echo "make clean    remove venvs, build output and caches"

venv: $(STAMP)

$(STAMP): pyproject.toml $(wildcard $(LOCK)) $(CLIENT_PROJECT)
	@if [ ! -x $(PY) ]; then \
		echo "creating $(VENV) with $(PYTHON_BOOT)"; \
		$(PYTHON_BOOT) -m venv $(VENV); \
	fi
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

test: lint scan
	$(PY) -m pytest

# tests/e2e against `make local` (the suite starts and stops it), or against a deployed stack:
# make e2e STACK=<name> reads the stack's ApiUrl output (or set IGNI_E2E_BASE_URL) and signs
# with your AWS credentials (docs/deploying.md, "Testing a deployed stack").
e2e: venv
	$(if $(STACK),IGNI_E2E_STACK='$(STACK)' ,)$(PY) -m pytest tests/e2e -q $(E2E_ARGS)

local: venv
	$(PY) -m local.run

invoke: venv
	@if [ -z "$(EVENT)" ]; then echo "usage: make invoke EVENT=events/get_token.json"; exit 2; fi
	$(PY) -m local.invoke "$(EVENT)"

$(SAM_STAMP):
	@if [ ! -x $(SAM_VENV)/bin/python ]; then $(PYTHON_BOOT) -m venv $(SAM_VENV); fi
	$(SAM_VENV)/bin/python -m pip install --quiet 'aws-sam-cli==$(SAM_VERSION)'
	@touch $@

# sam build looks for the runtime's interpreter (python3.13) on PATH; the dev venv has one.
# CodeUri is src/: leave no build litter there for sam build to package.
build: $(SAM_STAMP) venv
	rm -rf src/*.egg-info src/.mypy_cache
	find src -name __pycache__ -type d -prune -exec rm -rf {} +
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(SAM) build --template-file template.yaml

# The roles are named (the key policy names the token function's role), hence NAMED_IAM.
deploy: $(SAM_STAMP)
	$(SAM) deploy --guided --capabilities CAPABILITY_NAMED_IAM

bench: venv
	$(PY) -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(SAM_VENV) .venv-scan .venv-lock .aws-sam .local-state \
		.pytest_cache .mypy_cache .ruff_cache .hypothesis src/.mypy_cache
	find . -path ./.git -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d \
		-prune -exec rm -rf {} +
