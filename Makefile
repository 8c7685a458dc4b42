# lockbench: `make bench` runs the main job, `make test` the test suite. Both set up .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lockbench-installed
# A CPU build of torch 2.13.0 lies on this machine's disk. Elsewhere pick a CUDA build, e.g.
#   make TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" bench
TORCH  ?= torch==2.13.0
PRESET ?= default

export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: bench test test-fast lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The zoo must pass DESIGN §6's validity rule before any number is published: validate stops the job
# (exit 1, naming what failed) when it does not.
bench: $(STAMP)
	$(BIN)/lockbench validate --preset $(PRESET)
	$(BIN)/lockbench run --preset $(PRESET) --executor ray --out runs/$(PRESET)
	$(BIN)/lockbench leaderboard publish runs/$(PRESET)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf .lockbench .pytest_cache .ruff_cache
