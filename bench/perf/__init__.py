"""`make perf`: the performance figures of issue 8, each measured against its target and saved the moment
it is measured, so that a run stopped halfway loses nothing already measured.

    python -m bench.perf                        # the quick figures on `smoke` (about 9 minutes on 2 cores)
    python -m bench.perf --clone                # the three fresh-clone figures (hours on 2 cores)
    python -m bench.perf --only bench_cold      # one figure (or a comma-separated few)
    python -m bench.perf --all                  # quick and fresh-clone figures
    python -m bench.perf --full                 # cache figure on `default` (its cold run costs 20+ minutes)
    python -m bench.perf --budget make_test=60  # a fresh-clone figure's wall-time budget, in minutes
    python -m bench.perf --run runs/other       # the run directory the `cost` figure reads
    python -m bench.perf --render               # rewrite perf/REPORT.md from perf/report.json, measure nothing
    make perf PERF_ARGS=--clone                 # the same through make

Quick figures (the ratio, then the target):
- cost:   worker-seconds by kind of work, from a finished run directory's cells.csv (reported, no target;
          "not available" without the run directory, `runs/default` unless `--run`)
- cache:  a fully cached re-run over the cold run from an empty storage root, same command (<= 2 %)
- ray:    serial wall time over Ray with 2 one-CPU workers, same zoo, every stage after it fresh (>= 1.7x)
- merge:  `mergekit-yaml` on disk over mergekit's in-memory merge (what attacks use), same merge (>= 5x)
- lmeval: lm-eval scoring (`bench.toolkit.evaluate.score`) over a raw batched forward pass computing the same
          log-likelihoods and greedy checks (<= 1.5x)
- trap2:  one Trap² training step over one plain fine-tuning step (<= 2.2x; "not available" without
          `defenses/trap2.py`)
- flops:  training FLOP/s over this CPU's measured fp32 matmul FLOP/s (reported, no target)
Fresh-clone figures (opt-in: `--clone`, `--all` or `--only`), on a clone of HEAD (uncommitted changes are
not in it; the report says whether the working tree had any):
- bench_cold:    `make bench` on a fresh clone of HEAD, from `git clone` to the leaderboard (<= 20 min)
- cache_default: the same `make bench` again, fully cached, over the cold one (<= 2 %; needs bench_cold
                 measured on the same clone first)
- make_test:     `make test` on that clone (<= 15 min)
Each fresh-clone figure has a wall-time budget (bench_cold 40, cache_default 10, make_test 40 minutes;
`--budget KEY=MINUTES`): past it, its `make` process group is killed and the figure is recorded as
"over budget" (value = the budget, a miss) rather than hanging.

Every figure is merged into `perf/report.json` and `perf/REPORT.md` (written atomically) as soon as it is
measured: it replaces the same figure of an earlier run, the others keep their own date and commit. Ctrl-C
or SIGTERM stops the run and the figure in progress (its child processes are stopped too); SIGKILL leaves a
fresh-clone figure's `make` running in its own process group. Every run of the harness is a separate process
(`python -m bench.perf run-once`), timed from outside, so import and start-up costs count as a user sees them.
Ray state (token, temp dir) is kept in a private temporary HOME so the benchmark never touches `~/.ray`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
STAGE_DIRS = ("releases", "private", "cells", "scores")
QUICK_FIGURES = ("cost", "cache", "ray", "merge", "lmeval", "trap2", "flops")
CLONE_FIGURES = ("bench_cold", "cache_default", "make_test")
FIGURES = (*QUICK_FIGURES, *CLONE_FIGURES)
#: Rough minutes each figure takes on 2 cores (`smoke`; fresh-clone ones at most their budget), for the
#: progress line when no earlier run of the figure recorded its own duration.
ESTIMATE_MIN: dict[str, float] = {"cost": 0.1, "cache": 14.0, "ray": 20.0, "merge": 0.5, "lmeval": 1.0,
                                  "trap2": 3.0, "flops": 0.5, "bench_cold": 70.0, "cache_default": 1.0,
                                  "make_test": 30.0}
#: Wall-time budget of each fresh-clone figure, minutes (`--budget KEY=MINUTES`).
BUDGET_MIN: dict[str, float] = {"bench_cold": 40.0, "cache_default": 10.0, "make_test": 40.0}


@dataclass
class Figure:
    """One line of the report: a measured ratio, its target, how and when it was measured."""

    key: str
    title: str
    preset: str
    value: float | None = None
    unit: str = "x"
    target: str = ""
    passed: bool | None = None
    status: str = "measured"  # measured | over budget | not available | error
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    table: list[dict[str, Any]] = field(default_factory=list)  # rows rendered as a markdown table
    measured_at: str = ""  # ISO date-time the figure was measured
    commit: str = ""  # short HEAD commit of the checkout at that time
    tree: str = ""  # "clean" or "dirty (N paths)": whether the working tree had uncommitted changes
    context: dict[str, Any] = field(default_factory=dict)  # machine, load, command line at that time
    last_attempt: dict[str, Any] = field(default_factory=dict)  # a later failed try that did not replace it

    def check(self, value: float, op: str, bound: float) -> None:
        self.value = value
        self.target = f"{op} {bound:g}{self.unit if self.unit != 'x' else 'x'}"
        self.passed = value <= bound if op == "<=" else value >= bound

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Figure:
        """A figure read back from report.json (unknown keys of other versions ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
