"""`make perf`'s fresh-clone figures, with the clone and the `make` runs stubbed: the figures' arithmetic,
targets and verdicts (the real figures take hours and are printed by `make perf`, not asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.perf import clone_figures
from bench.perf.report import format_value, verdict


def test_fresh_clone_figures_compare_with_their_targets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    minutes = {"bench": iter([60.0, 0.9]), "test": iter([14.0])}
    monkeypatch.setattr(clone_figures, "fresh_clone", lambda work: (work / "clone", "0123456789abcdef"))
    monkeypatch.setattr(clone_figures, "timed_make", lambda clone, target, log: (next(minutes[target]), 0))
    cold, cache, tests = clone_figures.figures_fresh_clone(tmp_path)
    assert (cold.key, cold.value, cold.passed, cold.target) == ("bench_cold", 60.0, False, "<= 20 min")
    assert (cache.key, cache.passed) == ("cache_default", True) and cache.value == pytest.approx(1.5)
    assert (tests.key, tests.value, tests.passed) == ("make_test", 14.0, True)
    assert [format_value(f) for f in (cold, cache, tests)] == ["60.0 min", "1.50%", "14.0 min"]
    assert [verdict(f) for f in (cold, cache, tests)] == ["MISS", "PASS", "PASS"]
