# cnnlab — `make help` lists the targets. Every target installs what it needs first.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stamp-install
# Forwarded to `cnnlab.run`, e.g. `make run ARGS="model=resnet18 trainer.epochs=5"`.
ARGS ?=
DATASET ?= digits
EPOCHS ?=
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast lint sweep bench soak ddp-smoke tensorboard clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z_-]+:.*?## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install cnnlab with its dev tools (idempotent)

run: $(STAMP) ## Train the default experiment (AlexNet on the embedded digits, CPU ok)
	$(BIN)/python -m cnnlab.run $(ARGS)

test: $(STAMP) ## Run the whole test suite (slow tests included)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP) ## Run the tests without the slow ones
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .

tensorboard: $(STAMP) ## TensorBoard over every run in outputs/
	$(BIN)/tensorboard --logdir outputs --bind_all=false --host 127.0.0.1

clean: ## Remove run outputs, caches and the virtualenv (not data/)
	rm -rf $(VENV) outputs/2* outputs/multirun .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
