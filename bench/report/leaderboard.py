"""Writing a run directory and publishing it under leaderboard/: the renderers (bench.report.readme for the README,
bench.report.plots for the plot, bench.report.html for the index page) each read the results layer, and this
module calls them.

A run directory holds exactly RUN_FILES. README.md is written last, so a run killed mid-way lacks it and
:func:`publish` refuses it; publish also re-reads both CSVs through their schemas and recomputes the
leaderboard from cells.csv, so what lands in leaderboard/ is always complete and self-consistent.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from bench.harness.executors import ExecutorName
from bench.harness.run import RunSummary, run_benchmark
from bench.presets import Preset
from bench.report.claims import claims_section
from bench.report.html import write_html_index
from bench.report.plots import plot_utility_vs_attack
from bench.report.readme import (  # noqa: F401 - the run-file names are re-exported for their importers
    CELLS_FILE,
    LEADERBOARD_FILE,
    PICKS_FILE,
    PLOT_FILE,
    README_FILE,
    RULE_FILE,
    RUN_FILES,
    SENSITIVITY_FILE,
    TRACKS,
    markdown_table,
    render_readme,
)
from bench.report.tradeoff import TRADEOFF_PATTERN, plot_tradeoffs
from bench.report.trap2_sweep import trap2_sweep_section
from bench.report.trials_plot import TRIALS_PATTERN, plot_trials_to_break
from bench.report.utility import with_board_columns
from bench.results import (
    LEADERBOARD_COLUMNS,
    REFERENCE_DEFENSE,
    SchemaError,
    ValidityRule,
    aggregate_all,
    conform_frame,
    read_csv,
    write_csv,
)
from bench.runtime.storage import fault_point, write_text_atomic

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Plots drawn only where a run has what they show: strength sweeps, searched attackers.
OPTIONAL_PLOTS = (TRADEOFF_PATTERN, TRIALS_PATTERN)


class PublishError(RuntimeError):
    """A run that cannot be published as it is; the message says which file and why."""


# ----------------------------------------------------------------------------- run outputs


def write_run_outputs(run_dir: Path, cells: pd.DataFrame, title: str, validity: ValidityRule | None = None,
                      aggregates: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None = None) -> None:
    """Aggregate `cells` (unless `aggregates`, aggregate_all's result for them, is given) and write RUN_FILES
    into `run_dir` (the rule it was aggregated under included), and for a run that sweeps a paper's strength
    knob its trade-off plots and claims; README.md last, so its presence marks a complete run."""
    run_dir = Path(run_dir)
    validity = validity or ValidityRule()
    cells = conform_frame(cells, "cells")
    board, picks, sensitivity = aggregates or aggregate_all(cells, validity)
    # utility-task columns, where the leaderboard schema declares them (bench.report.utility.BOARD_COLUMNS)
    board = conform_frame(with_board_columns(board, cells, LEADERBOARD_COLUMNS), "leaderboard")
    write_csv(cells, run_dir / CELLS_FILE, "cells")
    write_csv(board, run_dir / LEADERBOARD_FILE, "leaderboard")
    write_csv(picks, run_dir / PICKS_FILE, "picks")
    write_csv(sensitivity, run_dir / SENSITIVITY_FILE, "sensitivity")
    write_text_atomic(run_dir / RULE_FILE, validity.model_dump_json(indent=2) + "\n")
    plot_utility_vs_attack(board, run_dir / PLOT_FILE)
    plots = plot_tradeoffs(cells, board, run_dir)
    trials = plot_trials_to_break(cells, run_dir)
    readme = render_readme(cells, board, title, validity, sensitivity)
    papers = claims_section(cells, board) + [""] + trap2_sweep_section(cells, board)
    if plots:
        papers += ["", "Trade-off plots (utility retention against protection per setting): "
                   + ", ".join(f"`{path.name}`" for path in plots) + "."]
    if trials:
        papers += ["", "## Trials to break", "", "Each searched attacker's best `attacker_val` objective after each "
                   "trial, per defense, `none` dashed (bench.report.trials_plot): "
                   + ", ".join(f"`{path.name}`" for path in trials) + "."]
    write_text_atomic(run_dir / README_FILE, with_section(readme, "\n".join(papers)) if any(papers) else readme)


def write_run(summary: RunSummary) -> RunSummary:
    """Write what `run_benchmark` returned into its run directory: the files of RUN_FILES, staged in a hidden
    folder and moved in with README.md last, so a kill in between leaves no README (the mark of a complete
    run), never one over a mix of this run's and an older run's files."""
    if summary.frame is None:
        raise ValueError("this summary holds no cells to write")
    out_dir = Path(summary.out_dir)
    staging = out_dir / f".staging.{socket.gethostname()}-{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=True)
    try:
        write_run_outputs(staging, summary.frame, title=summary.title, validity=summary.rule,
                          aggregates=summary.aggregates)
        (out_dir / README_FILE).unlink(missing_ok=True)
        remove_optional_files(out_dir)
        names = sorted((p.name for p in staging.iterdir() if not p.name.startswith(".")),
                       key=lambda name: (name == README_FILE, name))
        for name in names:
            os.replace(staging / name, out_dir / name)
            fault_point(f"outputs:{name}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return summary


def run_and_write(preset: Preset, root: Path, out_dir: Path, executor_name: ExecutorName = "serial",
                  console: Any = None, **executor_kwargs: Any) -> RunSummary:
    """`run_benchmark`, then `write_run`: what `lockbench run` and the commands that leave a run directory do."""
    return write_run(run_benchmark(preset, root, out_dir, executor_name, console=console, **executor_kwargs))


def read_rule(run_dir: Path) -> ValidityRule:
    """The rule a run directory was aggregated under (its RULE_FILE)."""
    path = Path(run_dir) / RULE_FILE
    try:
        return ValidityRule.model_validate_json(path.read_text())
    except (OSError, ValueError) as error:
        raise PublishError(f"refusing to publish {run_dir}: {RULE_FILE} is not a readable rule "
                           f"({' '.join(str(error).split())[:160]})") from error


def run_files(run_dir: Path) -> list[str]:
    """The files of a run directory to publish: RUN_FILES and the optional plots it holds."""
    return [*RUN_FILES, *sorted(path.name for pattern in OPTIONAL_PLOTS for path in Path(run_dir).glob(pattern))]


def remove_optional_files(run_dir: Path) -> None:
    """Remove a run directory's optional plots, so a re-render that draws none leaves none behind."""
    for pattern in OPTIONAL_PLOTS:
        for path in Path(run_dir).glob(pattern):
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- publishing


def _check_name(name: str) -> None:
    if not name or name in {".", ".."} or name.startswith(".") or "/" in name or "\\" in name:
        raise PublishError(f"invalid run name {name!r}: use a plain folder name")


def _check_consistent(cells: pd.DataFrame, files: dict[str, pd.DataFrame], rule: ValidityRule,
                      run_dir: Path) -> None:
    """leaderboard.csv, picks.csv and sensitivity.csv must be what aggregate_all() makes of cells.csv under
    the run's rule: no mixing files from two runs."""
    board, picks, sensitivity = aggregate_all(cells, rule)
    board = with_board_columns(board, cells, LEADERBOARD_COLUMNS)
    expected = {LEADERBOARD_FILE: board, PICKS_FILE: picks, SENSITIVITY_FILE: sensitivity}
    for name, frame in expected.items():
        actual = files[name].reset_index(drop=True)
        frame = frame.reset_index(drop=True)
        columns = [c for c in frame.columns if c in actual.columns]
        try:
            pd.testing.assert_frame_equal(actual[columns], frame[columns], check_exact=False, rtol=1e-9, atol=1e-12)
        except AssertionError as error:
            reason = " ".join(str(error).split())[:200]
            raise PublishError(f"refusing to publish {run_dir}: {name} is not the aggregate of {CELLS_FILE} "
                               f"({reason})") from error


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
        files = {LEADERBOARD_FILE: board, PICKS_FILE: read_csv(run_dir / PICKS_FILE, "picks"),
                 SENSITIVITY_FILE: read_csv(run_dir / SENSITIVITY_FILE, "sensitivity")}
    except SchemaError as error:
        raise PublishError(f"refusing to publish {run_dir}: {error}") from error
    if cells.empty:
        raise PublishError(f"refusing to publish {run_dir}: {CELLS_FILE} has no cells")
    # Track × architecture pairs without a valid attack are published as `invalid`, with the reason in the
    # README (DESIGN §6): the leaderboard says so instead of hiding them; their rows hold no numbers.
    with open(run_dir / PLOT_FILE, "rb") as stream:
        if stream.read(len(_PNG_SIGNATURE)) != _PNG_SIGNATURE:
            raise PublishError(f"refusing to publish {run_dir}: {PLOT_FILE} is not a PNG")
    _check_consistent(cells, files, read_rule(run_dir), run_dir)
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


def with_section(readme: str, section: str) -> str:
    """The README with `section` (markdown starting at its own `## ` heading) after the opening paragraph."""
    head, _, rest = readme.partition("\n## ")
    return f"{head.rstrip()}\n\n{section.strip()}\n\n## {rest}" if rest else f"{readme}\n{section}"


def with_findings(readme: str, findings: str) -> str:
    """The README with a `## Findings` section after its opening paragraph."""
    return with_section(readme, f"## Findings\n\n{findings.strip()}")


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
        for file in run_files(run_dir):
            shutil.copy2(run_dir / file, scratch / file)
        if findings.is_file():
            readme = scratch / README_FILE
            readme.write_text(with_findings(readme.read_text(), findings.read_text()))

    publish_directory(target, fill)
    write_index(leaderboard_dir)
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
                     & board["protection"].notna()]
        if not rows.empty:
            top = rows.loc[rows["protection"].idxmax()]
            best.append(f"{track}: {top['defense']} on {top['model']} ({top['protection']:.3f}, {top['verdict']})")
    return [link, title, listed("track"), listed("defense"), listed("model"),
            "; ".join(best) or "–", f"{listed('lockbench_version')} / {listed('zoo_hash')}"]


def write_index(leaderboard_dir: Path) -> None:
    """Regenerate `leaderboard_dir/README.md` from the published folders (those holding a leaderboard)."""
    leaderboard_dir = Path(leaderboard_dir)
    folders = sorted(path for path in leaderboard_dir.iterdir() if path.is_dir()
                     and not path.name.startswith(".") and (path / LEADERBOARD_FILE).is_file())
    lines = ["# lockbench leaderboard", "",
             "Published runs. Each folder holds `cells.csv` (one row per cell: raw metrics and every knob),",
             "`picks.csv` (the attacker's pick per input), `leaderboard.csv` (one row per defense × track ×",
             "model × format), `sensitivity.csv` (the headline at each void-bar), a README with the tables and",
             "the formulas, and the utility vs attack success plot. Regenerated by",
             "`bench.report.leaderboard.publish`.", "",
             "The best protection per track (`none` excluded) is shown within each run; rows are never ranked",
             "across runs.", ""]
    header = ["run", "title", "tracks", "defenses", "models", "best protection (verdict)",
              "lockbench / zoo hash"]
    lines += markdown_table(header, [_index_row(folder) for folder in folders]) if folders else ["No runs yet."]
    write_text_atomic(leaderboard_dir / README_FILE, "\n".join(lines) + "\n")


__all__ = [
    "PublishError", "RUN_FILES", "check_run", "plot_utility_vs_attack", "publish", "read_rule",
    "remove_optional_files", "render_readme", "run_and_write", "run_files", "write_index", "write_run",
    "write_run_outputs",
]
