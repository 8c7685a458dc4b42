"""perf/report.json and perf/REPORT.md: merged figure by figure and written atomically, so a run stopped at
any point leaves every figure measured so far, and figures not re-measured keep their own date and commit."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.perf import CLONE_FIGURES, FIGURES, Figure

JSON_FILE = "report.json"
MARKDOWN_FILE = "REPORT.md"
#: Statuses that carry a number; a later "error" or "not available" does not replace them.
MEASURED = ("measured", "over budget")


def format_value(figure: Figure) -> str:
    if figure.value is None:
        return figure.status
    prefix = "> " if figure.status == "over budget" else ""
    if figure.unit in ("%", "x"):
        return f"{prefix}{figure.value:.2f}{figure.unit}"
    return f"{prefix}{figure.value:.1f}{figure.unit}"


def verdict(figure: Figure) -> str:
    if figure.status != "measured":
        return figure.status
    return "report" if figure.passed is None else ("PASS" if figure.passed else "MISS")


def write_atomic(path: Path, text: str) -> None:
    """Write beside the target, then rename over it: a reader or a kill never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


def load(out: Path) -> tuple[dict[str, Figure], dict[str, Any]]:
    """The figures of the existing report by key, and its last run's meta; older reports (one date and
    commit for the whole run) lend those to each figure."""
    path = out / JSON_FILE
    if not path.is_file():
        return {}, {}
    try:
        data = json.loads(path.read_text())
    except ValueError:  # damaged by hand: keep it aside rather than overwrite what it held
        os.replace(path, path.with_suffix(".json.damaged"))
        return {}, {}
    meta = data.get("meta", {})
    figures: dict[str, Figure] = {}
    for item in data.get("figures", []):
        figure = Figure.from_dict(item)
        figure.measured_at = figure.measured_at or meta.get("date", "")
        figure.commit = figure.commit or meta.get("commit", "")
        figure.tree = figure.tree or "unknown"
        figures[figure.key] = figure
    return figures, meta


def merge(figures: dict[str, Figure], new: Figure) -> Figure:
    """`new` replaces the same key, except that a failed try ("error", "not available") does not replace a
    measured figure: it is noted as the figure's last attempt instead. Returns what is kept."""
    old = figures.get(new.key)
    if old is not None and old.status in MEASURED and new.status not in MEASURED:
        old.last_attempt = {"measured_at": new.measured_at, "commit": new.commit, "status": new.status,
                            "notes": new.notes}
        return old
    figures[new.key] = new
    return new


def ordered(figures: dict[str, Figure]) -> list[Figure]:
    rank = {key: i for i, key in enumerate(FIGURES)}
    return sorted(figures.values(), key=lambda f: (rank.get(f.key, len(rank)), f.key))


def save(out: Path, figures: dict[str, Figure], meta: dict[str, Any]) -> None:
    items = ordered(figures)
    write_atomic(out / JSON_FILE, json.dumps({"meta": meta, "figures": [asdict(f) for f in items]}, indent=2) + "\n")
    write_atomic(out / MARKDOWN_FILE, render(items, meta) + "\n")


def markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return lines


def where(figure: Figure) -> str:
    """When and on which code a figure was measured, for the summary table."""
    dirty = figure.tree not in ("clean", "unknown", "")
    if figure.key in CLONE_FIGURES:  # a clone of HEAD: the working tree's changes are not in it
        return (f"{figure.measured_at or '?'}, clone of `{figure.commit or '?'}`"
                + (" (uncommitted changes not in it)" if dirty else ""))
    return f"{figure.measured_at or '?'}, `{figure.commit or '?'}`" + (" + uncommitted changes" if dirty else "")


def render(figures: list[Figure], meta: dict[str, Any]) -> str:
    lines = ["# lockbench performance report", "",
             "Written by `make perf` (`python -m bench.perf`, see its `--help`) figure by figure, as each is "
             "measured; a figure not re-measured keeps the date and commit of the run that measured it, so rows "
             "may come from different runs: compare figures measured together. The quick figures time this "
             "checkout's working tree (\"+ uncommitted changes\" when it had any); the fresh-clone figures time a "
             "clone of its HEAD commit. The machine may be shared (load averages below).",
             "", f"Last run: `python -m bench.perf {meta.get('args', '')}` on {meta.get('date', '?')}, commit "
             f"`{meta.get('commit', '?')}` (working tree {meta.get('tree', 'unknown')}), {meta.get('cpus', '?')} CPU "
             f"cores, torch {meta.get('torch', '?')}, Python {meta.get('python', '?')}.", "",
             "| figure | measured | target | verdict | preset | measured at, commit |", "|---|---|---|---|---|---|"]
    for figure in figures:
        lines.append(f"| {figure.title} | {format_value(figure)} | {figure.target or '-'} | {verdict(figure)} "
                     f"| `{figure.preset}` | {where(figure)} |")
    lines.append("")
    for figure in figures:
        lines += [f"## {figure.title} (`{figure.key}`, preset `{figure.preset}`)", ""]
        lines.append(f"- measured {figure.measured_at or '?'} at commit `{figure.commit or '?'}`, working tree "
                     f"{figure.tree or '?'}" + "".join(f", {k} {v}" for k, v in figure.context.items()))
        lines += [f"- {note}" for note in figure.notes]
        for key, value in figure.details.items():
            if key != "cached_profile_top":
                lines.append(f"- {key}: {value}")
        if figure.last_attempt:
            attempt = figure.last_attempt
            lines.append(f"- last attempt {attempt.get('measured_at')} at `{attempt.get('commit')}`: "
                         f"{attempt.get('status')} ({'; '.join(attempt.get('notes', []))[:500]}); the value above "
                         "is kept from before")
        if figure.table:
            lines += ["", *markdown_table(figure.table)]
        profile = figure.details.get("cached_profile_top")
        if profile:
            lines += ["", "Profile of the cached run (cProfile, cumulative):", "", "```", *profile, "```"]
        lines.append("")
    return "\n".join(lines)
