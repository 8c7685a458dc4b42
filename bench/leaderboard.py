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

from bench.readme import (  # noqa: F401 - the run-file names are re-exported for their importers
    CELLS_FILE,
    LEADERBOARD_FILE,
    PLOT_FILE,
    README_FILE,
    RUN_FILES,
    TRACKS,
    markdown_table,
    render_readme,
)
from bench.results import (
    LEADERBOARD_COLUMNS,
    REFERENCE_DEFENSE,
    SchemaError,
    ValidityRule,
    aggregate,
    conform_frame,
    read_csv,
    write_csv,
)
from bench.storage import write_text_atomic

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class PublishError(RuntimeError):
    """A run that cannot be published as it is; the message says which file and why."""


# ----------------------------------------------------------------------------- small helpers


# ----------------------------------------------------------------------------- plot


def plot_utility_vs_attack(board: pd.DataFrame, path: Path) -> None:
    """Utility retention vs worst-case attack success, one point per defense × model × format, a panel per
    track. Colour names the defense, the marker the model, a hollow marker the adapter format; legends say
    which, so labels never overlap where points cluster (they do near success 1). Error bars are the 95%
    intervals, cut at the metrics' bounds. Uses the Agg canvas directly: no global backend change."""
    from matplotlib.lines import Line2D

    tracks = [track for track in TRACKS if (board["track"] == track).any()] or ["merge"]
    figure = Figure(figsize=(6.5 * len(tracks) + 2.5, 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    scored = board[(board["status"] == "ok") & board["worst_attack_success"].notna()
                   & board["utility_retention"].notna()]
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]
    colours = {name: palette[i % len(palette)] for i, name in enumerate(sorted(scored["defense"].unique()))}
    markers = {model: "osD^v<>p"[i % 8] for i, model in enumerate(sorted(scored["model"].unique()))}
    for axes, track in zip(figure.subplots(1, len(tracks), squeeze=False)[0], tracks, strict=True):
        rows = scored[scored["track"] == track]
        for _, row in rows.iterrows():
            x, y = row["worst_attack_success"], row["utility_retention"]
            x_ci, y_ci = _bar(row["worst_attack_success_ci95"]), _bar(row["utility_retention_ci95"])
            colour = colours[row["defense"]]
            axes.errorbar(x, y, xerr=[[min(x_ci, x)], [min(x_ci, 1.0 - x)]], yerr=[[min(y_ci, y)], [y_ci]],
                          fmt=markers[row["model"]], capsize=3, color=colour, markersize=8, alpha=0.85,
                          markerfacecolor="none" if row["release_format"] == "adapter" else colour)
        if rows.empty:
            axes.text(0.5, 0.5, "no scored rows", ha="center", va="center", transform=axes.transAxes)
        top = max(1.1, float(rows["utility_retention"].max()) + 0.1) if not rows.empty else 1.1
        axes.set(xlim=(-0.05, 1.1), ylim=(0.0, top), title=f"{track} track",
                 xlabel="worst-case attack success (lower is better)", ylabel="utility retention")
        axes.grid(alpha=0.3)
    handles = [Line2D([], [], color=colour, marker="o", linestyle="", label=name) for name, colour in colours.items()]
    handles += [Line2D([], [], color="#444", marker=marker, linestyle="", label=model) for model, marker in markers.items()]
    handles += [Line2D([], [], color="#444", marker="o", linestyle="", label="full weights"),
                Line2D([], [], color="#444", marker="o", markerfacecolor="none", linestyle="", label="adapter")]
    figure.legend(handles=handles, loc="outside right center", fontsize=9, frameon=False)
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
    write_text_atomic(run_dir / README_FILE, render_readme(cells, board, title, validity))


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

    Complete: every RUN_FILES present, both CSVs pass their schemas, at least one cell, the plot is a PNG
    and leaderboard.csv is the aggregate of cells.csv.
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
    # Track × architecture pairs without a valid attack are published as `invalid`, with the reason in the
    # README (DESIGN §6): the leaderboard says so instead of hiding them; their rows hold no numbers.
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


#: Hand-written findings, `leaderboard/findings/<name>.md`: what the numbers of a published run mean and
#: which claims changed against its previous publication. Publishing puts them at the top of its README.
FINDINGS_DIR = "findings"


def with_findings(readme: str, findings: str) -> str:
    """The README with a `## Findings` section after its opening paragraph."""
    head, _, rest = readme.partition("\n## ")
    return f"{head.rstrip()}\n\n## Findings\n\n{findings.strip()}\n\n## {rest}" if rest else readme + findings


def publish(run_dir: Path, leaderboard_dir: Path, name: str | None = None) -> Path:
    """Copy a complete, valid run into `leaderboard_dir/<name>/` (atomically, replacing an earlier copy),
    with the hand-written `leaderboard_dir/findings/<name>.md` inserted into its README when it exists, and
    regenerate `leaderboard_dir/README.md` and the static page `leaderboard_dir/index.html`.
    Returns the published folder."""
    run_dir, leaderboard_dir = Path(run_dir), Path(leaderboard_dir)
    name = name or run_dir.resolve().name
    _check_name(name)
    check_run(run_dir)
    leaderboard_dir.mkdir(parents=True, exist_ok=True)
    target = leaderboard_dir / name

    findings = leaderboard_dir / FINDINGS_DIR / f"{name}.md"

    def fill(scratch: Path) -> None:
        for file in RUN_FILES:
            shutil.copy2(run_dir / file, scratch / file)
        if findings.is_file():
            readme = scratch / README_FILE
            readme.write_text(with_findings(readme.read_text(), findings.read_text()))

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
    lines += markdown_table(header, [_index_row(folder) for folder in folders]) if folders else ["No runs yet."]
    write_text_atomic(leaderboard_dir / README_FILE, "\n".join(lines) + "\n")


__all__ = [
    "PublishError", "RUN_FILES", "check_run", "plot_utility_vs_attack", "publish",
    "render_readme", "write_index", "write_run_outputs",
]
