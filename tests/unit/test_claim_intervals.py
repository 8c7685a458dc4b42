"""The claims table's intervals: paired resampling of inputs, and `inconclusive` where an interval straddles
the verdict's line."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.report.claim_intervals import lowest_retention_interval, worst_cut_interval
from bench.report.claims import merge_interval_verdict, rho_claim


def _merges(merged_trap: list[float], merged_none: float = 0.6, base: float = 0.1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """none's and the defense's cells on one input per value (seed, task)."""
    inputs = [{"seed": i % 2, "task": f"t{i}", "members": "m", "base_acc": base} for i in range(len(merged_trap))]
    none = pd.DataFrame([{**row, "merged_acc": merged_none} for row in inputs])
    trap = pd.DataFrame([{**row, "merged_acc": value} for row, value in zip(inputs, merged_trap, strict=True)])
    return none, trap


def test_a_cut_every_input_agrees_on_is_conclusive() -> None:
    low, high = worst_cut_interval([_merges([0.1] * 6)])
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)
    assert merge_interval_verdict("partly", (low, high), (0.9, 1.0)) == "partly"
    assert merge_interval_verdict("reproduced", (low, high), (0.0, 0.2)) == "reproduced"


def test_a_cut_that_holds_on_half_the_inputs_is_inconclusive() -> None:
    cut = worst_cut_interval([_merges([0.1, 0.6, 0.1, 0.6, 0.1, 0.6])])  # point: half of the margin
    assert cut[0] < 0.5 < cut[1]
    assert merge_interval_verdict("partly", cut, (math.nan, math.nan)) == "inconclusive"


def test_pairing_keeps_the_worst_method_on_the_same_inputs() -> None:
    """Two methods cut on complementary inputs: each alone averages half, and the worst of the two never
    exceeds either in any resample."""
    first, second = _merges([0.1, 0.6] * 3), _merges([0.6, 0.1] * 3)
    worst = worst_cut_interval([first, second])
    assert worst[1] <= worst_cut_interval([first])[1] + 1e-12
    assert worst[0] <= 0.5


def test_a_holding_cut_with_an_adaptive_success_straddling_half_is_inconclusive() -> None:
    assert merge_interval_verdict("reproduced", (0.9, 1.0), (0.3, 0.7)) == "inconclusive"
    assert merge_interval_verdict("partly", (0.9, 1.0), (0.6, 0.9)) == "partly"


def test_one_seed_gives_retention_a_point_interval() -> None:
    frame = pd.DataFrame({"seed": [0, 0, 0], "task": ["a", "b", "c"], "utility_retention": [0.9, 0.9, 0.9]})
    assert lowest_retention_interval([frame]) == pytest.approx((0.9, 0.9))
    seeds = pd.DataFrame({"seed": [0, 1, 2, 3], "utility_retention": [0.80, 0.99, 0.85, 1.0]})
    low, high = lowest_retention_interval([seeds])
    assert 0.8 <= low < 0.9 < high <= 1.0


def test_rho_is_inconclusive_when_the_extremes_overlap() -> None:
    settings = pd.DataFrame({"defense": ["a", "b"], "rho": [0.5, 0.9], "complement": ["frozen", "frozen"]})
    success = {"a": 0.4, "b": 0.9}
    assert rho_claim(settings, success, "llama", {"a": (0.1, 0.6), "b": (0.7, 1.0)}).verdict == "reproduced"
    overlapping = rho_claim(settings, success, "llama", {"a": (0.1, 0.8), "b": (0.5, 1.0)})
    assert overlapping.verdict == "inconclusive" and "overlap" in overlapping.reason
    assert rho_claim(settings, success, "llama").verdict == "reproduced"  # no intervals: the point verdict


def test_a_small_rho_span_is_inconclusive_while_the_intervals_leave_room_for_the_line() -> None:
    """`not` needs the intervals too: the two-seed paper run's projected settings (0.92 [0.82, 1.00] at
    ρ 0.5, 0.89 [0.82, 0.97] at ρ 0.9) span 0.02 at their means but admit 0.18."""
    settings = pd.DataFrame({"defense": ["a", "b"], "rho": [0.5, 0.9], "complement": ["projected", "projected"]})
    success = {"a": 0.92, "b": 0.89}
    wide = rho_claim(settings, success, "llama", {"a": (0.82, 1.00), "b": (0.82, 0.97)})
    assert wide.verdict == "inconclusive" and "room for 0.18" in wide.reason
    narrow = rho_claim(settings, success, "llama", {"a": (0.90, 0.94), "b": (0.87, 0.91)})
    assert narrow.verdict == "not" and "room" not in narrow.reason  # 0.94 − 0.87 = 0.07 < 0.1
    assert rho_claim(settings, success, "llama").verdict == "not"  # no intervals: the point verdict
