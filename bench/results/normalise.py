"""Raw cell records → the cells table: every number against the harness's control of the same attack
configuration and against `none`'s release of the same input and seed (a fixed reference), and the
per-configuration diagnostic of DESIGN §6 (`weak`).

The derived columns and their formulas are declared in `bench.results.metrics`; this module joins the
matching rows and applies them in order, then decides which attack configurations are weak.
"""

from __future__ import annotations

import json
import math

import pandas as pd
from pydantic import Field

from bench.config import StrictModel
from bench.results.columns import RAW_COLUMNS
from bench.results.metrics import CELL_METRICS, CONTROL_COPIES, REFERENCE_COPIES, CellMetric, joint_share
from bench.results.schema import (
    CELL_KEY,
    CONTROL_DEFENSE,
    DERIVED_COLUMNS,
    DTYPES,
    MATCH_KEY,
    REFERENCE_DEFENSE,
    RELEASE_KEY,
    VALIDITY_KEY,
    SchemaError,
    conform_frame,
)


class ValidityRule(StrictModel):
    """DESIGN §5–§6: when an input is void, what counts as broken, and how intervals are drawn.

    Merge: the unprotected expert beats the base by `min_expert_gain` (the zoo's rule); an input's family
    is void when `none`'s pick keeps less than `min_kept_fraction` jointly (`joint_kept`, against the
    fixed experts). Finetune: void when the unprotected base scores above `max_downstream_base` on D, or
    `none`'s pick gains less than `min_finetune_gain` or beats the from-scratch control by less than
    `min_scratch_margin` at the full budget. No attack configuration is dropped: the attacker's pick on
    `attacker_val` decides what counts. `min_release_margin` and the seed-averaged per-configuration
    verdict (`weak` in cells.csv) remain as a diagnostic of each configuration on `none`.
    """

    min_expert_gain: float = 0.3
    min_kept_fraction: float = Field(0.5, description="merge: the bar on none's pick (joint_kept) below which an "
                                     "input's family is void; the sensitivity table varies it")
    min_release_margin: float = Field(0.3, description="diagnostic (weak in cells.csv): the none merge beats the "
                                      "release-free control on T_p by this much")
    max_downstream_base: float = 0.3
    min_finetune_gain: float = 0.3
    min_scratch_margin: float = Field(0.3, description="finetune: the unprotected base must beat the from-scratch "
                                      "control by this much at the attacker's budget")
    broken_line: float = Field(0.5, description="an input is broken when its success is at least this; a row's "
                               "verdict compares its interval with it")
    sensitivity_bars: list[float] = Field([0.3, 0.4, 0.5, 0.6], description="merge void-bars of the sensitivity "
                                          "table")
    bootstrap_iters: int = Field(1000, ge=0, description="paired bootstrap resamples (seeds and test examples); "
                                 "0: no intervals")
    bootstrap_seed: int = 0
    trap_margin: float = Field(0.1, description="a release's answer loss at half scale must exceed none's by this "
                               "(nats per answer token) for trap_formed")


def _join(cells: pd.DataFrame, defense: str, columns: tuple[str, ...], suffix: str, flag: str,
          key: tuple[str, ...] = MATCH_KEY) -> pd.DataFrame:
    """`cells` with the ok row of `defense` of the same `key` joined on (its `columns` + `_suffix`).

    With MATCH_KEY (the control) one row may match; with RELEASE_KEY (`none`'s release) every row of the
    release carries the same release numbers, and the first is taken."""
    rows = cells[(cells["defense"] == defense) & (cells["status"] == "ok")]
    if key == MATCH_KEY:
        duplicated = rows.duplicated(list(key), keep=False)
        if duplicated.any():
            first = rows[duplicated].iloc[0]
            raise SchemaError(f"raw frame: several ok '{defense}' rows for one attack configuration "
                              f"({', '.join(f'{k}={first[k]}' for k in key)})")
    rows = rows.drop_duplicates(list(key))
    right = rows[[*key, *columns]].rename(columns={c: f"{c}_{suffix}" for c in columns})
    return cells.merge(right, on=list(key), how="left", indicator=flag, validate="many_to_one")


def _join_budget_reference(cells: pd.DataFrame) -> pd.DataFrame:
    """`cells` with the release numbers (REFERENCE_COPIES + `_budget`) of the row's same-budget control, the
    defense its `budget_reference` names, on the same input and seed (empty where it names none)."""
    rows = cells[(cells["status"] == "ok") & (cells["defense"] != "")]
    key = [*RELEASE_KEY, "defense"]
    right = rows[[*key, *REFERENCE_COPIES]].drop_duplicates(key).rename(
        columns={"defense": "budget_reference", **{c: f"{c}_budget" for c in REFERENCE_COPIES}})
    return cells.merge(right, on=[*RELEASE_KEY, "budget_reference"], how="left", validate="many_to_one")


def _apply(frame: pd.DataFrame, metric: CellMetric, rule: ValidityRule) -> None:
    values = metric.compute(frame, rule)
    if metric.track != "both":
        keep = frame["track"] == metric.track
        values = values.where(keep) if metric.kind != "str" else values.where(keep, "")
    frame[metric.name] = values


def joint_kept_vs_experts(row: pd.Series) -> float:
    """min(kept_p, kept_m) of a none merge against the experts' own gains (DESIGN §6's joint kept fraction),
    by the headline's rule (`joint_share`): not measurable where the T_p expert gained nothing."""
    gain = row["utility"] - row["base_acc"]
    kept_p = (row["merged_acc"] - row["base_acc"]) / gain if gain > 0 else math.nan
    merged, base = json.loads(row["merged_acc_by_member"] or "{}"), json.loads(row["base_acc_by_member"] or "{}")
    experts = json.loads(row["expert_acc_by_member"] or "{}")
    kept = [(merged[m] - base[m]) / (experts[m] - base[m]) if experts[m] - base[m] > 0 else math.nan for m in merged]
    kept_m = sum(kept) / len(kept) if kept else math.nan
    return float(joint_share(kept_p, kept_m))


def _verdict(group: pd.DataFrame, rule: ValidityRule) -> str:
    """Why this attack configuration is weak on `none` over its seeds ("" when it passes)."""
    reasons = []

    def need(value: float, least: float | None, most: float | None, what: str) -> None:
        if math.isnan(value):
            reasons.append(f"{what} not measurable")
        elif least is not None and value < least:
            reasons.append(f"{what} {value:.2f} < {least:g}")
        elif most is not None and value > most:
            reasons.append(f"{what} {value:.2f} > {most:g}")

    if group["track"].iloc[0] == "merge":
        need(float((group["utility"] - group["base_acc"]).mean()), rule.min_expert_gain, None, "expert gain")
        need(float(group.apply(joint_kept_vs_experts, axis=1).mean()), rule.min_kept_fraction, None,
             "joint kept fraction")
        need(float((group["merged_acc"] - group["control_acc"]).mean()), rule.min_release_margin, None,
             "margin over the release-free control")
    else:
        need(float(group["acc_before"].mean()), None, rule.max_downstream_base, "base accuracy on D")
        need(float(group["gain_b1"].mean()), rule.min_finetune_gain, None, "gain")
        need(float(group["advantage"].mean()), rule.min_scratch_margin, None, "margin over the from-scratch control")
    return "; ".join(reasons)


def _weak_reasons(frame: pd.DataFrame, rule: ValidityRule) -> pd.Series:
    """Per row, the verdict of its attack configuration (VALIDITY_KEY), decided on the ok `none` rows of all
    seeds; configurations without any `none` row are not judged (those cells are unmatched, not weak)."""
    reference = frame[(frame["defense"] == REFERENCE_DEFENSE) & (frame["status"] == "ok")]
    verdicts = {key: _verdict(group, rule) for key, group in reference.groupby(list(VALIDITY_KEY), sort=False)}
    keys = frame[list(VALIDITY_KEY)].itertuples(index=False, name=None)
    return pd.Series([verdicts.get(tuple(key), "") for key in keys], index=frame.index, dtype="str")


def score_cells(raw: pd.DataFrame, validity: ValidityRule | None = None) -> pd.DataFrame:
    """Add the derived columns (metrics.CELL_METRICS, then `weak` / `weak_reason`) to the raw records.

    Cells that are not ok keep empty derived numbers; so do numbers whose control or `none` row is missing
    (`control_found` / `reference_found` say which).
    """
    rule = validity or ValidityRule()
    cells = conform_frame(raw, "raw")
    duplicated = cells.duplicated(list(CELL_KEY), keep=False)
    if duplicated.any():
        raise SchemaError(f"raw frame: {int(duplicated.sum())} rows share a cell key {list(CELL_KEY)}")
    frame = _join(cells, CONTROL_DEFENSE, CONTROL_COPIES, "control", "_control")
    for metric in (m for m in CELL_METRICS if m.stage == "control"):
        _apply(frame, metric, rule)
    own = [m.name for m in CELL_METRICS if m.stage == "control" and m.name not in frame.columns]
    assert not own
    frame = _join(frame, REFERENCE_DEFENSE, REFERENCE_COPIES, "none", "_reference", RELEASE_KEY)
    frame = _join_budget_reference(frame)
    for metric in (m for m in CELL_METRICS if m.stage == "reference"):
        _apply(frame, metric, rule)
    ok = frame["status"] == "ok"
    numbers = [m.name for m in CELL_METRICS if DTYPES[m.name] == "float64"]
    frame[numbers] = frame[numbers].where(ok, axis=0)
    frame["trap_formed"] = frame["trap_formed"].where(ok & (frame["defense"] != CONTROL_DEFENSE))
    reasons = _weak_reasons(frame, rule)
    frame["weak_reason"] = reasons
    frame["weak"] = reasons != ""
    result = pd.concat([cells[list(RAW_COLUMNS)], frame[list(DERIVED_COLUMNS)]], axis=1)
    return conform_frame(result, "cells")


def valid_mask(cells: pd.DataFrame) -> pd.Series:
    """Cells the attacker can pick from: ok, a defense (not the control), with a control row, `none`'s release
    and an absolute value (`cell_value`). Weak configurations count: the pick decides (DESIGN §5)."""
    return ((cells["status"] == "ok") & (cells["defense"] != CONTROL_DEFENSE) & cells["reference_found"]
            & cells["control_found"] & cells["cell_value"].notna())
