"""The `cost` figure: where a finished run's worker-seconds went, by kind of work, from its own cells.csv,
so that a slow `make bench` can be traced to the releases or attacks that make it slow without measuring
anything again.

cells.csv records, on every cell, `attack_seconds` (its attack's `run`) and `defense_seconds` (its release's
`protect`, repeated on each cell of that release: counted once per release here). Scoring (lm-eval), the zoo
and the driver are not recorded there, so they are not in the table; cached cells keep the seconds they
cost when computed, so the table is the run's cost from an empty cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.perf import REPO, Figure
from bench.plugins.threat_model import REFERENCE_DEFENSE

DEFAULT_RUN = REPO / "runs" / "default"
#: Columns that name one release (a merge release protects one task; a finetune release none).
RELEASE_KEY = ("defense", "defense_config", "track", "release_format", "model", "seed", "release_task")


def cost_table(cells: Any) -> Any:
    """Worker-seconds and share by (kind, name) from a cells.csv frame, largest first."""
    # local: a heavy library that only this code path uses
    import pandas as pd

    frame = cells.copy()
    for column in ("attack_seconds", "defense_seconds"):
        frame[column] = pd.to_numeric(frame.get(column), errors="coerce")
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").fillna(0).astype(int)
    frame["release_task"] = frame["task"].where(frame["track"] == "merge", "")
    frame = frame.fillna({c: "" for c in RELEASE_KEY if c != "seed"})
    attacked = frame[frame["attack_seconds"].notna()]
    cell_kind = attacked["track"].map({"merge": "merge cells", "finetune": "fine-tuning attack cells"})
    cells_part = pd.DataFrame({"kind": cell_kind.fillna("cells"), "name": attacked["attack"],
                               "seconds": attacked["attack_seconds"]})
    releases = (frame[frame["defense_seconds"].notna()]
                .groupby(list(RELEASE_KEY), as_index=False)["defense_seconds"].max())
    retrained = (releases["defense"] == REFERENCE_DEFENSE) & (releases["seed"] != 0)
    release_kind = retrained.map({True: "none re-trained releases (seed ≠ 0)", False: "releases"})
    releases_part = pd.DataFrame({"kind": release_kind, "name": releases["defense"],
                                  "seconds": releases["defense_seconds"]})
    parts = pd.concat([releases_part, cells_part], ignore_index=True)
    table = (parts.groupby(["kind", "name"], as_index=False)
             .agg(items=("seconds", "size"), worker_seconds=("seconds", "sum"))
             .sort_values(["worker_seconds", "kind", "name"], ascending=[False, True, True], ignore_index=True))
    total = table["worker_seconds"].sum()
    table["share"] = table["worker_seconds"] / total if total > 0 else 0.0
    return table


def table_rows(table: Any) -> list[dict[str, Any]]:
    """Rows for REPORT.md: rounded seconds, share in percent, and a total."""
    rows = [{"kind of work": row.kind, "what": f"`{row.name}`", "items": int(row.items),
             "worker-seconds": round(float(row.worker_seconds), 1), "share": f"{100 * row.share:.1f} %"}
            for row in table.itertuples()]
    rows.append({"kind of work": "**total**", "what": "", "items": int(table["items"].sum()),
                 "worker-seconds": round(float(table["worker_seconds"].sum()), 1), "share": "100.0 %"})
    return rows


def figure_cost(run_dir: Path | None) -> Figure:
    # local: a heavy library that only this code path uses
    import pandas as pd

    run_dir = Path(run_dir) if run_dir is not None else DEFAULT_RUN
    figure = Figure("cost", "worker time by kind of work (run directory)", run_dir.name, unit=" worker-min")
    cells_file = run_dir / "cells.csv"
    if not cells_file.is_file():
        figure.status = "not available"
        figure.notes.append(f"no finished run at {run_dir} (no cells.csv): `make bench` or `--run DIR`")
        return figure
    cells = pd.read_csv(cells_file, dtype=str)
    missing = {"track", "defense", "attack", "seed", "task"} - set(cells.columns)
    if missing or not {"attack_seconds", "defense_seconds"} & set(cells.columns):
        figure.status = "not available"
        figure.notes.append(f"{cells_file} lacks the columns {sorted(missing) or 'attack_seconds/defense_seconds'}")
        return figure
    table = cost_table(cells)
    figure.value = float(table["worker_seconds"].sum()) / 60
    figure.table = table_rows(table)
    is_release = table["kind"].str.contains("releases")
    figure.details = {"run": str(run_dir), "cells": len(cells), "releases": int(table.loc[is_release, "items"].sum()),
                      "attacked_cells": int(table.loc[~is_release, "items"].sum())}
    figure.notes.append("from the run's cells.csv: `attack_seconds` of every attacked cell and `defense_seconds` "
                        "of every release (once per release, though cells.csv repeats it on each of its cells); "
                        "scoring, the zoo and the driver are not recorded, so not counted; cached cells count "
                        "what they cost when computed")
    return figure
