"""The results layer: column declarations, metric declarations, schemas, CSV files, normalisation and
aggregation (DESIGN §5, §6). Reports (README, plot, HTML) and the regression gate read it; nothing here
imports them."""

from bench.results.aggregate import aggregate, aggregate_all, family_gaps, validity_failures
from bench.results.columns import (
    GAIN_COLUMNS,
    GAIN_FRACTIONS,
    PROVENANCE_COLUMNS,
    RAW_COLUMNS,
    TIMING_COLUMNS,
)
from bench.results.csvio import read_csv, write_csv
from bench.results.metrics import AGGREGATE_METRICS, CELL_METRICS, formula_lines
from bench.results.normalise import ValidityRule, score_cells, valid_mask
from bench.results.picks import pick_inputs
from bench.results.schema import (
    CELL_COLUMNS,
    CELL_KEY,
    CONTROL_DEFENSE,
    DERIVED_COLUMNS,
    DTYPES,
    GROUP_KEY,
    LEADERBOARD_COLUMNS,
    MATCH_KEY,
    REFERENCE_DEFENSE,
    SCHEMAS,
    VALIDITY_KEY,
    SchemaError,
    conform_frame,
    sort_frame,
)

__all__ = [
    "AGGREGATE_METRICS", "CELL_COLUMNS", "CELL_KEY", "CELL_METRICS", "CONTROL_DEFENSE", "DERIVED_COLUMNS", "DTYPES",
    "GAIN_COLUMNS", "GAIN_FRACTIONS", "GROUP_KEY", "LEADERBOARD_COLUMNS", "MATCH_KEY", "PROVENANCE_COLUMNS",
    "RAW_COLUMNS", "REFERENCE_DEFENSE", "SCHEMAS", "TIMING_COLUMNS", "VALIDITY_KEY", "SchemaError", "ValidityRule",
    "aggregate", "aggregate_all", "conform_frame", "family_gaps", "formula_lines", "pick_inputs", "read_csv",
    "score_cells", "sort_frame", "valid_mask", "validity_failures", "write_csv",
]
