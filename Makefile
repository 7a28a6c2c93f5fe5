# mamlrun — `make help` lists the targets. Every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= 3.11
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
ARGS ?=
QUICK ?=
PYTEST_ARGS ?= -n 2

.PHONY: help install install-l2l run test test-slow lint format bench bench-ddp reproduce-sinusoid reproduce-table1 results-table1 reproduce-algorithms results-algorithms reproduce-rl-navigation reproduce-rl-locomotion results-rl reproduce-uncertainty reproduce-bmaml reproduce-mamlpp-ablation clean

help:  ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

.tools/bin/uv:
	python3 -m venv .tools && .tools/bin/pip install -q uv

$(VENV)/.installed: pyproject.toml requirements.lock | $(UV)
	$(UV) venv -q --allow-existing --python $(PYTHON) $(VENV)
	$(UV) pip sync -q --python $(BIN)/python requirements.lock
	$(UV) pip install -q --python $(BIN)/python --no-deps -e .
	touch $@

install: $(VENV)/.installed  ## create .venv from the hash-pinned requirements.lock (uv; cached after the first time)

$(VENV)/.l2l: scripts/install_learn2learn.sh $(VENV)/.installed
	scripts/install_learn2learn.sh
	touch $@

install-l2l: $(VENV)/.l2l  ## build learn2learn 0.2.0 for this Python (parity oracle, algorithm=maml_l2l etc., bench peer)

run: install  ## the default experiment (sinusoid MAML, about a minute on a laptop CPU); extra overrides in ARGS=
	$(BIN)/mamlrun $(ARGS)

test: install install-l2l  ## the test suite (what CI runs), learn2learn parity included
	$(BIN)/pytest $(PYTEST_ARGS)

test-slow: install  ## the long learning tests
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

lint: install  ## ruff lint and format check
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: install  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

bench: install  ## engine speed and peak memory against a per-task autograd loop (reports, never fails)
	$(BIN)/python -m mamlrun.bench $(ARGS)

bench-ddp: install  ## data-parallel scaling: 1 vs 2 processes on the Omniglot step (efficiency, all-reduce share)
	$(BIN)/python -m mamlrun.bench_ddp $(ARGS)

SUFFIX := $(if $(QUICK),_quick)
# QUICK=1: debug=quick (conf/debug/quick.yaml), every stage in seconds, into *_quick folders.
DEBUG := $(if $(QUICK),debug=quick)

reproduce-sinusoid: install  ## the paper's sinusoid comparison (MAML vs pretrain, K=5,10,20) and its table (QUICK=1: plumbing only)
	rm -rf outputs/multirun/sinusoid$(SUFFIX)
	$(BIN)/mamlrun -cd sweeps -cn sinusoid hydra.sweep.dir=outputs/multirun/sinusoid$(SUFFIX) $(DEBUG) $(ARGS)
	$(BIN)/python -m mamlrun.report outputs/multirun/sinusoid$(SUFFIX) --table sinusoid --out outputs/reports$(SUFFIX)

CELLS ?=
ALGORITHMS ?=

reproduce-table1: install  ## the paper's Table 1 on the data present, resumable, into results/table1 (CELLS=omniglot_5w1s ALGORITHMS=maml: a subset; QUICK=1: plumbing only)
	$(BIN)/python -m mamlrun.reproduce table1 $(if $(QUICK),--quick) $(if $(CELLS),--cells $(CELLS)) $(if $(ALGORITHMS),--algorithms $(ALGORITHMS)) $(if $(RANKS),--ranks $(RANKS)) $(ARGS)

results-table1: install  ## rebuild results/table1 from the runs in outputs/table1, testing unfinished runs from their best checkpoint
	$(BIN)/python -m mamlrun.results table1 --evaluate $(ARGS)

reproduce-algorithms: install  ## MAML++ and ANIL on the cells their papers report, resumable, into results/algorithms (CELLS=, ALGORITHMS=: a subset)
	$(BIN)/python -m mamlrun.reproduce algorithms $(if $(CELLS),--cells $(CELLS)) $(if $(ALGORITHMS),--algorithms $(ALGORITHMS)) $(if $(RANKS),--ranks $(RANKS)) $(ARGS)

results-algorithms: install  ## rebuild results/algorithms (MAML++, ANIL beside their papers) from outputs/algorithms
	$(BIN)/python -m mamlrun.results algorithms --evaluate $(ARGS)

reproduce-uncertainty: install  ## PLATIPUS's and LEO's ambiguous regression: MAML, EMAML, BMAML, PLATIPUS, LEO, pretrain (MSE, NLL, coverage, sampled functions) into results/uncertainty (QUICK=1: plumbing only)
	rm -rf outputs/multirun/uncertainty$(SUFFIX)
	$(BIN)/mamlrun -cd sweeps -cn uncertainty hydra.sweep.dir=outputs/multirun/uncertainty$(SUFFIX) $(DEBUG) $(ARGS)
	$(BIN)/python -m mamlrun.report outputs/multirun/uncertainty$(SUFFIX) --table uncertainty --out $(if $(QUICK),outputs/reports_quick,results/uncertainty)

# BMAML with its code's posterior (summed Gaussian likelihood, learned precisions) and its code's inner step 0.001.
BMAML_BAYESIAN = algorithm=bmaml algorithm.posterior=bayesian inner_lr=0.001

reproduce-bmaml: install  ## BMAML's sinusoid regression: EMAML against BMAML (both posteriors), K = 5 and 10, into results/uncertainty (QUICK=1: plumbing only)
	rm -rf outputs/multirun/bmaml_sinusoid$(SUFFIX)
	$(BIN)/mamlrun -cd sweeps -cn bmaml_sinusoid hydra.sweep.dir=outputs/multirun/bmaml_sinusoid$(SUFFIX) $(DEBUG) $(ARGS)
	$(BIN)/mamlrun -cd sweeps -cn bmaml_sinusoid $(BMAML_BAYESIAN) hydra.sweep.dir=outputs/multirun/bmaml_sinusoid$(SUFFIX)/bayesian $(DEBUG) $(ARGS)
	$(BIN)/python -m mamlrun.report outputs/multirun/bmaml_sinusoid$(SUFFIX) --table bmaml_sinusoid --out $(if $(QUICK),outputs/reports_quick,results/uncertainty)

reproduce-mamlpp-ablation: install  ## MAML++'s ablation on Omniglot 20-way (MAML, each fix, MAML++), resumable, into results/mamlpp_ablation (a GPU job; QUICK=1: plumbing only)
	$(if $(QUICK),rm -rf outputs/multirun/mamlpp_ablation_quick)
	$(BIN)/mamlrun -cd sweeps -cn mamlpp_ablation hydra.sweep.dir=outputs/multirun/mamlpp_ablation$(SUFFIX) $(DEBUG) $(ARGS)
	$(BIN)/python -m mamlrun.report outputs/multirun/mamlpp_ablation$(SUFFIX) --table mamlpp_ablation --out $(if $(QUICK),outputs/reports_quick,results/mamlpp_ablation)

reproduce-rl-navigation: install  ## the paper's 2D navigation returns after 0-3 steps (MAML, pretrained, random), trajectory plots and provenance into results/rl_navigation2d (QUICK=1: plumbing only)
	rm -rf outputs/multirun/rl_navigation2d$(SUFFIX)
	$(BIN)/mamlrun -cd sweeps -cn rl_navigation2d hydra.sweep.dir=outputs/multirun/rl_navigation2d$(SUFFIX) $(DEBUG) $(ARGS)
	$(BIN)/python -m mamlrun.report outputs/multirun/rl_navigation2d$(SUFFIX) --table rl_navigation2d --out $(if $(QUICK),outputs/reports_quick,results/rl_navigation2d)
	$(if $(QUICK),,$(BIN)/python -m mamlrun.results rl --runs outputs/multirun/rl_navigation2d --out results/rl_navigation2d)

reproduce-rl-locomotion: install  ## half-cheetah forward/backward: MAML, pretrained, random, resumable (run again to continue), into results/rl (RANKS=2: two processes; CELLS=rl_ant_dir etc.)
	$(BIN)/python -m mamlrun.reproduce rl --cells $(or $(CELLS),rl_halfcheetah_dir) $(if $(QUICK),--quick) $(if $(ALGORITHMS),--algorithms $(ALGORITHMS)) $(if $(RANKS),--ranks $(RANKS)) $(ARGS)

results-rl: install  ## rebuild results/rl from the runs in outputs/rl, testing unfinished runs from their last checkpoint
	$(BIN)/python -m mamlrun.results rl --evaluate $(ARGS)

clean:  ## remove outputs and caches (keeps .venv)
	rm -rf outputs .pytest_cache .ruff_cache
