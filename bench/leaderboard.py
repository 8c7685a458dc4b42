"""A run directory's human outputs (README with formulas, plot) and publishing it under leaderboard/.

A run directory holds exactly RUN_FILES. README.md is written last, so a run killed mid-way lacks it and
:func:`publish` refuses it; publish also re-reads both CSVs through their schemas and recomputes the
leaderboard from cells.csv, so what lands in leaderboard/ is always complete and self-consistent.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.scoring import (
    GAIN_FRACTIONS,
    LEADERBOARD_COLUMNS,
    MATCH_KEY,
    PROVENANCE_COLUMNS,
    REFERENCE_DEFENSE,
    SchemaError,
    ValidityRule,
    aggregate,
    conform_frame,
    read_csv,
    validity_failures,
    write_csv,
)

CELLS_FILE = "cells.csv"
LEADERBOARD_FILE = "leaderboard.csv"
README_FILE = "README.md"
PLOT_FILE = "utility_vs_attack.png"
RUN_FILES: tuple[str, ...] = (CELLS_FILE, LEADERBOARD_FILE, README_FILE, PLOT_FILE)
TRACKS: tuple[str, ...] = ("merge", "finetune")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PublishError(RuntimeError):
    """A run that cannot be published as it is; the message says which file and why."""


# ----------------------------------------------------------------------------- small helpers


def _write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary sibling and os.replace, so readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


def _cell(text: object) -> str:
    """A markdown table cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _number(mean: float, ci: float | None = None) -> str:
    """`0.512 ± 0.031`; the ± part is left out with one seed; – for no value."""
    if mean is None or math.isnan(mean):
        return "–"
    if ci is None or math.isnan(ci):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {ci:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return lines


def _ordered(board: pd.DataFrame) -> pd.DataFrame:
    """Rows per model and format, the `none` reference first, then defenses by name."""
    order = board.assign(_reference=board["defense"] != REFERENCE_DEFENSE)
    order = order.sort_values(["model", "release_format", "_reference", "defense"], kind="mergesort")
    return order.drop(columns="_reference")


# ----------------------------------------------------------------------------- README


def _track_table(board: pd.DataFrame, track: str) -> list[str]:
    header = ["defense", "model", "format", "utility", "utility retention", "worst-case attack success",
              "bounded worst case", "mean attack success", "protection (worst case)", "worst attack", "seeds",
              "attacks valid / weak", "failed cells"]
    if track == "finetune":
        header.insert(8, "worst-case AUC success")
    rows = []
    for _, row in _ordered(board[board["track"] == track]).iterrows():
        if row["status"] == "n/a":
            numbers = ["n/a"] * (len(header) - 3)
        else:
            metrics = ["utility", "utility_retention", "worst_attack_success", "bounded_worst_attack_success",
                       "mean_attack_success", "protection_worst"]
            if track == "finetune":
                metrics.insert(5, "worst_attack_success_auc")
            numbers = [_number(row[m], row[f"{m}_ci95"]) for m in metrics]
            numbers += [row["worst_attack"] or "–", str(row["n_seeds"]),
                        f"{row['n_attacks_valid']} / {row['n_attacks_weak']}", str(row["n_cells_failed"])]
        rows.append([row["defense"], row["model"], row["release_format"], *numbers])
    return _table(header, rows)


def _weak_table(cells: pd.DataFrame) -> list[str]:
    """Which attack configurations were weak on `none`, and in how many of their (task, members, seed)."""
    reference = cells[(cells["defense"] == REFERENCE_DEFENSE) & (cells["status"] == "ok")]
    if not reference["weak"].any():
        return ["No attack configuration was weak in this run."]
    keys = ["track", "model", "release_format", "attack", "attack_key"]
    counts = reference.groupby(keys, sort=True)["weak"].agg(["sum", "size"]).reset_index()
    counts = counts[counts["sum"] > 0]
    rows = [[*(str(row[k]) for k in keys), f"{row['sum']} / {row['size']}"] for _, row in counts.iterrows()]
    return _table(["track", "model", "format", "attack", "attack_key", "weak (task, members, seed)"], rows)


def _versions(board: pd.DataFrame, cells: pd.DataFrame) -> list[str]:
    source = board if not board.empty else cells
    lines = []
    for name in PROVENANCE_COLUMNS:
        values = sorted({part for value in source[name].tolist() for part in value.split(";") if part})
        label = name.removesuffix("_version").replace("_", " ") if name != "zoo_hash" else "zoo hash"
        lines.append(f"- {label}: {', '.join(values) if values else 'unknown'}")
    return lines


def _formulas(validity: ValidityRule) -> list[str]:
    fractions = ", ".join(str(f) for f in GAIN_FRACTIONS)
    match = ", ".join(MATCH_KEY)
    return [
        "## Formulas",
        "",
        "Every number can be recomputed by hand from `cells.csv`; clip(x, 0, 1) = min(max(x, 0), 1).",
        "",
        "**Per cell** (one row of `cells.csv`). The *matching none row* is the row with defense `none`,",
        f"status `ok` and the same ({match}): the same attack configuration run against the unprotected",
        "release. Its numbers are copied into the cell as `utility_none`, `base_acc_none`,",
        "`merged_acc_none`, `gain_none` (its `gain_b1`) and `gain_auc_none`; `reference_found` says",
        "whether it exists. Cells that are not `ok` or have no matching none row have empty derived numbers.",
        "",
        "- `gain_auc` (finetune) = trapezoid area under gain vs budget fraction through (0, 0) and the",
        f"  gains at fractions {fractions}: `gain_auc = 0.125·gain_b0125 + 0.1875·gain_b025 + 0.375·gain_b05",
        "  + 0.25·gain_b1`, where `gain_bX = accuracy on D after fraction X of the attacker's steps −",
        "  acc_before`.",
        "- `utility_retention = utility / utility_none` (empty when utility_none ≤ 0).",
        "- merge track: `reference_gain = merged_acc_none − base_acc_none`;",
        "  `attack_success = clip((merged_acc − base_acc) / reference_gain, 0, 1)`.",
        "- finetune track: `reference_gain = gain_none`; `attack_success = clip(gain_b1 / gain_none, 0, 1)`;",
        "  `attack_success_auc = clip(gain_auc / gain_auc_none, 0, 1)` (empty when gain_auc_none ≤ 0).",
        "- `reference_gain ≤ 0` → `attack_success` is empty and the cell is weak.",
        "- `protection = utility_retention × (1 − attack_success)`.",
        "- `members_floor_ok` (merge) = `merged_acc_members ≥ floor × members_expert_acc` with",
        f"  floor = {validity.members_floor} (true when there are no other members; always true on the",
        "  finetune track).",
        "",
        "**Weak attacks** (DESIGN §6, decided on the matching none row and copied to every defense's cell of",
        "that attack configuration, `weak` column):",
        "",
        f"- merge: weak when `merged_acc_none − base_acc_none < {validity.min_kept_fraction} × "
        "(utility_none − base_acc_none)`, i.e. the unprotected merge keeps less than "
        f"{validity.min_kept_fraction:g} of the expert's gain;",
        f"- finetune: weak when `gain_none < {validity.min_finetune_gain}`;",
        "- also weak when the reference is missing or `reference_gain ≤ 0`.",
        "",
        "A weak attack's normalised success is noise: it stays in `cells.csv`, flagged, and is left out of",
        "every aggregate.",
        "",
        "**Aggregates** (one row of `leaderboard.csv` per defense, track, model, release format). A cell is",
        "*valid* when status is `ok`, `reference_found` is true, `weak` is false and `attack_success` is",
        "set. Over the valid cells, in this order:",
        "",
        "1. per (seed, task), over its cells (every attack configuration and member set):",
        "   `worst = max attack_success`; `bounded worst = max attack_success over cells with",
        "   members_floor_ok`; `mean = mean attack_success`; `utility = mean utility`;",
        "   `utility_retention = mean utility_retention`;",
        "   `protection_worst = utility_retention × (1 − worst)`;",
        "   `worst AUC = max attack_success_auc`;",
        "2. per seed: the mean of each of these over tasks (empty values skipped);",
        "3. across the n seeds: the mean, and `*_ci95 = t(0.975, n − 1) · s / √n` with s the sample",
        "   standard deviation (n − 1 in the denominator) and t Student's quantile; empty with one seed.",
        "",
        "`worst_attack` is the attack most often worst over (seed, task) (ties: higher mean worst success,",
        "then name); `n_attacks_valid` / `n_attacks_weak` count distinct attack configurations with at least",
        "one valid / weak cell; `n_cells_failed` counts failed cells; `n_cells_unmatched` ok cells with no",
        "none row. A defense with status `n/a` declared it does not support that architecture.",
        "The `none` row's attack success is 1 by construction: it is the scale everything is measured on.",
    ]


def render_readme(cells: pd.DataFrame, board: pd.DataFrame, title: str,
                  validity: ValidityRule | None = None) -> str:
    """The run's README: a table per track, the formulas as implemented, weak attacks, versions."""
    validity = validity or ValidityRule()
    lines = [f"# {title}", "",
             "Lower attack success and higher protection are better. `cells.csv` holds one row per cell",
             "with every knob and raw metric; `leaderboard.csv` one row per defense × track × model ×",
             "format. Numbers are means over seeds ± the half-width of a 95% Student-t interval.",
             f"Plot: `{PLOT_FILE}`.",
             ""]
    for track in TRACKS:
        if (board["track"] == track).any():
            lines += [f"## {track} track", "", *_track_table(board, track), ""]
    lines += [*_formulas(validity), "", "## Weak attack configurations", "", *_weak_table(cells), "",
              "## Versions", "", *_versions(board, cells), ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plot


def plot_utility_vs_attack(board: pd.DataFrame, path: Path) -> None:
    """Utility retention vs worst-case attack success, one point per defense × model × format, a panel per
    track; error bars are the 95% intervals, cut at the metrics' bounds (success in [0, 1], retention
    ≥ 0) since the interval of a bounded mean over few seeds overshoots. Uses the Agg canvas directly: no
    global backend change."""
    tracks = [track for track in TRACKS if (board["track"] == track).any()] or ["merge"]
    figure = Figure(figsize=(6.5 * len(tracks), 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    for axes, track in zip(figure.subplots(1, len(tracks), squeeze=False)[0], tracks, strict=True):
        rows = board[(board["track"] == track) & (board["status"] == "ok")]
        rows = rows[rows["worst_attack_success"].notna() & rows["utility_retention"].notna()]
        markers = {model: "osD^v<>p"[i % 8] for i, model in enumerate(sorted(rows["model"].unique()))}
        for _, row in rows.iterrows():
            x, y = row["worst_attack_success"], row["utility_retention"]
            x_ci, y_ci = _bar(row["worst_attack_success_ci95"]), _bar(row["utility_retention_ci95"])
            axes.errorbar(x, y, xerr=[[min(x_ci, x)], [min(x_ci, 1.0 - x)]], yerr=[[min(y_ci, y)], [y_ci]],
                          fmt=markers[row["model"]], capsize=3)
            axes.annotate(f"{row['defense']} ({row['model']}, {row['release_format']})",
                          (row["worst_attack_success"], row["utility_retention"]),
                          textcoords="offset points", xytext=(5, 5), fontsize=8)
        if rows.empty:
            axes.text(0.5, 0.5, "no scored rows", ha="center", va="center", transform=axes.transAxes)
        top = max(1.1, float(rows["utility_retention"].max()) + 0.1) if not rows.empty else 1.1
        axes.set(xlim=(-0.05, 1.1), ylim=(0.0, top), title=f"{track} track",
                 xlabel="worst-case attack success (lower is better)", ylabel="utility retention")
        axes.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        figure.savefig(scratch, format="png", dpi=110)
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


def _bar(ci: float) -> float:
    return 0.0 if ci is None or math.isnan(ci) else float(ci)


# ----------------------------------------------------------------------------- run outputs


def write_run_outputs(run_dir: Path, cells: pd.DataFrame, board: pd.DataFrame, title: str,
                      validity: ValidityRule | None = None) -> None:
    """Write RUN_FILES into `run_dir`; README.md last, so its presence marks a complete run."""
    run_dir = Path(run_dir)
    cells = conform_frame(cells, "cells")
    board = conform_frame(board, "leaderboard")
    write_csv(cells, run_dir / CELLS_FILE, "cells")
    write_csv(board, run_dir / LEADERBOARD_FILE, "leaderboard")
    plot_utility_vs_attack(board, run_dir / PLOT_FILE)
    _write_text_atomic(run_dir / README_FILE, render_readme(cells, board, title, validity))


# ----------------------------------------------------------------------------- publishing


def _check_name(name: str) -> None:
    if not name or name in {".", ".."} or name.startswith(".") or "/" in name or "\\" in name:
        raise PublishError(f"invalid run name {name!r}: use a plain folder name")


def _check_consistent(cells: pd.DataFrame, board: pd.DataFrame, run_dir: Path) -> None:
    """leaderboard.csv must be what aggregate() makes of cells.csv: no mixing files from two runs."""
    expected = aggregate(cells).reset_index(drop=True)
    actual = board.reset_index(drop=True)
    keys = ["track", "model", "release_format", "defense"]
    if expected[keys].values.tolist() != actual[keys].values.tolist():
        raise PublishError(f"refusing to publish {run_dir}: {LEADERBOARD_FILE} rows do not match the "
                           f"groups of {CELLS_FILE}")
    try:
        pd.testing.assert_frame_equal(actual[list(LEADERBOARD_COLUMNS)], expected[list(LEADERBOARD_COLUMNS)],
                                      check_exact=False, rtol=1e-9, atol=1e-12)
    except AssertionError as error:
        reason = " ".join(str(error).split())[:200]
        raise PublishError(f"refusing to publish {run_dir}: {LEADERBOARD_FILE} is not the aggregate of "
                           f"{CELLS_FILE} ({reason})") from error


def check_run(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (cells, board) of a complete, valid run directory, else raise PublishError.

    Complete: every RUN_FILES present, both CSVs pass their schemas, at least one cell, DESIGN §6's
    run-level validity rule holds, the plot is a PNG and leaderboard.csv is the aggregate of cells.csv.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PublishError(f"refusing to publish {run_dir}: not a directory")
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise PublishError(f"refusing to publish {run_dir}: missing {', '.join(missing)} (incomplete run)")
    try:
        cells = read_csv(run_dir / CELLS_FILE, "cells")
        board = read_csv(run_dir / LEADERBOARD_FILE, "leaderboard")
    except SchemaError as error:
        raise PublishError(f"refusing to publish {run_dir}: {error}") from error
    if cells.empty:
        raise PublishError(f"refusing to publish {run_dir}: {CELLS_FILE} has no cells")
    failures = validity_failures(cells)
    if failures:
        raise PublishError(f"refusing to publish {run_dir}: validity rule broken: {'; '.join(failures)}")
    with open(run_dir / PLOT_FILE, "rb") as stream:
        if stream.read(len(_PNG_SIGNATURE)) != _PNG_SIGNATURE:
            raise PublishError(f"refusing to publish {run_dir}: {PLOT_FILE} is not a PNG")
    _check_consistent(cells, board, run_dir)
    return cells, board


def publish_directory(target: Path, fill: Callable[[Path], None]) -> Path:
    """Fill a scratch sibling of `target`, make it world-readable (run files are written 0600 through
    mkstemp; published ones are for everyone) and swap it in by renames: a reader sees the old folder or
    the new one, never a mix."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    retired = target.parent / f".{target.name}.old"
    try:
        fill(scratch)
        for file in scratch.iterdir():
            file.chmod(0o644)
        scratch.chmod(0o755)
        shutil.rmtree(retired, ignore_errors=True)
        if target.exists():
            os.replace(target, retired)
        os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    return target


def publish(run_dir: Path, leaderboard_dir: Path, name: str | None = None) -> Path:
    """Copy a complete, valid run into `leaderboard_dir/<name>/` (atomically, replacing an earlier copy)
    and regenerate `leaderboard_dir/README.md` and the static page `leaderboard_dir/index.html`.
    Returns the published folder."""
    run_dir, leaderboard_dir = Path(run_dir), Path(leaderboard_dir)
    name = name or run_dir.resolve().name
    _check_name(name)
    check_run(run_dir)
    leaderboard_dir.mkdir(parents=True, exist_ok=True)
    target = leaderboard_dir / name

    def fill(scratch: Path) -> None:
        for file in RUN_FILES:
            shutil.copy2(run_dir / file, scratch / file)

    publish_directory(target, fill)
    write_index(leaderboard_dir)
    from bench.html_report import write_html_index  # imports this module: deferred

    write_html_index(leaderboard_dir)
    return target


def _index_row(folder: Path) -> list[str]:
    """One index line per published run; an unreadable one is listed as such rather than hidden."""
    link = f"[{folder.name}]({folder.name}/{README_FILE})"
    readme = folder / README_FILE
    first = readme.read_text().splitlines()[:1] if readme.is_file() else []
    title = first[0].removeprefix("# ") if first else ""
    try:
        board = read_csv(folder / LEADERBOARD_FILE, "leaderboard")
    except SchemaError as error:
        return [link, title, f"unreadable: {error}", "", "", "", ""]

    def listed(column: str) -> str:
        return ", ".join(sorted({part for value in board[column] for part in value.split(";") if part}))

    best = []
    for track in TRACKS:
        rows = board[(board["track"] == track) & (board["defense"] != REFERENCE_DEFENSE)
                     & board["protection_worst"].notna()]
        if not rows.empty:
            top = rows.loc[rows["protection_worst"].idxmax()]
            best.append(f"{track}: {top['defense']} on {top['model']} ({top['protection_worst']:.3f})")
    return [link, title, listed("track"), listed("defense"), listed("model"),
            "; ".join(best) or "–", f"{listed('lockbench_version')} / {listed('zoo_hash')}"]


def write_index(leaderboard_dir: Path) -> None:
    """Regenerate `leaderboard_dir/README.md` from the published folders (those holding a leaderboard)."""
    leaderboard_dir = Path(leaderboard_dir)
    folders = sorted(path for path in leaderboard_dir.iterdir() if path.is_dir()
                     and not path.name.startswith(".") and (path / LEADERBOARD_FILE).is_file())
    lines = ["# lockbench leaderboard", "",
             "Published runs. Each folder holds `cells.csv` (one row per cell: raw metrics and every knob),",
             "`leaderboard.csv` (one row per defense × track × model × format), a README with the table and",
             "the formulas, and the utility vs attack success plot. Regenerated by",
             "`bench.leaderboard.publish`.", "",
             "Best protection (worst case over attacks) per track, `none` excluded, is shown per run.", ""]
    header = ["run", "title", "tracks", "defenses", "models", "best protection (worst case)",
              "lockbench / zoo hash"]
    lines += _table(header, [_index_row(folder) for folder in folders]) if folders else ["No runs yet."]
    _write_text_atomic(leaderboard_dir / README_FILE, "\n".join(lines) + "\n")


__all__ = [
    "PublishError", "RUN_FILES", "check_run", "plot_utility_vs_attack", "publish",
    "render_readme", "write_index", "write_run_outputs",
]
