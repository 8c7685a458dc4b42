"""The verdict pipeline of DESIGN §5 recomputed by hand: the attacker's pick on its own split, success against
`none`'s pick, void inputs, the aggregate and the paired bootstrap interval."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fakes import merge_row

from bench.report.leaderboard import write_run_outputs
from bench.results import ValidityRule, aggregate, read_csv, score_cells
from bench.results.examples import encode

CONTROL = '{"control": "release-free"}'


def _merge(defense: str, attack: str, seed: int, release: float, merged: float, member: float,
           val: tuple[float, float], **values: object) -> dict:
    """A merge cell whose attacker_val numbers are `val` (T_p, member) and whose release scores `release`."""
    row = merge_row(defense, attack, seed, release, merged, member, **values)
    row["val_acc_by_task"] = json.dumps({"add": val[0], "reverse": val[1]})
    row["val_standalone_by_task"] = json.dumps({"add": release, "reverse": 0.9})
    return row


def test_an_attack_weak_against_none_that_breaks_a_defense_now_counts() -> None:
    """`strong` keeps most against `none` and nothing against `lock`; `odd` is weak on `none` (it loses the
    other member there) but keeps everything against `lock`. Dropped as weak, it would let `lock` look
    unbroken; the attacker, choosing on attacker_val, picks it."""
    rows = []
    for seed in (0, 1):
        rows += [_merge("control", "strong", seed, 0.2, 0.2, 0.1, (0.2, 0.1), defense_config=CONTROL),
                 _merge("control", "odd", seed, 0.2, 0.2, 0.1, (0.2, 0.1), defense_config=CONTROL),
                 _merge("none", "strong", seed, 0.8, 0.7, 0.8, (0.7, 0.8)),     # joint min(0.83, 0.875)
                 _merge("none", "odd", seed, 0.8, 0.8, 0.2, (0.8, 0.2)),        # joint 0.125: weak on none
                 _merge("lock", "strong", seed, 0.8, 0.2, 0.1, (0.2, 0.1)),     # keeps nothing
                 _merge("lock", "odd", seed, 0.8, 0.75, 0.75, (0.75, 0.75))]    # keeps 0.81 jointly
    cells = score_cells(pd.DataFrame(rows), ValidityRule())
    odd = cells[(cells["attack"] == "odd") & (cells["defense"] == "lock")]
    assert odd["weak"].all(), "the configuration is weak on none by the per-configuration diagnostic"
    row = aggregate(cells).set_index("defense").loc["lock"]
    none_pick = min(0.5 / 0.6, 0.7 / 0.8)
    lock_pick = min(0.55 / 0.6, 0.65 / 0.8)
    assert row["attack_success"] == pytest.approx(lock_pick / none_pick)
    assert row["verdict"] == "broken" and row["n_inputs_broken"] == 2 and row["worst_attack"] == "odd"


def _bits(rng: np.random.Generator, n: int, p: float) -> list[int]:
    return [int(v) for v in rng.random(n) < p]


def _synthetic_with_examples(n: int = 12) -> pd.DataFrame:
    """Two seeds, `none` and `lock`, configurations `a` and `b`, per-example test values for every model."""
    rng = np.random.default_rng(7)
    base = {"add": _bits(rng, n, 0.2), "reverse": _bits(rng, n, 0.1)}
    expert = _bits(rng, n, 0.9)
    rows = []
    for seed in (0, 1):
        for defense, release_p, strength in (("control", 0.2, 0.0), ("none", 0.85, 0.8), ("lock", 0.85, 0.4)):
            release = _bits(rng, n, release_p) if defense != "control" else base["add"]
            for attack, val in (("a", 0.9), ("b", 0.3)):
                merged = {"add": _bits(rng, n, 0.2 + strength * (0.7 if attack == "a" else 0.9)),
                          "reverse": _bits(rng, n, 0.1 + strength)}
                examples = {"merged": {t: encode(v) for t, v in merged.items()},
                            "base": {t: encode(v) for t, v in base.items()},
                            "release": {"add": encode(release)}, "experts": {"reverse": encode(expert)}}
                row = merge_row(defense, attack, seed, float(np.mean(release)), float(np.mean(merged["add"])),
                                float(np.mean(merged["reverse"])), base_acc=float(np.mean(base["add"])),
                                base_acc_by_member=json.dumps({"reverse": float(np.mean(base["reverse"]))}),
                                expert_acc_by_member=json.dumps({"reverse": float(np.mean(expert))}),
                                members_expert_acc=float(np.mean(expert)), examples=json.dumps(examples),
                                defense_config=CONTROL if defense == "control" else "{}")
                # attacker_val prefers `a` everywhere, whatever the test says
                row["val_acc_by_task"] = json.dumps({"add": val, "reverse": val})
                rows.append(row)
    return pd.DataFrame(rows)


def _by_hand(cells: pd.DataFrame, rule: ValidityRule) -> tuple[float, float, float]:
    """The headline of `lock` and its interval, recomputed with loops from the published cells."""
    def row(defense: str, attack: str, seed: int) -> pd.Series:
        return cells[(cells["defense"] == defense) & (cells["attack"] == attack) & (cells["seed"] == seed)].iloc[0]

    def decoded(cell: pd.Series, role: str, task: str) -> np.ndarray:
        size, _, text = json.loads(cell["examples"])[role][task].partition(":")
        return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[: int(size)].astype(float)

    def joint(defense: str, seed: int, weights: dict[str, np.ndarray] | None) -> float:
        def acc(cell: pd.Series, role: str, task: str) -> float:
            values = decoded(cell, role, task)
            return float(values.mean()) if weights is None else float((weights[task] * values).sum() / len(values))

        picked, control, release = row(defense, "a", seed), row("control", "a", seed), row("none", "a", seed)
        kept_p = ((acc(picked, "merged", "add") - acc(control, "merged", "add"))
                  / (acc(release, "release", "add") - acc(picked, "base", "add")))
        kept_m = ((acc(picked, "merged", "reverse") - acc(picked, "base", "reverse"))
                  / (acc(picked, "experts", "reverse") - acc(picked, "base", "reverse")))
        return min(kept_p, kept_m)

    live = [seed for seed in (0, 1) if joint("none", seed, None) >= rule.min_kept_fraction]  # void: on the point

    def headline(weights: dict[str, np.ndarray] | None, seed_counts: list[int]) -> float:
        values, counts = [], []
        for seed, count in zip((0, 1), seed_counts, strict=True):
            none = joint("none", seed, weights)
            if count and seed in live and none > 0:
                values.append(min(max(joint("lock", seed, weights) / none, 0.0), 1.0))
                counts.append(count)
        return float(np.average(values, weights=counts)) if counts else float("nan")

    point = headline(None, [1, 1])
    seeds = np.random.default_rng([rule.bootstrap_seed, 1]).integers(0, 2, size=(rule.bootstrap_iters, 2))
    draws = {task: np.random.default_rng([rule.bootstrap_seed, 2, zlib.crc32(task.encode())]).integers(
        0, 12, size=(rule.bootstrap_iters, 12)) for task in ("add", "reverse")}
    resampled = [headline({task: np.bincount(draws[task][i], minlength=12) for task in draws},
                          list(np.bincount(seeds[i], minlength=2))) for i in range(rule.bootstrap_iters)]
    low, high = np.nanpercentile(resampled, [2.5, 97.5])
    return point, float(low), float(high)


def test_the_headline_and_its_interval_recompute_by_hand_from_the_published_csv(tmp_path: Path) -> None:
    rule = ValidityRule(bootstrap_iters=200)
    write_run_outputs(tmp_path, score_cells(_synthetic_with_examples(), rule), "synthetic", rule)
    cells = read_csv(tmp_path / "cells.csv", "cells")
    picks = read_csv(tmp_path / "picks.csv", "picks")
    board = read_csv(tmp_path / "leaderboard.csv", "leaderboard").set_index("defense")
    overall = picks[(picks["pick_family"] == "all") & (picks["defense"] == "lock")]
    assert set(overall["pick_attack"]) == {"a"}, "the pick follows attacker_val, not the test split"
    point, low, high = _by_hand(cells, rule)
    assert board.loc["lock", "attack_success"] == pytest.approx(point)
    assert (board.loc["lock", "attack_success_lo"], board.loc["lock", "attack_success_hi"]) == pytest.approx((low, high))
    assert 0.0 <= low <= point <= high <= 1.0
