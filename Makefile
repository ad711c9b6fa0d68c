# Compression Lab. `make help` lists the targets.
PY      ?= .venv/bin/python
ARGS    ?=
.DEFAULT_GOAL := help

SWEEP   ?= configs/sweeps/grokking.yaml
RUN     ?=
WORKERS ?= 2

.PHONY: help install test test-full lint addition addition-uniform grokking grokking-arrivals sweep report dashboard clean

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}'

install: ## create .venv: torch pinned by constraints.txt first (the CPU wheel), then the lab with its dev extra
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'

test: ## fast test suite (excludes tests marked slow), in WORKERS processes (pytest-xdist; CI has 2 cores)
	$(PY) -m pytest -q -m "not slow" -n $(WORKERS)

test-full: ## every test, the slow ones included
	$(PY) -m pytest -q -n $(WORKERS)

lint: ## ruff (CI runs it before the tests)
	$(PY) -m ruff check .

addition: ## train 8-digit addition until it learns the rule: 99% held-out and on every carry-chain length (ARGS='key=value ...')
	$(PY) -m lab train configs/addition.yaml $(ARGS)

addition-uniform: ## 8-digit addition on the reference's uniform stream (floor 52.85) until 99% held-out exact match
	$(PY) -m lab train configs/addition-uniform.yaml $(ARGS)

grokking: ## a+b mod 97 at train fraction 0.3 until it groks (ARGS='key=value ...')
	$(PY) -m lab train configs/grokking.yaml $(ARGS)

grokking-arrivals: ## a+b mod 97 whose train rows arrive over 2,000 steps: grokking inside the code (ARGS='key=value ...')
	$(PY) -m lab train configs/grokking-arrivals.yaml $(ARGS)

sweep: ## run a W&B sweep file locally, one run at a time, then report it (SWEEP=configs/sweeps/x.yaml)
	$(PY) -m lab sweep $(SWEEP) $(ARGS)

report: ## tables and figures for a run or a sweep directory (RUN=runs/...)
	$(PY) -m lab report $(RUN)

dashboard: ## build the wandb workspace (offline: validate and describe; ARGS=--save to create it online)
	$(PY) -m lab dashboard $(ARGS)

clean: ## remove caches (keeps runs/ and .venv)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
