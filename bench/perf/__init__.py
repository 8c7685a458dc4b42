"""`make perf`: the performance figures of issue 8, each measured side by side in one run against its target.

    python -m bench.perf                    # every figure on `smoke`
    python -m bench.perf --full             # cache figure on `default` (its cold run costs 20+ minutes)
    python -m bench.perf --preset micro --only merge,lmeval

Figures (the ratio, then the target):
- cache:  a fully cached re-run over the cold run from an empty storage root, same command (<= 2 %)
- ray:    serial wall time over Ray with 2 one-CPU workers, same zoo, every stage after it fresh (>= 1.7x)
- merge:  `mergekit-yaml` on disk over mergekit's in-memory merge (what attacks use), same merge (>= 5x)
- lmeval: lm-eval scoring (`bench.evaluate.score`) over a raw batched forward pass computing the same
          log-likelihoods and greedy checks (<= 1.5x)
- trap2:  one Trap² training step over one plain fine-tuning step (<= 2.2x; "not available" without
          `defenses/trap2.py`)
- flops:  training FLOP/s over this CPU's measured fp32 matmul FLOP/s (reported, no target)
- bench_cold:    `make bench` on a fresh clone of HEAD, from `git clone` to the leaderboard (<= 20 min)
- cache_default: the same `make bench` again, fully cached, over the cold one (<= 2 %)
- make_test:     `make test` on that clone (<= 15 min)

The three fresh-clone figures take hours on 2 cores (the cold `default` run alone is over an hour today);
`--only cache,ray,merge,lmeval,trap2,flops` leaves them out.

Every run of the harness is a separate process (`python -m bench.perf run-once`), timed from outside, so
import and start-up costs count as a user sees them. Ray state (token, temp dir) is kept in a private
temporary HOME so the benchmark never touches `~/.ray`. Writes `perf/REPORT.md` and `perf/report.json`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
STAGE_DIRS = ("releases", "private", "cells", "scores")
FIGURES = ("cache", "ray", "merge", "lmeval", "trap2", "flops", "bench_cold", "cache_default", "make_test")
CLONE_FIGURES = ("bench_cold", "cache_default", "make_test")


@dataclass
class Figure:
    """One line of the report: a measured ratio, its target and how it was measured."""

    key: str
    title: str
    preset: str
    value: float | None = None
    unit: str = "x"
    target: str = ""
    passed: bool | None = None
    status: str = "measured"  # measured | not available | error
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def check(self, value: float, op: str, bound: float) -> None:
        self.value = value
        self.target = f"{op} {bound:g}{self.unit if self.unit != 'x' else 'x'}"
        self.passed = value <= bound if op == "<=" else value >= bound

