"""Scoring: raw cell records → normalised cells table → one aggregate row per defense (DESIGN §5, §6).

Three tables, each with a fixed schema checked on every write and read:

* ``raw`` — one record per cell as the harness produces it (identity, knobs, raw metrics, budgets,
  provenance);
* ``cells`` — ``raw`` plus the derived columns of :func:`score_cells`, every number normalised by the
  *same* attack configuration run against the unprotected reference ``none``;
* ``leaderboard`` — one row per (defense, track, model, release_format) from :func:`aggregate`.

Canonical dtypes (what :func:`conform_frame` and :func:`read_csv` return): strings are pandas ``str``
and never missing (a missing string is ``""``), floats are ``float64`` (missing is NaN), counts and seeds
are ``int64``, optional integers are ``Int64``, flags are ``bool`` and optional flags ``boolean``. The
CSV files store floats with Python's shortest round-tripping ``repr``, so write → read gives back an
identical frame, rows sorted by the key columns (:func:`sort_frame`).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from bench.config import StrictModel

FrameKind = Literal["raw", "cells", "leaderboard"]
ColumnKind = Literal["str", "int", "Int", "float", "bool", "boolean"]

#: pandas dtype each column kind is stored as once conformed.
CANONICAL_DTYPES: dict[str, str] = {
    "str": "str", "int": "int64", "Int": "Int64", "float": "float64", "bool": "bool", "boolean": "boolean",
}


class SchemaError(ValueError):
    """A frame or CSV that does not match its schema; the message is one line naming every problem."""


class ValidityRule(StrictModel):
    """DESIGN §6 applied per attack configuration, on the attack's run against ``none``.

    A merge attack is *weak* when the none merge keeps less than ``min_kept_fraction`` of the expert's
    gain; a fine-tuning attack is weak when it gains less than ``min_finetune_gain`` on ``none``. A
    merge keeps the other members' skills when their merged accuracy is at least ``members_floor`` times
    their experts' standalone accuracy (the bounded worst case only counts such merges).
    """

    min_kept_fraction: float = 0.5
    min_finetune_gain: float = 0.3
    members_floor: float = 0.5


@dataclass(frozen=True)
class Column:
    """One schema column: its kind, whether it may be missing, and the values it may take."""

    name: str
    kind: ColumnKind
    required: bool = False
    choices: tuple[str, ...] | None = None
    lo: float | None = None
    hi: float | None = None


def _acc(name: str) -> Column:
    return Column(name, "float", lo=0.0, hi=1.0)


def _gain(name: str) -> Column:
    return Column(name, "float", lo=-1.0, hi=1.0)


PROVENANCE_COLUMNS: tuple[str, ...] = (
    "lockbench_version", "torch_version", "transformers_version", "peft_version", "mergekit_version",
    "lm_eval_version", "zoo_hash",
)
#: Wall-clock columns: they differ between otherwise identical runs, so comparisons drop them.
TIMING_COLUMNS: tuple[str, ...] = ("attack_seconds", "defense_seconds")
GAIN_COLUMNS: tuple[str, ...] = ("gain_b0125", "gain_b025", "gain_b05", "gain_b1")
#: Budget fractions at which the gains above are measured.
GAIN_FRACTIONS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)

_RAW_SCHEMA: tuple[Column, ...] = (
    Column("track", "str", required=True, choices=("merge", "finetune")),
    Column("defense", "str", required=True),
    Column("defense_config", "str"),
    Column("release_format", "str", required=True, choices=("full", "adapter")),
    Column("model", "str", required=True),
    Column("family", "str"),
    Column("task", "str"),
    Column("members", "str"),
    Column("n_members", "int", required=True, lo=0),
    Column("attack", "str"),
    Column("attack_config", "str"),
    Column("attack_key", "str"),
    Column("seed", "int", required=True),
    Column("status", "str", required=True, choices=("ok", "failed", "n/a")),
    Column("error", "str"),
    Column("merge_method", "str"),
    Column("merge_weights", "str"),
    Column("merge_normalize", "boolean"),
    Column("merge_lambda", "float"),
    Column("merge_density", "float", lo=0.0, hi=1.0),
    Column("merge_rescale", "boolean"),
    Column("ft_method", "str", choices=("lora", "full", "")),
    Column("ft_lr", "float", lo=0.0),
    Column("ft_steps", "Int", lo=0),
    _acc("utility"),
    _acc("base_acc"),
    _acc("merged_acc"),
    _acc("merged_acc_members"),
    _acc("members_expert_acc"),
    _acc("acc_before"),
    _acc("acc_after"),
    *(_gain(name) for name in GAIN_COLUMNS),
    Column("attack_steps", "Int", lo=0),
    Column("attack_examples", "Int", lo=0),
    Column("attack_seconds", "float", lo=0.0),
    Column("defense_seconds", "float", lo=0.0),
    *(Column(name, "str") for name in PROVENANCE_COLUMNS),
)

_DERIVED_SCHEMA: tuple[Column, ...] = (
    Column("reference_found", "bool", required=True),
    _acc("utility_none"),
    _acc("base_acc_none"),
    _acc("merged_acc_none"),
    _gain("gain_none"),
    _gain("gain_auc_none"),
    _gain("gain_auc"),
    Column("utility_retention", "float", lo=0.0),
    _gain("reference_gain"),
    Column("attack_success", "float", lo=0.0, hi=1.0),
    Column("attack_success_auc", "float", lo=0.0, hi=1.0),
    Column("protection", "float", lo=0.0),
    Column("weak", "bool", required=True),
    Column("members_floor_ok", "bool", required=True),
)

#: The aggregate numbers: each has a mean over seeds and a ``<name>_ci95`` half-width.
AGGREGATE_METRICS: tuple[str, ...] = (
    "utility", "utility_retention", "worst_attack_success", "bounded_worst_attack_success",
    "mean_attack_success", "protection_worst", "worst_attack_success_auc",
)
_METRIC_RANGES: dict[str, tuple[float | None, float | None]] = {
    "utility": (0.0, 1.0), "utility_retention": (0.0, None), "worst_attack_success": (0.0, 1.0),
    "bounded_worst_attack_success": (0.0, 1.0), "mean_attack_success": (0.0, 1.0),
    "protection_worst": (0.0, None), "worst_attack_success_auc": (0.0, 1.0),
}

_LEADERBOARD_SCHEMA: tuple[Column, ...] = (
    Column("defense", "str", required=True),
    Column("track", "str", required=True, choices=("merge", "finetune")),
    Column("model", "str", required=True),
    Column("release_format", "str", required=True, choices=("full", "adapter")),
    Column("family", "str"),
    Column("status", "str", required=True, choices=("ok", "n/a")),
    *(column for metric in AGGREGATE_METRICS for column in (
        Column(metric, "float", lo=_METRIC_RANGES[metric][0], hi=_METRIC_RANGES[metric][1]),
        Column(f"{metric}_ci95", "float", lo=0.0),
    )),
    Column("worst_attack", "str"),
    Column("worst_attack_key", "str"),
    Column("n_seeds", "int", required=True, lo=0),
    Column("n_tasks", "int", required=True, lo=0),
    Column("n_attacks_valid", "int", required=True, lo=0),
    Column("n_attacks_weak", "int", required=True, lo=0),
    Column("n_cells_failed", "int", required=True, lo=0),
    Column("n_cells_unmatched", "int", required=True, lo=0),
    *(Column(name, "str") for name in PROVENANCE_COLUMNS),
)

SCHEMAS: dict[str, tuple[Column, ...]] = {
    "raw": _RAW_SCHEMA,
    "cells": _RAW_SCHEMA + _DERIVED_SCHEMA,
    "leaderboard": _LEADERBOARD_SCHEMA,
}
RAW_COLUMNS: tuple[str, ...] = tuple(column.name for column in SCHEMAS["raw"])
DERIVED_COLUMNS: tuple[str, ...] = tuple(column.name for column in _DERIVED_SCHEMA)
CELL_COLUMNS: tuple[str, ...] = tuple(column.name for column in SCHEMAS["cells"])
LEADERBOARD_COLUMNS: tuple[str, ...] = tuple(column.name for column in SCHEMAS["leaderboard"])
#: Canonical pandas dtype of every column of every table (a name means the same thing everywhere).
DTYPES: dict[str, str] = {
    column.name: CANONICAL_DTYPES[column.kind] for schema in SCHEMAS.values() for column in schema
}

#: A `none` row matches a cell when these are equal: the same attack configuration on the same input.
MATCH_KEY: tuple[str, ...] = ("track", "model", "release_format", "task", "members", "attack_key", "seed")
#: One cell per value of this key; also the CSV row order of the raw and cells tables.
CELL_KEY: tuple[str, ...] = (
    "track", "model", "release_format", "defense", "defense_config", "task", "members", "attack_key", "seed",
)
GROUP_KEY: tuple[str, ...] = ("defense", "track", "model", "release_format")
SORT_KEYS: dict[str, tuple[str, ...]] = {
    "raw": CELL_KEY, "cells": CELL_KEY, "leaderboard": ("track", "model", "release_format", "defense"),
}
REFERENCE_DEFENSE = "none"

# ----------------------------------------------------------------------------- schema checks


def _missing(value: Any) -> bool:
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
    return all((allow_missing and _missing(v)) or (not _missing(v) and accept(v)) for v in series.tolist())


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
        return pd.Series(["" if _missing(v) else v for v in series.tolist()], index=series.index,
                         dtype="str", name=series.name)
    if kind == "float":
        values = [math.nan if _missing(v) else float(v) for v in series.tolist()]
        return pd.Series(values, index=series.index, dtype="float64", name=series.name)
    if kind in ("Int", "boolean"):
        values = [pd.NA if _missing(v) else v for v in series.tolist()]
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
    if kind == "leaderboard":
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


# ----------------------------------------------------------------------------- CSV


def _to_text(series: pd.Series, kind: ColumnKind) -> list[str]:
    """Exact text for each value: repr() of floats round-trips bit for bit; missing is empty."""
    if kind == "str":
        return series.tolist()
    if kind == "float":
        return ["" if math.isnan(v) else repr(float(v)) for v in series.tolist()]
    if kind in ("int", "Int"):
        return ["" if _missing(v) else str(int(v)) for v in series.tolist()]
    return ["" if _missing(v) else ("True" if v else "False") for v in series.tolist()]


_BOOL_TEXT = {"True": True, "False": False, "true": True, "false": False, "": None}


def _from_text(texts: pd.Series, kind: ColumnKind, where: str) -> pd.Series:
    """Parse one CSV column; unparsable text is a SchemaError naming the column."""
    if kind == "str":
        return texts.astype("str")
    values: list[Any] = []
    for row, text in enumerate(texts.tolist()):
        try:
            if kind == "float":
                values.append(float(text) if text != "" else math.nan)
            elif kind in ("int", "Int"):
                values.append(int(text) if text != "" else None)
            else:
                values.append(_BOOL_TEXT[text])
        except (ValueError, KeyError) as error:
            raise SchemaError(f"{where}: column {texts.name} row {row}: {text!r} is not {kind}") from error
    return pd.Series(values, index=texts.index, dtype=object, name=texts.name)


def write_csv(df: pd.DataFrame, path: Path, kind: FrameKind) -> None:
    """Validate, sort and write `df` atomically (temporary file + os.replace): readers never see half."""
    frame = sort_frame(conform_frame(df, kind), kind)
    text = pd.DataFrame({column.name: _to_text(frame[column.name], column.kind) for column in SCHEMAS[kind]},
                        dtype=object)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            text.to_csv(stream, index=False, lineterminator="\n")
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


def read_csv(path: Path, kind: FrameKind) -> pd.DataFrame:
    """Read and validate a CSV written by :func:`write_csv`; returns canonical dtypes in file order."""
    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"{path}: no such file")
    try:
        texts = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise SchemaError(f"{path}: not a readable CSV ({str(error).splitlines()[0]})") from error
    kinds = {column.name: column.kind for column in SCHEMAS[kind]}
    parsed = pd.DataFrame({name: _from_text(texts[name], kinds[name], str(path)) if name in kinds
                           else texts[name] for name in texts.columns}, index=texts.index)
    try:
        return conform_frame(parsed, kind)
    except SchemaError as error:
        raise SchemaError(f"{path}: {error}") from error


# ----------------------------------------------------------------------------- cells


def gain_auc(gains: pd.DataFrame) -> pd.Series:
    """Trapezoid area under gain vs budget fraction through (0,0), (⅛,g), (¼,g), (½,g), (1,g).

    Equals 0.125·g⅛ + 0.1875·g¼ + 0.375·g½ + 0.25·g1; NaN when any gain is missing. A defense that only
    slows adaptation down keeps the final gain but lowers this area.
    """
    xs = (0.0, *GAIN_FRACTIONS)
    weights = [(xs[i + 1] - xs[i - 1]) / 2 if i + 1 < len(xs) else (xs[i] - xs[i - 1]) / 2
               for i in range(1, len(xs))]
    return sum(weight * gains[name] for weight, name in zip(weights, GAIN_COLUMNS, strict=True))


def _reference_rows(cells: pd.DataFrame) -> pd.DataFrame:
    """The ok `none` rows, one per MATCH_KEY, with the columns other cells are normalised by."""
    reference = cells[(cells["defense"] == REFERENCE_DEFENSE) & (cells["status"] == "ok")]
    duplicated = reference.duplicated(list(MATCH_KEY), keep=False)
    if duplicated.any():
        first = reference[duplicated].iloc[0]
        raise SchemaError("raw frame: several ok 'none' rows for one attack configuration "
                          f"({', '.join(f'{k}={first[k]}' for k in MATCH_KEY)})")
    return pd.DataFrame({
        **{key: reference[key] for key in MATCH_KEY},
        "utility_none": reference["utility"],
        "base_acc_none": reference["base_acc"],
        "merged_acc_none": reference["merged_acc"],
        "gain_none": reference["gain_b1"],
        "gain_auc_none": reference["gain_auc"],
    })


def _ratio(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    """numerator / denominator where the denominator is positive, else NaN (no reference to scale by)."""
    return (numerator / denominator).where(denominator > 0)


def score_cells(raw: pd.DataFrame, validity: ValidityRule | None = None) -> pd.DataFrame:
    """Add the normalised columns (DERIVED_COLUMNS) to the raw cell records.

    Every cell is normalised by the `none` row with equal (track, model, release_format, task, members,
    attack_key, seed) and status ok; its numbers are copied as ``*_none`` so each cell can be recomputed
    by hand. Cells that are not ok, or have no such row (``reference_found`` False), keep NaN in every
    derived number. ``weak`` is decided on the `none` row and so holds for every defense's cell of that
    attack configuration (including failed ones); rows without a reference are not weak.
    """
    validity = validity or ValidityRule()
    cells = conform_frame(raw, "raw")
    duplicated = cells.duplicated(list(CELL_KEY), keep=False)
    if duplicated.any():
        raise SchemaError(f"raw frame: {int(duplicated.sum())} rows share a cell key {list(CELL_KEY)}")
    ok = cells["status"] == "ok"
    merge, finetune = cells["track"] == "merge", cells["track"] == "finetune"
    cells["gain_auc"] = gain_auc(cells).where(ok & finetune)

    joined = cells.merge(_reference_rows(cells), on=list(MATCH_KEY), how="left", indicator="_match",
                         validate="many_to_one")
    found = joined["_match"] == "both"
    reference_gain = (joined["merged_acc_none"] - joined["base_acc_none"]).where(merge, joined["gain_none"])
    expert_gain = joined["utility_none"] - joined["base_acc_none"]
    kept_enough = reference_gain >= validity.min_kept_fraction * expert_gain
    learnt_enough = joined["gain_none"] >= validity.min_finetune_gain
    # Written as "not (passes)" so that a NaN reference counts as weak: an unmeasurable reference is noise.
    weak = found & ~((reference_gain > 0) & kept_enough.where(merge, learnt_enough))

    scored = ok & found
    raw_success = _ratio((joined["merged_acc"] - joined["base_acc"]).where(merge, joined["gain_b1"]),
                         reference_gain)
    derived = pd.DataFrame(index=joined.index)
    derived["reference_found"] = found
    for name in ("utility_none", "base_acc_none", "merged_acc_none", "gain_none", "gain_auc_none"):
        derived[name] = joined[name]
    derived["gain_auc"] = joined["gain_auc"]
    derived["utility_retention"] = _ratio(joined["utility"], joined["utility_none"])
    derived["reference_gain"] = reference_gain
    derived["attack_success"] = raw_success.clip(0.0, 1.0)
    derived["attack_success_auc"] = _ratio(joined["gain_auc"], joined["gain_auc_none"]).clip(0.0, 1.0)
    derived["protection"] = derived["utility_retention"] * (1.0 - derived["attack_success"])
    numbers = [name for name in DERIVED_COLUMNS if DTYPES[name] == "float64"]
    derived[numbers] = derived[numbers].where(scored, axis=0)
    derived["merged_acc_none"] = derived["merged_acc_none"].where(merge)
    for name in ("gain_none", "gain_auc_none", "gain_auc", "attack_success_auc"):
        derived[name] = derived[name].where(finetune)
    derived["weak"] = weak
    floor_ok = (joined["merged_acc_members"] >= validity.members_floor * joined["members_expert_acc"])
    derived["members_floor_ok"] = finetune | (joined["n_members"] == 0) | floor_ok

    result = pd.concat([cells[list(RAW_COLUMNS)], derived[list(DERIVED_COLUMNS)]], axis=1)
    return conform_frame(result, "cells")


def validity_failures(cells: pd.DataFrame) -> list[str]:
    """DESIGN §6's run-level rule: every track × architecture needs an attack that is not weak on `none`.

    Returns one message per (track, model) that breaks it (empty list: the run may be published).
    Pairs whose every row is n/a (only unsupported defenses) are skipped.
    """
    cells = conform_frame(cells, "cells")
    failures = []
    for (track, model), group in cells.groupby(["track", "model"], sort=True):
        if (group["status"] == "n/a").all():
            continue
        reference = group[(group["defense"] == REFERENCE_DEFENSE) & (group["status"] == "ok")]
        if reference.empty:
            failures.append(f"{track} track, {model}: no ok '{REFERENCE_DEFENSE}' cell to normalise by")
        elif reference["weak"].all():
            failures.append(f"{track} track, {model}: every attack is weak against "
                            f"'{REFERENCE_DEFENSE}' ({', '.join(sorted(reference['attack'].unique()))})")
    return failures


# ----------------------------------------------------------------------------- aggregates


def valid_mask(cells: pd.DataFrame) -> pd.Series:
    """Cells that count in aggregates: ok, normalised by a `none` row, not weak, with a success value."""
    return ((cells["status"] == "ok") & cells["reference_found"] & ~cells["weak"]
            & cells["attack_success"].notna())


_SUMMARY_METRICS = ("worst_attack_success", "bounded_worst_attack_success", "mean_attack_success",
                    "utility", "utility_retention", "protection_worst", "worst_attack_success_auc")


def _summarise_attacks(group: pd.DataFrame) -> dict[str, Any]:
    """Numbers over the valid attacks of one (defense, track, model, format, seed, task).

    Every (attack configuration, member set) cell counts as an attack: the attacker picks whom to merge
    with. Ties for the worst attack go to the alphabetically first (attack, attack_key).
    """
    success = group["attack_success"]
    worst = success.max()
    tied = group[success == worst].sort_values(["attack", "attack_key"], kind="mergesort")
    retention = group["utility_retention"].mean()
    return {
        "worst_attack_success": worst,
        "bounded_worst_attack_success": success[group["members_floor_ok"]].max(),
        "mean_attack_success": success.mean(),
        "utility": group["utility"].mean(),
        "utility_retention": retention,
        "protection_worst": retention * (1.0 - worst),
        "worst_attack_success_auc": group["attack_success_auc"].max(),
        "worst_attack": tied["attack"].iloc[0],
        "worst_attack_key": tied["attack_key"].iloc[0],
        "n_attacks": len(group),
    }


def attack_summaries(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (defense, track, model, release_format, seed, task): stage 1 of :func:`aggregate`."""
    cells = conform_frame(cells, "cells")
    keys = [*GROUP_KEY, "seed", "task"]
    valid = cells[valid_mask(cells)]
    rows = [dict(zip(keys, key, strict=True)) | _summarise_attacks(group)
            for key, group in valid.groupby(keys, sort=True)]
    columns = [*keys, *_SUMMARY_METRICS, "worst_attack", "worst_attack_key", "n_attacks"]
    return pd.DataFrame(rows, columns=columns)


def seed_summaries(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (defense, track, model, release_format, seed): stage 2, the per-task numbers averaged
    over tasks (a task with no valid attack has no row in stage 1 and so does not count)."""
    per_task = attack_summaries(cells)
    keys = [*GROUP_KEY, "seed"]
    if per_task.empty:
        return pd.DataFrame(columns=[*keys, *_SUMMARY_METRICS, "n_tasks"])
    grouped = per_task.groupby(keys, sort=True)
    per_seed = grouped[list(_SUMMARY_METRICS)].mean()
    per_seed["n_tasks"] = grouped["task"].nunique()
    return per_seed.reset_index()


def mean_ci95(values: Sequence[float] | pd.Series) -> tuple[float, float]:
    """Mean over seeds and the half-width of its 95% Student-t interval (NaN below two values).

    half-width = t.ppf(0.975, n − 1) · s / √n, s the sample standard deviation (ddof 1); NaNs dropped.
    """
    array = np.asarray(pd.Series(values, dtype="float64").dropna())
    n = len(array)
    if n == 0:
        return math.nan, math.nan
    mean = float(array.mean())
    if n < 2:
        return mean, math.nan
    return mean, float(stats.t.ppf(0.975, n - 1) * array.std(ddof=1) / math.sqrt(n))


def _worst_attack(per_task: pd.DataFrame) -> tuple[str, str]:
    """Most frequent worst attack name over (seed, task); ties go to the higher mean worst success, then
    the name; the key is the most frequent key among those picks (ties: alphabetical)."""
    if per_task.empty:
        return "", ""
    ranking = (per_task.groupby("worst_attack")["worst_attack_success"].agg(["size", "mean"])
               .reset_index().sort_values(["size", "mean", "worst_attack"], ascending=[False, False, True],
                                          kind="mergesort"))
    name = ranking["worst_attack"].iloc[0]
    keys = per_task.loc[per_task["worst_attack"] == name, "worst_attack_key"].value_counts()
    key = sorted(keys[keys == keys.max()].index)[0]
    return str(name), str(key)


def _joined(values: pd.Series) -> str:
    """A provenance value that should be constant; several values are kept visibly, joined with ';'."""
    return ";".join(sorted({v for v in values.tolist() if v}))


def aggregate(cells: pd.DataFrame) -> pd.DataFrame:
    """One leaderboard row per (defense, track, model, release_format), `none` included.

    Order of averaging, over the valid cells (:func:`valid_mask`: ok, referenced, not weak):
      1. per (seed, task), over attacks: worst = max attack_success; bounded worst = max over the
         cells with members_floor_ok; mean attack_success; mean utility; mean utility_retention;
         protection_worst = utility_retention × (1 − worst); worst AUC success = max attack_success_auc;
      2. per seed: the mean of each number over tasks;
      3. across seeds: the mean and a 95% Student-t half-width (``*_ci95``, NaN with one seed).
    ``worst_attack`` is the most frequent stage-1 worst attack. ``status`` is "n/a" when every row of
    the group is n/a (the defense does not support that architecture). Counts: n_attacks_valid /
    n_attacks_weak are distinct attack_keys with at least one valid / weak cell (an attack weak on one
    task and valid on another counts in both), n_cells_failed and n_cells_unmatched (ok cells with no
    `none` row to normalise by) count cells.
    """
    cells = conform_frame(cells, "cells")
    per_task = attack_summaries(cells)
    per_seed = seed_summaries(cells)
    valid = valid_mask(cells)
    seeds_of = {key: frame for key, frame in per_seed.groupby(list(GROUP_KEY))}
    tasks_of = {key: frame for key, frame in per_task.groupby(list(GROUP_KEY))}
    rows = []
    for key, group in cells.groupby(list(GROUP_KEY), sort=True):
        seeds = seeds_of.get(key, per_seed.iloc[:0])
        tasks = tasks_of.get(key, per_task.iloc[:0])
        row: dict[str, Any] = {**dict(zip(GROUP_KEY, key, strict=True)), "family": _joined(group["family"]),
                               "status": "n/a" if (group["status"] == "n/a").all() else "ok"}
        for metric in AGGREGATE_METRICS:
            row[metric], row[f"{metric}_ci95"] = mean_ci95(seeds[metric])
        row["worst_attack"], row["worst_attack_key"] = _worst_attack(tasks)
        group_valid = valid[group.index]
        row |= {
            "n_seeds": int(seeds["seed"].nunique()),
            "n_tasks": int(group.loc[group_valid, "task"].nunique()),
            "n_attacks_valid": int(group.loc[group_valid, "attack_key"].nunique()),
            "n_attacks_weak": int(group.loc[group["weak"], "attack_key"].nunique()),
            "n_cells_failed": int((group["status"] == "failed").sum()),
            "n_cells_unmatched": int(((group["status"] == "ok") & ~group["reference_found"]).sum()),
        }
        row |= {name: _joined(group[name]) for name in PROVENANCE_COLUMNS}
        rows.append(row)
    board = pd.DataFrame(rows, columns=list(LEADERBOARD_COLUMNS))
    return sort_frame(conform_frame(board, "leaderboard"), "leaderboard")
