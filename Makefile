# The two commands a newcomer needs: `make up` and `make test`. Both build .venv themselves.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Debian packages the tests need (scripts/system-packages.sh installs them as root, else says so):
# sshd for the tunnel tests, bubblewrap for the replica sandbox (tests/security needs it), chromium
# for the dashboard's browser tests, pebble (Let's Encrypt's ACME test server, with pebble-challtestsrv)
# for the HTTPS tests, curl for the client side of those, etcd-server for the shared-state tests (a
# 3-member cluster on loopback).
SYSTEM_PACKAGES := openssh-server bubblewrap chromium pebble curl etcd-server

.PHONY: up test test-fast lint plain-install system-packages bench clean sandbox-tool screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The replica sandbox (bubblewrap): installed when missing and we are root, else a clear warning.
sandbox-tool:
	@bash scripts/ensure_sandbox.sh

up: $(STAMP) sandbox-tool
	$(BIN)/python -m reconciler.cli.quickstart

lint: $(STAMP)
	$(BIN)/ruff check tidegate reconciler backends gateway tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports
	bash scripts/actionlint.sh
	$(BIN)/tidegate validate examples/

# A clean venv with `pip install .` and no extras: every command must still run.
plain-install:
	bash scripts/check_plain_install.sh

system-packages:
	bash scripts/system-packages.sh $(SYSTEM_PACKAGES)

# lint, plain-install, the fast and the slow suite, ordered and overlapped by scripts/test_all.sh
test: system-packages $(STAMP) sandbox-tool
	PY=$(BIN)/python bash scripts/test_all.sh

test-fast: $(STAMP) sandbox-tool
	$(BIN)/python -m pytest -m "not slow" -q -x

# The README's dashboard screenshots (docs/screenshots/), taken by the browser test in headless Chromium.
screenshots: system-packages $(STAMP) sandbox-tool
	TIDEGATE_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q tests/e2e/test_dashboard.py -k real_browser

bench: $(STAMP)
	$(BIN)/python bench/reconcile.py
	$(BIN)/python bench/plans.py --sizes 1000 --runs 3
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/autoscale.py
	$(BIN)/python bench/controlplane.py
	$(BIN)/python bench/ratelimit.py

clean:
	rm -rf $(VENV) state/*.json state/*.jsonl state/repos state/replicas
