# The two set-up commands of the README. Each bootstraps .venv when missing (or when pyproject.toml changed)
# and is quick afterwards.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: these wheels are on the CI machines' disk (a bare "torch" would fetch a newer CUDA build).
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	# dev: pytest + ruff; engines: mmsegmentation 1.2.2 (engine=mmseg of the segmentation runner), so CI runs its tests.
	$(PY) -m pip install -q -e '.[dev,engines]'
	touch $(STAMP)

## make demo: build the embedded mini-datasets, pretrain the tiny BYOL checkpoint, run every protocol, print tables.
demo: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" bash scripts/run_all_benchmarks.sh

## make test: ruff + the whole test suite (what CI runs): one pytest-xdist worker per core (on 2 cores: 382 s; a
## third worker, to fill the time workers wait on torchrun and SLURM jobs, took 396 s), each file's tests on one
## worker (they share module-scoped runs), the longest files first (tests/conftest.py: LONGEST_FIRST), one torch
## thread per worker, the 25 slowest listed.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n auto --dist loadfile --no-loadscope-reorder --durations=25

lint: $(STAMP)
	$(PY) -m ruff check .
