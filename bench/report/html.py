"""`leaderboard/index.html`: one static page for the published runs and submissions.

The page needs no server and no network: the tables are plain HTML (readable without JavaScript), a
few lines of inline JavaScript sort them when a header is clicked (or from `#sort=COLUMN:asc|desc` in
the address), the plots are the runs' own PNGs linked by relative path, and the formulas and versions
are those of the runs' READMEs.
"""

from __future__ import annotations

import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.report.html_assets import SCRIPT, STYLE
from bench.report.readme import (
    LEADERBOARD_FILE,
    PLOT_FILE,
    README_FILE,
    TRACK_FAMILIES,
    TRACKS,
    architecture_columns,
    architecture_entries,
    formulas,
    headline_columns,
    ranked,
)
from bench.report.utility import html_section
from bench.results import AGGREGATE_METRICS, PROVENANCE_COLUMNS, REFERENCE_DEFENSE, SchemaError, ValidityRule, read_csv
from bench.runtime.storage import write_text_atomic

INDEX_FILE = "index.html"
SUBMISSIONS_DIR = "submissions"


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    numeric: bool = False
    ci: bool = False  # show "value [lo, hi]" from `<key>_lo` and `<key>_hi`


#: The full table: identity, then every aggregate of bench.results.metrics (value [lo, hi]), then counts.
COLUMNS: tuple[Column, ...] = (
    Column("run", "run"),
    Column("defense", "defense"),
    Column("paper", "paper"),
    Column("track", "track"),
    Column("model", "model"),
    Column("family", "architecture"),
    Column("release_format", "format"),
    Column("status", "status"),
    Column("verdict", "verdict"),
    *(Column(metric.name, metric.name.replace("_", " "), True, True) for metric in AGGREGATE_METRICS),
    Column("threshold_sensitive", "threshold-sensitive"),
    Column("worst_attack", "worst input's pick"),
    Column("worst_attack_family", "its family"),
    Column("n_seeds", "seeds", True),
    Column("n_inputs", "inputs", True),
    Column("n_inputs_void", "void inputs", True),
    Column("n_inputs_broken", "broken inputs", True),
    Column("n_cells_failed", "failed cells", True),
    Column("flags", "flags"),
    Column("utility_tasks_retention", "utility tasks kept (vs base)"),
    Column("zoo_hash", "zoo hash"),
)


def headline_table_columns(track: str) -> tuple[Column, ...]:
    """A run's ranked headline of a track: who, the verdict, the headline and worst case, each family, utility
    kept, seeds, flags."""
    keep = {"attack_success", "worst_attack_success", "utility_retention", "trap_formed_rate"} | {
        f"success_{family}" for family in TRACK_FAMILIES[track]}
    numbers = tuple(Column(key, label, True, True) for label, key in headline_columns(track) if key in keep)
    return (Column("defense", "defense"), Column("paper", "paper"), Column("model", "model"),
            Column("release_format", "format"), Column("verdict", "verdict"), *numbers,
            Column("n_seeds", "seeds", True), Column("flags", "flags"))


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _number(value: object, low: object = None, high: object = None) -> tuple[str, str]:
    """(data-value, shown text); numbers with three decimals and their interval, counts as integers, '–' for none."""
    if value is None or pd.isna(value):
        return "", "–"
    number = float(value)  # type: ignore[arg-type]
    if number.is_integer() and low is None:
        return repr(number), str(int(number))
    shown = f"{number:.3f}"
    if low is not None and high is not None and not pd.isna(low) and not pd.isna(high):
        shown += f" [{float(low):.3f}, {float(high):.3f}]"  # type: ignore[arg-type]
    return repr(number), shown


def html_table(table_id: str, rows: list[dict[str, object]], columns: tuple[Column, ...] = COLUMNS) -> str:
    head = "".join(
        f'<th data-key="{c.key}" data-numeric="{1 if c.numeric else 0}" scope="col">{html.escape(c.label)}</th>'
        for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            if c.numeric and row.get("status", "ok") != "ok" and c.ci:
                cells.append(f'<td class="num" data-value="">{html.escape(str(row.get("status")))}</td>')
            elif c.numeric:
                raw, shown = (_number(row.get(c.key), row.get(f"{c.key}_lo"), row.get(f"{c.key}_hi")) if c.ci
                              else _number(row.get(c.key)))
                cells.append(f'<td class="num" data-value="{raw}">{html.escape(shown)}</td>')
            else:
                css = ' class="flags"' if c.key == "flags" else ""
                cells.append(f"<td{css}>{html.escape(_text(row.get(c.key)))}</td>")
        css = ' class="reference"' if row.get("defense") == REFERENCE_DEFENSE else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table id="{table_id}" class="sortable"><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{chr(10).join(body)}\n</tbody></table></div>")


def _inline_markdown(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    escaped = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"(?<![*\w])\*([^*\s][^*]*)\*(?![*\w])", r"<em>\1</em>", escaped)


def markdown_to_html(lines: list[str]) -> str:
    """Just enough Markdown for the formulas: headings, paragraphs, bullet and numbered lists, code, bold."""
    out: list[str] = []
    block: list[str] = []
    kind = ""

    def flush() -> None:
        nonlocal block, kind
        if not block:
            return
        if kind in ("ul", "ol"):
            items = "".join(f"<li>{_inline_markdown(item)}</li>" for item in block)
            out.append(f"<{kind}>{items}</{kind}>")
        else:
            out.append(f"<p>{_inline_markdown(' '.join(block))}</p>")
        block, kind = [], ""

    for line in lines:
        stripped = line.strip()
        bullet = re.match(r"^(?:- |\d+\. )(.*)", stripped)
        if line.startswith("#"):
            flush()
            level = min(len(line) - len(line.lstrip("#")) + 1, 6)
            out.append(f"<h{level}>{_inline_markdown(line.lstrip('#').strip())}</h{level}>")
        elif not stripped:
            flush()
        elif bullet and not line.startswith("  "):
            new_kind = "ul" if stripped.startswith("- ") else "ol"
            if kind != new_kind:
                flush()
            kind = new_kind
            block.append(bullet.group(1))
        elif kind in ("ul", "ol") and line.startswith("  "):
            block[-1] += " " + stripped
        else:
            if kind in ("ul", "ol"):
                flush()
            kind = "p"
            block.append(stripped)
    flush()
    return "\n".join(out)


def _board(folder: Path) -> pd.DataFrame | None:
    try:
        return read_csv(folder / LEADERBOARD_FILE, "leaderboard")
    except SchemaError:
        return None


def _folders(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(path for path in directory.iterdir() if path.is_dir() and not path.name.startswith(".")
                  and path.name != SUBMISSIONS_DIR and (path / LEADERBOARD_FILE).is_file())


#: An attack submission's table: its comparison against each published defense (submission.json).
ATTACK_SUBMISSION_COLUMNS: tuple[Column, ...] = (
    Column("run", "run"),
    Column("attack", "attack"),
    Column("attack_family", "family"),
    Column("track", "track"),
    Column("valid_on_none", "valid on none"),
    Column("defense", "defense"),
    Column("model", "model"),
    Column("release_format", "format"),
    Column("status", "status"),
    Column("reference_worst", "success before", True),
    Column("success", "this attack's success", True),
    Column("new_worst", "success now (the higher)", True),
    Column("breaks", "breaks"),
)


def _submission_metadata(folder: Path) -> dict[str, object]:
    """submission.json, or {} when it is missing or unreadable."""
    try:
        metadata = json.loads((folder / "submission.json").read_text())
    except (OSError, ValueError):
        return {}
    return metadata if isinstance(metadata, dict) else {}


def _attack_rows(run: str, metadata: dict[str, object]) -> list[dict[str, object]]:
    """One row per defense the submitted attack met; 'weak' instead of a success where it was weak on none."""
    rows = []
    for entry in metadata.get("comparison") or []:  # type: ignore[union-attr]
        row = {"run": run, "attack": metadata.get("name"), "attack_family": metadata.get("family"),
               "track": metadata.get("track"), "valid_on_none": "yes" if metadata.get("valid_on_none") else "no",
               **entry}
        row["breaks"] = "yes" if entry.get("breaks") else "no"
        if entry.get("status") != "ok":
            row["success"] = None
        rows.append(row)
    return rows


def _versions_rows(entries: list[tuple[str, pd.DataFrame]]) -> str:
    header = "".join(f"<th>{html.escape(name.removesuffix('_version').replace('_', ' '))}</th>"
                     for name in PROVENANCE_COLUMNS)
    rows = []
    for run, board in entries:
        values = [", ".join(sorted({part for v in board[name] for part in str(v).split(";") if part})) or "unknown"
                  for name in PROVENANCE_COLUMNS]
        rows.append(f"<tr><td>{html.escape(run)}</td>{''.join(f'<td>{html.escape(v)}</td>' for v in values)}</tr>")
    return f'<table id="versions"><thead><tr><th>run</th>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def render_index(leaderboard_dir: Path) -> str:
    """The page's HTML for the runs published in `leaderboard_dir` and its `submissions/`."""
    leaderboard_dir = Path(leaderboard_dir)
    published: list[tuple[str, pd.DataFrame]] = []
    unreadable: list[str] = []
    for folder in _folders(leaderboard_dir):
        board = _board(folder)
        (published.append((folder.name, board)) if board is not None else unreadable.append(folder.name))
    submitted: list[tuple[str, pd.DataFrame]] = []
    attack_runs: list[tuple[str, pd.DataFrame]] = []
    attacks: list[dict[str, object]] = []
    for folder in _folders(leaderboard_dir / SUBMISSIONS_DIR):
        board, metadata, run = _board(folder), _submission_metadata(folder), f"{SUBMISSIONS_DIR}/{folder.name}"
        name = metadata.get("name")
        if board is None:
            unreadable.append(run)
        elif metadata.get("kind") == "attack":
            attack_runs.append((run, board))
            attacks += _attack_rows(run, metadata)
        else:
            submitted.append((run, board[board["defense"] == name] if name else board))

    def rows(entries: list[tuple[str, pd.DataFrame]]) -> list[dict[str, object]]:
        return [{"run": run, **record} for run, board in entries for record in board.to_dict("records")]

    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>lockbench leaderboard</title>", f"<style>{STYLE}</style></head><body>",
        "<h1>lockbench leaderboard</h1>",
        '<p class="note">Release-time protections of model weights against merging and fine-tuning attacks. '
        "Lower attack success and higher protection are better. Per input the attacker picks the configuration "
        "best on its own validation split; numbers are means over inputs [95% paired-bootstrap interval over seeds "
        "and test examples]. Rows are ranked within one run, never across runs. Click a column header to sort. Each "
        "run's folder holds <code>cells.csv</code> (every cell with its knobs and raw metrics), <code>picks.csv"
        "</code>, <code>leaderboard.csv</code>, <code>sensitivity.csv</code> and a README.</p>",
    ]
    for run, board in published:
        for track in TRACKS:
            if (board["track"] == track).any():
                parts.append(f'<h2 id="headline-{html.escape(run)}-{track}">{html.escape(run)}, {track} track: '
                             "ranked by attack success</h2>")
                parts.append(html_table(f"headline-{run}-{track}-table", ranked(board, track).to_dict("records"),
                                        headline_table_columns(track)))
    for run, board in published:
        columns = architecture_columns(board)
        matrix = [{"defense": defense, **{"|".join(column): found.get(column, "–") for column in columns}}
                  for defense, found in architecture_entries(board).items()]
        parts.append(f'<h2 id="architectures-{html.escape(run)}">{html.escape(run)}: architecture × format × defense '
                     "(attack success; N/A: the defense does not apply)</h2>")
        parts.append(html_table(f"architectures-{run}-table", matrix, (Column("defense", "defense"), *(
            Column("|".join(column), f"{column[0]}: {column[1]}/{column[2]}") for column in columns))))
    parts.append("<h2>All numbers</h2>")
    if published:
        parts.append(html_table("results", rows(published)))
        links = " · ".join(f'<a href="{html.escape(run)}/{README_FILE}">{html.escape(run)}</a>' for run, _ in published)
        parts.append(f"<p>READMEs: {links}</p>")
    else:
        parts.append('<p id="results-empty">No runs published yet.</p>')
    parts += html_section(leaderboard_dir, [run for run, _ in [*published, *submitted]], html_table, Column)
    parts.append("<h2>Submissions</h2>")
    if submitted:
        parts.append(html_table("submissions", rows(submitted)))
    else:
        parts.append('<p id="submissions-empty">No defense submissions yet (<code>lockbench submit</code>).</p>')
    parts.append('<h3 id="attack-submissions-heading">Submitted attacks: the defenses each one breaks</h3>')
    if attacks:
        parts.append(html_table("attack-submissions", attacks, ATTACK_SUBMISSION_COLUMNS))
    else:
        parts.append('<p id="attack-submissions-empty">No attack submissions yet '
                     '(<code>lockbench submit --attack</code>).</p>')
    if unreadable:
        parts.append(f"<p class=\"note\">Unreadable (schema check failed): {html.escape(', '.join(unreadable))}</p>")
    plots = [(run, f"{run}/{PLOT_FILE}") for run, _ in [*published, *submitted, *attack_runs]
             if (leaderboard_dir / run / PLOT_FILE).is_file()]
    if plots:
        parts.append("<h2>Utility retention vs attack success</h2>")
        parts += [f'<figure><a href="{html.escape(src)}"><img src="{html.escape(src)}" alt="{html.escape(run)}: '
                  f'utility vs attack success"></a><figcaption>{html.escape(run)}</figcaption></figure>'
                  for run, src in plots]
    parts.append('<section id="formulas">')
    parts.append(markdown_to_html(formulas(ValidityRule())))
    parts.append("<p class=\"note\">The thresholds above are the defaults; each run's README states those its "
                 "preset used.</p></section>")
    parts.append("<h2>Versions</h2>")
    boards = [*published, *submitted, *attack_runs]
    parts.append(_versions_rows(boards) if boards else "<p>–</p>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"


def write_html_index(leaderboard_dir: Path) -> Path:
    """Regenerate `leaderboard_dir/index.html` (atomically)."""
    path = Path(leaderboard_dir) / INDEX_FILE
    write_text_atomic(path, render_index(Path(leaderboard_dir)))
    path.chmod(0o644)  # a page to serve or open by anyone, unlike the 0600 of a temporary file
    return path
