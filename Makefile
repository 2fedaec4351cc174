# SceneRec: `make demo` runs the whole pipeline end to end, `make test` runs the tests.
# Both create .venv and install the pinned set on first use; nothing here needs a network
# beyond the package index, and nothing downloads model weights or data.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | md5sum | cut -c1-12)
PYTEST_ARGS ?=

# Offline, quiet, project-local defaults (override any of them from the environment).
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export DO_NOT_TRACK ?= 1
export DVC_NO_ANALYTICS ?= 1
export FEAST_USAGE ?= False
export GX_ANALYTICS_ENABLED ?= false
export MLFLOW_ENABLE_TELEMETRY ?= false
export PATH := $(BIN):$(PATH)

PREFECT_PORT ?= 4200
MLFLOW_PORT ?= 5000

.PHONY: install demo test test-all ui ui-stop deploy worker bench serve clean help

help:
	@echo "make demo   - install (first time) and run the whole pipeline end to end"
	@echo "make test   - install (first time) and run the test suite"
	@echo "make ui     - start the Prefect server and the MLflow UI on 127.0.0.1"
	@echo "make deploy - register the flows' deployments on the local process work pool"
	@echo "make worker - start a worker for that pool (run flows from the Prefect UI)"
	@echo "make bench  - run the benchmarks in benchmarks/"
	@echo "make serve  - serve the champion CTR model on http://127.0.0.1:8765 (see README: Serving)"

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	@echo "installing the pinned set into $(VENV) (log: $(VENV)/install.log) ..."
	@$(BIN)/python -m pip install --disable-pip-version-check -c constraints.txt -e '.[test]' > $(VENV)/install.log 2>&1 \
	  || { tail -30 $(VENV)/install.log; echo "install failed: see $(VENV)/install.log"; exit 1; }
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

demo: install
	@start=$$(date +%s); \
	scenerec pipeline || { echo "make demo: the pipeline failed after $$(( $$(date +%s) - start )) s (the error is above)"; exit 1; }; \
	echo "make demo: finished in $$(( $$(date +%s) - start )) s"; \
	echo "serve the champion: make serve  (then the curl example in README.md, section Serving)"

serve: install
	scenerec serve

test: install
	$(BIN)/python -m pytest -m "not gpu and not browser and not full_repro" $(PYTEST_ARGS)

test-all: install  # + the from-scratch `dvc repro` (full_repro) and the browser test (needs chromium)
	$(BIN)/python -m pytest -m "not gpu" $(PYTEST_ARGS)

ui: install
	@mkdir -p .prefect
	@setsid nohup prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) > .prefect/server.log 2>&1 & echo $$! > .prefect/server.pid
	@setsid nohup mlflow ui --host 127.0.0.1 --port $(MLFLOW_PORT) --workers 1 \
	  --backend-store-uri "$$(python -c 'from components.config import load_params; from components.tracking import tracking_uri; print(tracking_uri(load_params()))')" \
	  > .prefect/mlflow.log 2>&1 & echo $$! > .prefect/mlflow.pid
	@for i in $$(seq 90); do curl -fs http://127.0.0.1:$(PREFECT_PORT)/api/health >/dev/null && break; sleep 1; done
	@for i in $$(seq 90); do curl -fs http://127.0.0.1:$(MLFLOW_PORT)/health >/dev/null && break; sleep 1; done
	@curl -fs http://127.0.0.1:$(PREFECT_PORT)/api/health >/dev/null || { echo "Prefect server did not start: see .prefect/server.log"; exit 1; }
	@curl -fs http://127.0.0.1:$(MLFLOW_PORT)/health >/dev/null || { echo "MLflow UI did not start: see .prefect/mlflow.log"; exit 1; }
	@echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)   (export PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api to send runs there)"
	@echo "MLflow UI:  http://127.0.0.1:$(MLFLOW_PORT)"
	@echo "Stop both with: make ui-stop"

# Prefect 3.8 servers need a second SIGTERM; give each process group up to 15 s, then SIGKILL.
ui-stop:
	@for f in .prefect/server.pid .prefect/mlflow.pid; do \
	  [ -f $$f ] || continue; pg=$$(cat $$f); \
	  for sig in TERM TERM; do kill -$$sig -- -$$pg 2>/dev/null || true; \
	    for i in $$(seq 15); do kill -0 -- -$$pg 2>/dev/null || break; sleep 1; done; done; \
	  kill -KILL -- -$$pg 2>/dev/null || true; rm -f $$f; done
	@echo "stopped"

deploy: install
	@export PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$(PREFECT_PORT)/api}; \
	prefect work-pool inspect scenerec-local >/dev/null 2>&1 || prefect work-pool create scenerec-local --type process; \
	prefect --no-prompt deploy --all

worker: install
	PREFECT_API_URL=$${PREFECT_API_URL:-http://127.0.0.1:$(PREFECT_PORT)/api} prefect worker start --pool scenerec-local --type process

bench: install
	@$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[bench]'  # the CTR peers
	@for b in benchmarks/*.py; do echo "== $$b"; python $$b; done

clean:
	rm -rf data reports mlflow.db mlartifacts .prefect
