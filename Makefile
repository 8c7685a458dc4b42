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

.PHONY: bench test test-fast lint setup clean browser ci-baseline

setup: $(STAMP) browser

# Headless Chromium renders leaderboard/index.html in tests/integration/test_html.py: Debian's package, installed only
# when missing (apt-get as root, else sudo).
browser:
	@command -v chromium >/dev/null 2>&1 || { export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends chromium || \
	  { apt-get update -q && apt-get install -y -q --no-install-recommends chromium; } || \
	  { sudo -n apt-get update -q && sudo -n apt-get install -y -q --no-install-recommends chromium; } || \
	  { echo "could not install chromium (tests/integration/test_html.py needs it; LOCKBENCH_NO_BROWSER=1 skips it)" >&2; exit 1; }; }

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# no pip byte-compile (one core, about 40 s of a 70 s set-up): modules compile on first import into
	@# .venv/pycache, for every process of the venv (bench/runtime/bytecode.py)
	$(BIN)/python -m pip install -q --no-compile $(TORCH)
	$(BIN)/python -m pip install -q --no-compile -e '.[dev]'
	$(BIN)/python -m bench.runtime.bytecode
	touch $(STAMP)

# The zoo must pass DESIGN §6's validity rule before any number is published: `run --validate` validates
# first and stops the job (exit 1, naming what failed, nothing run) when it does not; validation and the
# run share one Ray cluster, and the run reuses validation's cells against none.
bench: $(STAMP)
	$(BIN)/lockbench run --validate --preset $(PRESET) --executor ray --out runs/$(PRESET)
	$(BIN)/lockbench leaderboard publish runs/$(PRESET)

# After the tests, the CI gate: re-run `smoke` (on Ray's two workers: serial and Ray runs give the same numbers) and fail with a table when a defense's attack success rose
# or its utility fell against the committed baseline, or attacks stopped working against `none`.
# After an intended change of the numbers, regenerate the baseline with `make ci-baseline` and commit it.
REGRESS_TOLERANCE ?= 0.05
# The tests' ci zoo is trained into the same storage root the gate reads, so it is trained once.
# PYTEST_ARGS passes options through, e.g. `make test PYTEST_ARGS=--durations=30` lists the slowest tests.
# Every computation runs on one thread (bench/runtime/threads.py), so the suite runs in TEST_WORKERS pytest-xdist
# processes, a test file per process at a time (module fixtures are built once); TEST_WORKERS=0 runs serially.
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile
test: $(STAMP) browser
	LOCKBENCH_TEST_CI_ROOT=$(CURDIR)/.lockbench $(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)
	$(BIN)/lockbench regress --preset smoke --executor ray --baseline leaderboard/ci-baseline.csv --tolerance $(REGRESS_TOLERANCE) --out runs/regress-smoke

ci-baseline: $(STAMP)
	$(BIN)/lockbench regress --preset smoke --out runs/regress-smoke --write-baseline leaderboard/ci-baseline.csv

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS)

# Performance figures against their targets -> perf/REPORT.md and perf/report.json, each merged in the moment
# it is measured (an interrupted run keeps what it measured; figures not re-measured keep their own date and
# commit). By default the quick figures (cost, cache, ray, merge, lmeval, trap2, flops on `smoke`: about
# 9 minutes, 557 s measured at 219c5ad on 2 cores). The fresh-clone figures (cold `make bench`, the same again cached, `make test` on a clone of
# HEAD: about 40 minutes on 2 cores, each killed past its budget) are opt-in: PERF_ARGS=--clone, --all, or
# PERF_ARGS="--only bench_cold" one at a time; --budget make_test=60 changes a budget. See
# `python -m bench.perf --help`.
.PHONY: perf
perf: $(STAMP)
	$(BIN)/python -m bench.perf $(PERF_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf .lockbench .pytest_cache .ruff_cache
