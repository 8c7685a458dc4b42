"""`lockbench regress`: the CI gate. Re-run a preset and compare it with a committed baseline.

The baseline is a `cells.csv` (same schema, written by the same code) of an earlier run of the preset.
A change fails the gate when a defense's attack success rises above the baseline's own bootstrap interval
(seeds and test examples) by more than a tolerance, a utility falls below it, `none`'s pick (what the
attacks reach without protection) falls below it, a row's inputs all turn void, a cell that worked now
fails or is missing, or the run breaks the validity rule. It never compares one cell's point value with
another machine's: those move with the CPU's floating point. Cells are matched on
`bench.results.CELL_KEY`; rows on `GROUP_KEY` of their aggregates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from bench.presets import PresetError, load_preset
from bench.report.leaderboard import CELLS_FILE, RULE_FILE, PublishError, read_rule, run_and_write
from bench.results import (
    CELL_KEY,
    GROUP_KEY,
    RAW_COLUMNS,
    REFERENCE_DEFENSE,
    SchemaError,
    ValidityRule,
    aggregate,
    read_csv,
    score_cells,
    validity_failures,
    write_csv,
)
from bench.runtime.runlog import library_output
from bench.runtime.storage import storage_root

DEFAULT_TOLERANCE = 0.05
REGRESSIONS_FILE = "regressions.csv"
#: Differences smaller than this are float noise, not a change beyond the tolerance.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Regression:
    """One reason the gate fails, naming the cell (or the defense aggregate) it concerns."""

    check: str
    level: str  # "cell", "defense" or "run"
    defense: str = ""
    track: str = ""
    model: str = ""
    family: str = ""
    release_format: str = ""
    task: str = ""
    members: str = ""
    attack: str = ""
    seed: str = ""
    baseline: float = math.nan
    current: float = math.nan
    detail: str = ""


@dataclass
class Comparison:
    regressions: list[Regression]
    notes: list[str]

    @property
    def ok(self) -> bool:
        return not self.regressions


def read_baseline(path: Path) -> pd.DataFrame:
    """A baseline CSV: a cells table (its schema is checked)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"baseline {path} does not exist; make one with "
                                f"`lockbench regress --preset PRESET --write-baseline {path}`")
    return read_csv(path, "cells")


def write_baseline(cells: pd.DataFrame, path: Path) -> None:
    write_csv(cells, Path(path), "cells")


def _identity(row: pd.Series, level: str) -> dict[str, str]:
    names = ("defense", "track", "model", "family", "release_format")
    identity = {name: str(row.get(name, "")) for name in names}
    if level == "cell":
        identity |= {"task": str(row["task"]), "members": str(row["members"]), "attack": str(row["attack"]),
                     "seed": str(row["seed"])}
    return identity


def _number(value: object) -> float:
    return math.nan if value is None or pd.isna(value) else float(value)


def _bounds(row: pd.Series, column: str) -> tuple[float, float, float]:
    """(point, low, high) of a baseline aggregate; without an interval the point is both ends."""
    point = _number(row[f"{column}_base"])
    low, high = _number(row[f"{column}_lo_base"]), _number(row[f"{column}_hi_base"])
    return point, point if math.isnan(low) else min(low, point), point if math.isnan(high) else max(high, point)


def _spread_changes(boards: pd.DataFrame, tolerance: float) -> list[Regression]:
    """Per row (defense × track × model × format): what moved outside the baseline's own interval (seeds and
    test examples, DESIGN §5) by more than the tolerance. A defense's attack success above it or its
    utility below it; `none`'s pick value below it (an attack that weakens flatters every defense); a row
    whose inputs all turned void."""
    found = []
    for _, row in boards.iterrows():
        identity = _identity(row, "defense")
        is_none = row["defense"] == REFERENCE_DEFENSE
        checks = [("pick_value", "attack weakened against 'none'", -1)] if is_none else [
            ("attack_success", "attack success rose", 1)]
        checks.append(("utility", "utility fell", -1))
        for column, check, direction in checks:
            point, low, high = _bounds(row, column)
            now = _number(row[f"{column}_now"])
            if math.isnan(point) or math.isnan(now):
                continue
            edge = high if direction > 0 else low
            beyond = (now - edge) * direction
            if beyond > tolerance + _EPSILON:
                found.append(Regression(check, "defense", **identity, baseline=point, current=now,
                                        detail=f"{now:.3f} is {beyond:.3f} {'above' if direction > 0 else 'below'} "
                                               f"the baseline's interval [{low:.3f}, {high:.3f}] (> {tolerance:g})"))
        if row["status_base"] == "ok" and row["status_now"] == "invalid":
            found.append(Regression(f"attack stopped working against '{REFERENCE_DEFENSE}'" if is_none
                                    else "every input turned void", "defense", **identity,
                                    detail=f"the row is now invalid: {row['flags_now'] or 'every input void'}"))
    return found


def compare(baseline: pd.DataFrame, current: pd.DataFrame, tolerance: float = DEFAULT_TOLERANCE,
            allow_invalid: bool = False, rule: ValidityRule | None = None) -> Comparison:
    """Everything in `current` that is worse than `baseline` (both cells tables, aggregated under `rule`).

    Numbers are judged per row against the baseline's own bootstrap interval, never cell by cell against
    one machine's point values: a cell's number moves with the CPU's floating point (DESIGN §8), a row's
    interval says how far it moves with seeds and test examples. Cells are checked for structure only:
    missing from this run, or failed where they ran."""
    regressions: list[Regression] = []
    notes: list[str] = []
    # derived numbers are recomputed from the raw columns under the rule: an edited CSV cannot disagree with itself
    baseline, current = (score_cells(frame[list(RAW_COLUMNS)], rule) for frame in (baseline, current))
    keys = list(CELL_KEY)
    joined = baseline.merge(current, on=keys, how="outer", suffixes=("_base", "_now"), indicator="_side")
    for column in ("family", "attack", "error"):  # identity columns outside the key: this run's, else the baseline's
        joined[column] = joined[f"{column}_now"].where(joined[f"{column}_now"].notna(), joined[f"{column}_base"])
    both = joined[joined["_side"] == "both"]

    for _, row in joined[joined["_side"] == "left_only"].iterrows():
        regressions.append(Regression("cell missing from this run", "cell", **_identity(row, "cell"),
                                      detail="in the baseline, not in this run (grid changed? regenerate it)"))
    new = int((joined["_side"] == "right_only").sum())
    if new:
        notes.append(f"{new} cells of this run are not in the baseline (new defenses or attacks?): they are not "
                     "compared until the baseline is regenerated")
    for _, row in both[(both["status_base"] == "ok") & (both["status_now"] == "failed")].iterrows():
        regressions.append(Regression("cell failed", "cell", **_identity(row, "cell"), detail=str(row["error"])))

    group = list(GROUP_KEY)
    boards = aggregate(baseline, rule).merge(aggregate(current, rule), on=group, how="inner", suffixes=("_base", "_now"))
    boards["family"] = boards["family_now"]
    regressions += _spread_changes(boards, tolerance)

    for problem in validity_failures(current, rule):
        track, _, rest = problem.partition(" track, ")
        model = rest.partition(":")[0]
        if allow_invalid:
            notes.append(f"validity rule broken (allowed): {problem}")
        else:
            regressions.append(Regression("validity rule broken", "run", track=track, model=model, detail=problem))

    for column in ("zoo_hash", "torch_version", "transformers_version", "peft_version", "mergekit_version"):
        before, after = set(baseline[column]) - {""}, set(current[column]) - {""}
        if before != after:
            notes.append(f"{column} differs: baseline {sorted(before)}, this run {sorted(after)} — numbers may "
                         "move for that reason alone; regenerate the baseline if the change is intended")
    return Comparison(regressions, notes)


def regressions_frame(comparison: Comparison) -> pd.DataFrame:
    columns = list(Regression.__dataclass_fields__)
    return pd.DataFrame([asdict(r) for r in comparison.regressions], columns=columns)


def _fmt(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"


def render(comparison: Comparison, console: Console, baseline: Path, tolerance: float) -> None:
    """The gate's verdict: a table naming every regressed cell or defense, and the notes."""
    for note in comparison.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    if comparison.ok:
        console.print(f"[green]regress: no regression against {baseline} (tolerance {tolerance:g})[/green]")
        return
    table = Table(title=f"regressions against {baseline} (tolerance {tolerance:g})", show_lines=False)
    for column in ("check", "level", "defense", "track", "architecture", "format", "task", "attack", "members",
                   "seed", "baseline", "now", "detail"):
        table.add_column(column, overflow="fold")
    for r in comparison.regressions:
        architecture = f"{r.model} ({r.family})" if r.family and r.family != r.model else r.model
        table.add_row(r.check, r.level, r.defense, r.track, architecture, r.release_format, r.task, r.attack,
                      r.members, r.seed, _fmt(r.baseline), _fmt(r.current), r.detail)
    console.print(table)
    console.print(f"[red]regress: {len(comparison.regressions)} regression(s) against {baseline}[/red]")


def wide_console() -> Console:
    """CI logs are not terminals: give the table room instead of rich's 80-column default."""
    console = Console()
    return console if console.is_terminal else Console(width=220)


def regress_command(baseline: Path | None, preset_name: str, tolerance: float, out: Path | None, root: Path | None,
                    executor: str, run_dir: Path | None, write_to: Path | None, allow_invalid: bool) -> int:
    """`lockbench regress`: 0 no regression (or baseline written), 1 regressions, 2 wrong usage."""

    console, errors = wide_console(), Console(stderr=True)

    def fail(message: str, code: int = 2) -> int:
        errors.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        return code

    if (baseline is None) == (write_to is None):
        return fail("give --baseline CSV to compare, or --write-baseline CSV to make one")
    if tolerance < 0:
        return fail(f"--tolerance must be >= 0, got {tolerance}")
    if executor not in ("serial", "ray"):
        return fail(f"unknown executor '{executor}'; choose serial or ray")
    try:
        base = read_baseline(baseline) if baseline is not None else None
    except (FileNotFoundError, SchemaError) as error:
        return fail(str(error))
    summary = None
    if run_dir is None:
        try:
            preset = load_preset(preset_name)
        except PresetError as error:
            return fail(str(error))
        if preset.grid is None:
            return fail(f"preset '{preset.name}' has no grid section")
        run_dir = (out or Path("runs") / f"regress-{preset.name}").resolve()
        with library_output(run_dir):  # library chatter (Ray's start-up notes too) -> the run's lockbench.log
            summary = run_and_write(preset, storage_root(root), run_dir, executor)  # type: ignore[arg-type]
        console.print(f"{summary.cells} cells ({summary.cached} cached, {summary.failed} failed) in "
                      f"{summary.seconds:.1f}s -> {run_dir}")
    try:  # the run just computed is used as returned; a given run directory is read
        if summary is not None and summary.frame is not None:
            current, rule = summary.frame, summary.rule or ValidityRule()
        else:
            current = read_csv(Path(run_dir) / CELLS_FILE, "cells")
            rule = read_rule(Path(run_dir)) if (Path(run_dir) / RULE_FILE).is_file() else ValidityRule()
    except (SchemaError, PublishError) as error:
        return fail(str(error))
    if write_to is not None:
        problems = validity_failures(current, rule)
        if problems and not allow_invalid:
            return fail(f"refusing to write a baseline from a run that breaks the validity rule: {'; '.join(problems)}",
                        1)
        write_baseline(current, write_to)
        console.print(f"baseline of {len(current)} cells written to {write_to}")
        return 0
    assert base is not None and baseline is not None
    comparison = compare(base, current, tolerance, allow_invalid, rule)
    regressions_frame(comparison).to_csv(Path(run_dir) / REGRESSIONS_FILE, index=False)
    render(comparison, console, baseline, tolerance)
    return 0 if comparison.ok else 1


__all__ = ["Comparison", "DEFAULT_TOLERANCE", "Regression", "SchemaError", "compare", "read_baseline", "render",
           "regress_command", "regressions_frame", "write_baseline", "wide_console"]
