"""CSV files of the three tables: validated, sorted, written atomically, read back identical.

Floats are stored with Python's shortest round-tripping ``repr``, so write → read gives back an identical
frame, rows sorted by the key columns (`bench.results.schema.sort_frame`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench.results.columns import LATE_COLUMNS, ColumnKind
from bench.results.schema import SCHEMAS, FrameKind, SchemaError, conform_frame, is_missing, sort_frame
from bench.runtime.storage import replace_atomically


def _to_text(series: pd.Series, kind: ColumnKind) -> list[str]:
    """Exact text for each value: repr() of floats round-trips bit for bit; missing is empty."""
    if kind == "str":
        return series.tolist()
    if kind == "float":
        return ["" if math.isnan(v) else repr(float(v)) for v in series.tolist()]
    if kind in ("int", "Int"):
        return ["" if is_missing(v) else str(int(v)) for v in series.tolist()]
    return ["" if is_missing(v) else ("True" if v else "False") for v in series.tolist()]


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
    """Validate, sort and write `df` atomically (bench.runtime.storage.replace_atomically): readers never see half."""
    frame = sort_frame(conform_frame(df, kind), kind)
    text = pd.DataFrame({column.name: _to_text(frame[column.name], column.kind) for column in SCHEMAS[kind]},
                        dtype=object)
    replace_atomically(Path(path), lambda scratch: text.to_csv(scratch, index=False, lineterminator="\n"))


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
    for name in LATE_COLUMNS:
        if name in kinds and name not in texts.columns:
            texts[name] = ""
    parsed = pd.DataFrame({name: _from_text(texts[name], kinds[name], str(path)) if name in kinds
                           else texts[name] for name in texts.columns}, index=texts.index)
    try:
        return conform_frame(parsed, kind)
    except SchemaError as error:
        raise SchemaError(f"{path}: {error}") from error
