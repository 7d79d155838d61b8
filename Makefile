# Two commands do everything on a fresh clone: `make run` and `make test`.
# Both create (or reuse) the virtual environment .venv and install the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 120

.PHONY: run test install clean-outputs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(STAMP)

# The main job: the whole lifelong sequence of params.yaml (dvc repro under a local Prefect
# server), then the registered model versions.
run: $(STAMP)
	PATH=$(BIN):$$PATH $(BIN)/lifelong run
	PATH=$(BIN):$$PATH $(BIN)/lifelong registry

test: $(STAMP)
	PATH=$(BIN):$$PATH $(BIN)/python -m pytest -q

# Remove what `make run` produced (DVC outputs, MLflow store, Prefect history).
clean-outputs:
	rm -rf adapters eval data/processed registry.json dvc.lock mlflow.db mlruns .prefect
