"""The three tables' schemas and the checks every write and read goes through.

* ``raw`` — one record per cell as the harness produces it (`bench.results.columns.RAW_SCHEMA`);
* ``cells`` — ``raw`` plus the derived columns declared in `bench.results.metrics.CELL_METRICS` and the
  validity verdict;
* ``picks`` — the attacker's pick per input and pick family (`bench.results.picks`);
* ``leaderboard`` — one row per (defense, track, model, release_format): each aggregate of
  `bench.results.metrics.AGGREGATE_METRICS` with its 95% bootstrap interval, the verdict, counts and flags;
* ``sensitivity`` — the headline at each void-bar.

Canonical dtypes (what :func:`conform_frame` returns): strings are pandas ``str`` and never missing (a
missing string is ``""``), floats ``float64`` (missing is NaN), counts and seeds ``int64``, optional
integers ``Int64``, flags ``bool`` and optional flags ``boolean``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pandas as pd

from bench.plugins import ATTACK_FAMILIES
from bench.plugins.threat_model import CONTROL_DEFENSE, REFERENCE_DEFENSE  # noqa: F401 - re-exported
from bench.results.columns import CANONICAL_DTYPES, PROVENANCE_COLUMNS, RAW_SCHEMA, Column, ColumnKind
from bench.results.metrics import AGGREGATE_METRICS, CELL_METRICS

FrameKind = Literal["raw", "cells", "leaderboard", "picks", "sensitivity"]


class SchemaError(ValueError):
    """A frame or CSV that does not match its schema; the message is one line naming every problem."""


VERDICT_SCHEMA: tuple[Column, ...] = (
    Column("weak", "bool", required=True),
    Column("weak_reason", "str"),
)
DERIVED_SCHEMA: tuple[Column, ...] = (
    *(Column(m.name, m.kind, lo=m.lo, hi=m.hi) for m in CELL_METRICS),
    *VERDICT_SCHEMA,
)
#: A row's verdict: its headline interval against `broken_line` (`none` is the reference).
VERDICTS: tuple[str, ...] = ("broken", "partly", "holds", "reference", "")
#: Counts of inputs: every one, void ones, broken ones, and void ones per attack family.
COUNT_COLUMNS: tuple[str, ...] = (
    "n_inputs", "n_inputs_void", "n_inputs_broken", *(f"n_void_{family}" for family in ATTACK_FAMILIES),
)
LEADERBOARD_SCHEMA: tuple[Column, ...] = (
    Column("defense", "str", required=True),
    Column("paper", "str"),
    Column("track", "str", required=True, choices=("merge", "finetune")),
    Column("model", "str", required=True),
    Column("release_format", "str", required=True, choices=("full", "adapter")),
    Column("family", "str"),
    Column("status", "str", required=True, choices=("ok", "n/a", "invalid")),
    *(column for metric in AGGREGATE_METRICS for column in (
        Column(metric.name, "float", lo=metric.lo, hi=metric.hi),
        Column(f"{metric.name}_lo", "float", lo=metric.lo, hi=metric.hi),
        Column(f"{metric.name}_hi", "float", lo=metric.lo, hi=metric.hi),
    )),
    Column("verdict", "str", choices=VERDICTS),
    Column("below_none", "boolean"),
    Column("threshold_sensitive", "boolean"),
    Column("worst_attack", "str"),
    Column("worst_attack_key", "str"),
    Column("worst_attack_family", "str"),
    Column("n_seeds", "int", required=True, lo=0),
    Column("n_tasks", "int", required=True, lo=0),
    *(Column(name, "int", required=True, lo=0) for name in COUNT_COLUMNS),
    Column("n_cells_failed", "int", required=True, lo=0),
    Column("n_cells_unmatched", "int", required=True, lo=0),
    Column("flags", "str"),
    # JSON {utility task: the release's accuracy} and {task: retention against the public base}, filled by the
    # report writer (bench.report.utility, which reads cells.csv's utility-task columns); empty without any
    Column("utility_tasks_acc", "str"),
    Column("utility_tasks_retention", "str"),
    *(Column(name, "str") for name in PROVENANCE_COLUMNS),
)
#: The headline at each void-bar of the sensitivity table (sensitivity.csv).
SENSITIVITY_SCHEMA: tuple[Column, ...] = (
    Column("defense", "str", required=True),
    Column("track", "str", required=True, choices=("merge", "finetune")),
    Column("model", "str", required=True),
    Column("release_format", "str", required=True, choices=("full", "adapter")),
    Column("bar", "float", required=True),
    Column("attack_success", "float", lo=0.0, hi=1.0),
    Column("attack_success_lo", "float", lo=0.0, hi=1.0),
    Column("attack_success_hi", "float", lo=0.0, hi=1.0),
    Column("verdict", "str", choices=VERDICTS),
    Column("n_inputs_live", "int", required=True, lo=0),
)

#: The attacker's pick per input and pick family (`bench.results.picks`), published as picks.csv.
PICKS_SCHEMA: tuple[Column, ...] = (
    Column("defense", "str", required=True),
    Column("track", "str", required=True, choices=("merge", "finetune")),
    Column("model", "str", required=True),
    Column("release_format", "str", required=True, choices=("full", "adapter")),
    Column("task", "str", required=True),
    Column("members", "str"),
    Column("seed", "int", required=True),
    Column("pick_family", "str", required=True, choices=("all", *ATTACK_FAMILIES)),
    Column("pick_attack", "str"),
    Column("pick_attack_key", "str"),
    Column("pick_attack_family", "str"),
    Column("pick_val_objective", "float"),
    Column("pick_value", "float"),
    Column("oracle_value", "float"),
    Column("oracle_attack", "str"),
    Column("n_configs", "int", required=True, lo=0),
    Column("utility", "float", lo=0.0, hi=1.0),
    Column("utility_retention", "float", lo=0.0),
    Column("trap_formed", "boolean"),
    Column("pick_index", "Int", lo=0),
    Column("none_pick_attack", "str"),
    Column("none_pick_value", "float"),
    Column("none_oracle_value", "float"),
    Column("none_pick_index", "Int", lo=0),
    Column("void", "bool", required=True),
    Column("void_reason", "str"),
    Column("success_raw", "float"),
    Column("success", "float", lo=0.0, hi=1.0),
    Column("oracle_success", "float", lo=0.0, hi=1.0),
    Column("protection", "float"),
    Column("broken", "bool", required=True),
)

SCHEMAS: dict[str, tuple[Column, ...]] = {
    "raw": RAW_SCHEMA,
    "cells": RAW_SCHEMA + DERIVED_SCHEMA,
    "leaderboard": LEADERBOARD_SCHEMA,
    "picks": PICKS_SCHEMA,
    "sensitivity": SENSITIVITY_SCHEMA,
}
DERIVED_COLUMNS: tuple[str, ...] = tuple(column.name for column in DERIVED_SCHEMA)
CELL_COLUMNS: tuple[str, ...] = tuple(column.name for column in SCHEMAS["cells"])
LEADERBOARD_COLUMNS: tuple[str, ...] = tuple(column.name for column in LEADERBOARD_SCHEMA)
PICKS_COLUMNS: tuple[str, ...] = tuple(column.name for column in PICKS_SCHEMA)
#: Canonical pandas dtype of every column of every table (a name means the same thing everywhere).
DTYPES: dict[str, str] = {
    column.name: CANONICAL_DTYPES[column.kind] for schema in SCHEMAS.values() for column in schema
}

#: A `none` or control row matches a cell when these are equal: the same attack configuration on the same input.
MATCH_KEY: tuple[str, ...] = ("track", "model", "release_format", "task", "members", "attack_key", "seed")
#: `none`'s release of an input: every row with these equal measured the same release (utility, diagnostics).
RELEASE_KEY: tuple[str, ...] = ("track", "model", "release_format", "task", "seed")
#: The validity rule is decided once per value of this key, over all seeds (DESIGN §6).
VALIDITY_KEY: tuple[str, ...] = ("track", "model", "release_format", "task", "members", "attack_key")
#: One cell per value of this key; also the CSV row order of the raw and cells tables.
CELL_KEY: tuple[str, ...] = (
    "track", "model", "release_format", "defense", "defense_config", "task", "members", "attack_key", "seed",
)
GROUP_KEY: tuple[str, ...] = ("defense", "track", "model", "release_format")
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "raw": CELL_KEY, "cells": CELL_KEY, "leaderboard": ("track", "model", "release_format", "defense"),
    "picks": ("track", "model", "release_format", "defense", "task", "members", "seed", "pick_family"),
    "sensitivity": ("track", "model", "release_format", "defense", "bar"),
}



def is_missing(value: Any) -> bool:
    """True for None, NaN and pandas' NA (scalars only)."""
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _is_number(value: Any) -> bool:
    numeric = isinstance(value, int | float | np.integer | np.floating)
    return numeric and not isinstance(value, bool | np.bool_)


def _is_integral(value: Any) -> bool:
    return _is_number(value) and math.isfinite(float(value)) and float(value).is_integer()


def _values_all(series: pd.Series, accept: Callable[[Any], bool], allow_missing: bool = True) -> bool:
    return all((allow_missing and is_missing(v)) or (not is_missing(v) and accept(v)) for v in series.tolist())


def _kind_problem(series: pd.Series, kind: ColumnKind) -> str | None:
    """Why `series` cannot hold `kind` values, or None. Accepts object columns of the right Python types,
    so records built from dicts (with None where a metric does not apply) need no casting first."""
    dtype = series.dtype
    missing = series.isna()
    if kind in ("int", "bool") and missing.any():
        return f"{series.name} has {int(missing.sum())} missing values, expected {kind} everywhere"
    if missing.all():
        return None
    is_bool = pd.api.types.is_bool_dtype(dtype)
    is_numeric = pd.api.types.is_numeric_dtype(dtype) and not is_bool
    is_int = pd.api.types.is_integer_dtype(dtype) and not is_bool
    is_object = pd.api.types.is_object_dtype(dtype)
    if kind == "str":
        ok = pd.api.types.is_string_dtype(dtype) and (not is_object or _values_all(series, _is_str))
    elif kind == "float":
        ok = is_numeric or (is_object and _values_all(series, _is_number))
    elif kind in ("int", "Int"):
        ok = is_int or ((is_numeric or is_object) and _values_all(series, _is_integral))
    else:  # bool, boolean
        ok = is_bool or (is_object and _values_all(series, lambda v: isinstance(v, bool | np.bool_)))
    return None if ok else f"{series.name} has dtype {dtype}, expected {kind}"


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _cast(series: pd.Series, kind: ColumnKind) -> pd.Series:
    """Cast a column already accepted by `_kind_problem` to its canonical dtype."""
    if kind == "str":
        return pd.Series(["" if is_missing(v) else v for v in series.tolist()], index=series.index,
                         dtype="str", name=series.name)
    if kind == "float":
        values = [math.nan if is_missing(v) else float(v) for v in series.tolist()]
        return pd.Series(values, index=series.index, dtype="float64", name=series.name)
    if kind in ("Int", "boolean"):
        values = [pd.NA if is_missing(v) else v for v in series.tolist()]
        return pd.Series(values, index=series.index, dtype=CANONICAL_DTYPES[kind], name=series.name)
    return series.astype(CANONICAL_DTYPES[kind])


def _range_problems(series: pd.Series, column: Column) -> list[str]:
    problems = []
    if column.required:
        missing = series.isna() | (series == "") if column.kind == "str" else series.isna()
        if missing.any():
            problems.append(f"{column.name} has {int(missing.sum())} missing values (first at row "
                            f"{series.index[missing.to_numpy()][0]})")
    if column.choices is not None:
        bad = ~series.isin(column.choices)
        if bad.any():
            problems.append(f"{column.name} has values outside {list(column.choices)}: "
                            f"{sorted(set(series[bad].tolist()))[:5]}")
    if column.lo is not None or column.hi is not None:
        values = pd.Series(series.to_numpy(dtype="float64", na_value=np.nan), index=series.index)
        lo = -np.inf if column.lo is None else column.lo
        hi = np.inf if column.hi is None else column.hi
        bad = values.notna() & ((values < lo) | (values > hi))
        if bad.any():
            first = values[bad].index[0]
            problems.append(f"{column.name} has {int(bad.sum())} values outside [{lo}, {hi}] "
                            f"(e.g. {values[first]!r} at row {first})")
    return problems


def _row_problems(frame: pd.DataFrame, kind: FrameKind) -> list[str]:
    """Cross-column rules: an ok cell must say which task and attack it measured."""
    if kind in ("leaderboard", "picks", "sensitivity"):
        return []
    ok = frame["status"] == "ok"
    problems = []
    for name in ("task", "attack", "attack_key"):
        empty = ok & (frame[name] == "")
        if empty.any():
            problems.append(f"{name} is empty in {int(empty.sum())} ok rows")
    return problems


def conform_frame(df: pd.DataFrame, kind: FrameKind) -> pd.DataFrame:
    """Check `df` against the `kind` schema and return a copy with canonical dtypes and column order.

    Raises SchemaError with one line listing missing/unexpected columns, wrong dtypes and values out of
    range, so a bad record fails at the stage that wrote it rather than as a wrong leaderboard number.
    """
    if kind not in SCHEMAS:
        raise SchemaError(f"unknown frame kind {kind!r}; expected one of {sorted(SCHEMAS)}")
    schema = SCHEMAS[kind]
    expected = [column.name for column in schema]
    missing = [name for name in expected if name not in df.columns]
    unexpected = [str(name) for name in df.columns if name not in expected]
    problems = []
    if missing:
        problems.append(f"missing columns {missing}")
    if unexpected:
        problems.append(f"unexpected columns {unexpected}")
    if df.columns.duplicated().any():
        problems.append(f"duplicated columns {sorted(set(df.columns[df.columns.duplicated()]))}")
    if problems:
        raise SchemaError(f"{kind} frame: " + "; ".join(problems))
    frame = df.reset_index(drop=True)
    problems = [p for column in schema if (p := _kind_problem(frame[column.name], column.kind))]
    if problems:
        raise SchemaError(f"{kind} frame: " + "; ".join(problems))
    frame = pd.DataFrame({column.name: _cast(frame[column.name], column.kind) for column in schema},
                         index=frame.index)
    problems = [p for column in schema for p in _range_problems(frame[column.name], column)]
    problems += _row_problems(frame, kind)
    if problems:
        raise SchemaError(f"{kind} frame: " + "; ".join(problems))
    return frame


def validate_frame(df: pd.DataFrame, kind: FrameKind) -> None:
    """Raise SchemaError unless `df` is a valid `kind` table (see :func:`conform_frame`)."""
    conform_frame(df, kind)


def sort_frame(df: pd.DataFrame, kind: FrameKind) -> pd.DataFrame:
    """Rows in the stable order the CSV files use: sorted by the kind's key columns."""
    return df.sort_values(list(SORT_KEYS[kind]), kind="mergesort", ignore_index=True)
