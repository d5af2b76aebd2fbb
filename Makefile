# One entry point for people and CI. `make demo` and `make test` set up the environment themselves.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON_VERSION ?= 3.11
VENV ?= .venv
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
BIN := $(VENV)/bin
DEMO_DIR ?= .demo
DEMO_PROFILE ?= tiny
IMAGE ?= sycorec:latest
SIF ?= sycorec.sif
CLUSTER ?= local
MAX_PARALLEL ?= 1
# Site sbatch options for every SLURM job (`make reproduce-post1 CLUSTER=slurm SBATCH_OPTIONS="--account=x --qos=y"`).
# They reach `sycorec` through its environment, never through the recipe's shell.
SBATCH_OPTIONS ?= $(SYCOREC_SBATCH_OPTIONS)
export SYCOREC_SBATCH_OPTIONS := $(SBATCH_OPTIONS)
GIT_SHA := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)

.PHONY: help setup test lint demo data image sif smoke-gpu reproduce-post1 reproduce-post2 reproduce-post3 reproduce-post4 reproduce-all clean-demo

help:  ## List targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(BIN)/.stamp: requirements/cluster.lock requirements/dev.lock pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
	$(UV) venv -q --allow-existing --python $(PYTHON_VERSION) $(VENV)
	$(UV) pip install -q --python $(BIN)/python --compile-bytecode --require-hashes -r requirements/cluster.lock -r requirements/dev.lock
	$(UV) pip install -q --python $(BIN)/python --no-deps -e .
	@touch $@

setup: $(BIN)/.stamp  ## Create .venv from the hash-locked requirements (re-runs only when a lock changes)

test: setup  ## Run the test suite
	$(BIN)/python -m pytest -q

lint: setup  ## ruff check + format check + import contracts (lint-imports)
	$(BIN)/ruff check code tests bench
	$(BIN)/ruff format --check code tests bench
	$(BIN)/lint-imports

demo: setup  ## Whole DAG on CPU with the tiny profile (scratch copy in $(DEMO_DIR))
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/sycorec demo --profile $(DEMO_PROFILE) --dir $(DEMO_DIR)

clean-demo:  ## Remove the demo's scratch copy
	rm -rf $(DEMO_DIR)

data: setup  ## Fetch and verify the pinned inputs into data/raw and record them in data.dvc
	$(BIN)/sycorec data fetch
	$(BIN)/sycorec data verify
	$(BIN)/dvc commit -f data.dvc

image:  ## Build the Docker image (needs a Docker daemon)
	docker build --build-arg GIT_SHA=$(GIT_SHA) -t $(IMAGE) .

sif:  ## Build the Apptainer image (needs apptainer); the .sha256 beside it spares each job hashing the image
	apptainer build --build-arg GIT_SHA=$(GIT_SHA) $(SIF) apptainer.def
	sha256sum $(SIF) > $(SIF).sha256
	echo $(GIT_SHA) > $(SIF).commit  # the preflight of `sycorec slurm submit` compares it with HEAD

smoke-gpu: setup  ## GPU check (one H100, no network): tiny train → generate → probe on CUDA in bf16 + 8B LoRA step MFU
	bench/gpu_smoke.sh

reproduce-post1 reproduce-post2 reproduce-post3 reproduce-post4: reproduce-post%: setup  ## Rebuild one post at full scale and diff it against the published numbers
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/sycorec reproduce --post $* --cluster $(CLUSTER) --max-parallel $(MAX_PARALLEL)

reproduce-all: setup  ## Every post
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/sycorec reproduce --post all --cluster $(CLUSTER) --max-parallel $(MAX_PARALLEL)
