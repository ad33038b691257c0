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
.PHONY: help install run test test-all lint sweep bench soak coverage export-coverage ddp-smoke tensorboard mlflow gpu-wheels gpu-check clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z_-]+:.*?## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# pip's "WARNING: Location '...' is ignored" lines (an index in pip's config that has
# no page for a package) are noise to someone running `make run`: they are dropped;
# every other line pip prints, errors included, shows, and pip's exit status is kept.
# PYTHONWARNINGS=ignore silences setuptools' framed "Editable installation" screen, a
# Python warning of the build backend; errors are not warnings and still show.
# --no-compile: pip would byte-compile every module of every package (mlflow, wandb, onnx...),
# most never imported by a run; Python compiles what it imports on first use instead.
# Measured from a fresh clone: install + first `make run` 2 min 53 s with it, 4 min 14 s without.
PIP_FILTER := 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }
PIP := PYTHONWARNINGS=ignore $(BIN)/pip

$(STAMP): pyproject.toml
	@echo "installing cnnlab and its dependencies into $(VENV) (first time: about 2 minutes)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@set -o pipefail; $(PIP) install --quiet --upgrade pip $(PIP_FILTER)
	@set -o pipefail; $(PIP) install --quiet --no-compile -e '.[dev,sweep,track,export]' $(PIP_FILTER)
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install cnnlab with its dev tools and sweep launchers (idempotent)

run: $(STAMP) ## Train the default experiment (AlexNet on the embedded digits, CPU ok)
	$(BIN)/python -m cnnlab.run $(ARGS)

# `make test` is the suite CI runs (everything but the tests marked slow: 224x224 models,
# big MogaNets, subprocess-heavy resume/DDP/sweep checks); `make test-all` adds those.
# Two pytest workers (pytest-xdist), one torch thread each: most tests are single-threaded
# start-up (a subprocess importing torch and composing the config), so two cores run them
# side by side. --dist worksteal balances them test by test (a file's tests start on one worker,
# so its module fixtures are mostly built once); --dist loadfile left one worker idle for minutes.
TEST_JOBS ?= 2
test: $(STAMP) ## Run the test suite (without the slow marks; what CI runs; TEST_JOBS=1 for one worker)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist worksteal -m "not slow" $(PYTEST_ARGS)

test-all: $(STAMP) ## Run every test, the slow ones included (~15 min on 2 cores)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist worksteal $(PYTEST_ARGS)

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .

# `make sweep` is the quick comparison preset (conf/experiment/sweep_zoo.yaml: each
# split capped at 512 images, 5 epochs of batch 32 = 80 SGD steps; 591 s measured). Asking for another dataset or an epoch count
# is a scale-up, so it also lifts the cap (dataset.limit=null).
SWEEP_SCALE = $(if $(or $(EPOCHS),$(filter-out digits,$(DATASET))),dataset.limit=null)
sweep: $(STAMP) ## Compare alexnet/resnet18/googlenet/mobilenet_v3/moganet_xtiny (~10 min CPU); DATASET=cifar10 EPOCHS=30 scales up
	$(BIN)/python -m cnnlab.run -m experiment=sweep_zoo $(if $(filter-out digits,$(DATASET)),dataset=$(DATASET)) $(SWEEP_SCALE) $(if $(EPOCHS),trainer.epochs=$(EPOCHS)) $(ARGS)

bench: $(STAMP) ## Loader, loop and ceiling benchmarks -> docs/benchmarks.{json,md} (BENCH_ARGS="--quick", "--device cuda ...")
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

soak: $(STAMP) ## 20 x (kill -9 a tiny run at a random moment, auto-resume): must end bit-identical (~10 min CPU; SOAK_ARGS="--trials 5")
	$(BIN)/python scripts/soak.py $(SOAK_ARGS)

# A benchmark, not a test: one timm model per family and every torchvision model, one
# train step each at 32x32 (small_input) and at the native size (scripts/model_coverage.py).
coverage: $(STAMP) ## Which timm/torchvision models train -> docs/model_coverage.md (25-40 min CPU; COVERAGE_ARGS="--families resnet,vgg --torchvision none")
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python scripts/model_coverage.py $(COVERAGE_ARGS)

# Every conf/model entry exported to ONNX and TorchScript, each with the parity check (docs/export.md).
export-coverage: $(STAMP) ## Which conf/model entries export (ONNX, TorchScript) with parity -> docs/export.md's table
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python scripts/export_coverage.py --out docs/export.md $(EXPORT_COVERAGE_ARGS)

# torchrun, 2 processes x 1 thread, gloo: one DDP run, one run folder (docs/distributed.md).
ddp-smoke: $(STAMP) ## Train the default experiment with DDP on 2 CPU processes (torchrun, gloo); NPROC=4 for more
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m torch.distributed.run --standalone --nproc_per_node=$(or $(NPROC),2) -m cnnlab.run device=cpu trainer.progress=log $(ARGS)

# The GPU check (docs/gpu.md). gpu-wheels, here with network: the wheels of what a GPU machine
# without network may lack (hydra-core, omegaconf, ...), for its Python 3.12, into .gpu-wheels/.
# gpu-check has no $(STAMP) on purpose: a GPU machine may have no network to build .venv; the
# script takes .venv/bin/python when there is one, else python3, and installs what it lacks.
gpu-wheels: $(STAMP) ## Download the wheels a GPU machine without network lacks into .gpu-wheels/ (~3 MB)
	PYTHON=$(BIN)/python bash scripts/gpu_check.sh --wheels

gpu-check: ## On a GPU: the GPU tests, benchmarks and default run in <= 8 min -> gpu_report/ (GPU_CHECK_ARGS="--dry-run")
	bash scripts/gpu_check.sh $(GPU_CHECK_ARGS)

tensorboard: $(STAMP) ## TensorBoard over every run in outputs/
	$(BIN)/tensorboard --logdir outputs --host 127.0.0.1

# The store tracker=mlflow writes by default (conf/tracker/mlflow.yaml); artifacts beside it.
mlflow: $(STAMP) ## MLflow's UI over outputs/mlflow.db (runs of tracker=mlflow) on 127.0.0.1:5000
	$(BIN)/mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db --host 127.0.0.1 --port $(or $(PORT),5000)

clean: ## Remove run outputs, caches and the virtualenv (not data/)
	rm -rf $(VENV) outputs/2* outputs/multirun .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
