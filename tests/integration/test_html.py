"""`leaderboard/index.html`: written by publish, complete without a server or network, sortable in a real
browser (headless Chromium, installed by `make setup`/`make test` when missing).

The runs are `fakes.raw_frame`'s synthetic run (hand-checked numbers) published
under two names, the second with its defenses renamed and weaker, plus one filed submission.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from fakes import raw_frame
from html_tables import Tables, parse

from bench.report.html import INDEX_FILE, write_html_index
from bench.report.leaderboard import PLOT_FILE, RUN_FILES, publish, write_run_outputs
from bench.results import ValidityRule, read_csv, score_cells

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")


def _weaker_copy() -> pd.DataFrame:
    """The synthetic run with trap2 → trap2_v2 and pmp → pmp_v2, each attacked more successfully."""
    raw = raw_frame()
    raw.loc[raw["defense"] == "trap2", "merged_acc"] = raw.loc[raw["defense"] == "trap2", "merged_acc"].map(
        lambda v: v if pd.isna(v) else min(1.0, v + 0.1))
    raw["defense"] = raw["defense"].replace({"trap2": "trap2_v2", "pmp": "pmp_v2"})
    return raw


@pytest.fixture(scope="module")
def leaderboard(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two published runs and one submission (whose folder also holds the reference rows)."""
    root = tmp_path_factory.mktemp("html")
    board_dir = root / "leaderboard"
    for name, raw in (("alpha", raw_frame()), ("beta", _weaker_copy())):
        cells = score_cells(raw, ValidityRule())
        write_run_outputs(root / "runs" / name, cells, f"synthetic {name}")
        publish(root / "runs" / name, board_dir)
    submission = board_dir / "submissions" / "my_pmp"
    submission.mkdir(parents=True)
    for file in RUN_FILES:
        shutil.copy2(root / "runs" / "alpha" / file, submission / file)
    (submission / "submission.json").write_text(json.dumps({"name": "pmp"}))
    attack = board_dir / "submissions" / "my_attack"
    attack.mkdir(parents=True)
    for file in RUN_FILES:
        shutil.copy2(root / "runs" / "alpha" / file, attack / file)
    compared = {"track": "merge", "model": "llama", "release_format": "full", "reference_attack": "per_member",
                "reference_source": "published", "reference_family_worst": 0.1}
    (attack / "submission.json").write_text(json.dumps({
        "kind": "attack", "name": "my_attack", "family": "data", "track": "merge", "valid_on_none": True,
        "comparison": [
            {**compared, "defense": "trap2", "reference_worst": 0.2, "success": 0.9, "status": "ok",
             "new_worst": 0.9, "breaks": True},
            {**compared, "defense": "params", "reference_worst": 0.3, "success": 0.25, "status": "weak",
             "new_worst": 0.3, "breaks": False}]}))
    write_html_index(board_dir)
    return board_dir


def _expected(board_dir: Path) -> list[tuple[str, ...]]:
    keys = ["defense", "track", "model", "release_format"]
    rows = []
    for run in ("alpha", "beta"):
        board = read_csv(board_dir / run / "leaderboard.csv", "leaderboard")
        rows += [(run, *(str(v) for v in values)) for values in board[keys].itertuples(index=False)]
    return sorted(rows)


def _identity(record: dict[str, tuple[str, str | None]]) -> tuple[str, ...]:
    return tuple(record[key][0] for key in ("run", "defense", "track", "model", "release_format"))


def test_publish_writes_a_self_contained_index(leaderboard: Path) -> None:
    """Static HTML (before any script runs) already lists every published row; nothing is fetched from
    the network; plots, formulas and versions are on the page."""
    page = (leaderboard / INDEX_FILE).read_text()
    tables = parse(page)
    assert sorted(_identity(r) for r in tables.records("results")) == _expected(leaderboard)
    # 7 groups per run: none/trap2 merge on llama and (invalid) gpt2, none/pmp finetune, pmp mamba n/a
    assert len(tables.tables["results"]) == 14
    submitted = tables.records("submissions")
    assert {r["defense"][0] for r in submitted} == {"pmp"}, "a submission shows its own rows only"
    assert {r["run"][0] for r in submitted} == {"submissions/my_pmp"}, "an attack submission is not a defense row"
    attacked = {r["defense"][0]: r for r in tables.records("attack-submissions")}
    assert sorted(attacked) == ["params", "trap2"]
    assert attacked["trap2"]["breaks"][0] == "yes" and attacked["trap2"]["success"][0] == "0.900"
    assert attacked["params"]["success"][0] == "–" and attacked["params"]["status"][0] == "weak", "weak: no number"
    assert attacked["trap2"]["attack"][0] == "my_attack" and attacked["trap2"]["attack_family"][0] == "data"

    assert not re.search(r"""(?:src|href)=["']?(?:https?:)?//""", page), "the page must work offline"
    for run in ("alpha", "beta", "submissions/my_pmp", "submissions/my_attack"):
        assert f'src="{run}/{PLOT_FILE}"' in page
        assert (leaderboard / run / PLOT_FILE).is_file()
    for formula in ("utility_retention × (1 − success)",
                    "(merged_acc − control_acc) / (utility_none − base_acc)",
                    "2.5 and 97.5 percentiles"):
        assert formula in page.replace("<code>", "").replace("</code>", ""), formula
    versions = {row[0][0]: [cell[0] for cell in row[1:]] for row in tables.tables["versions"]}
    assert sorted(versions) == ["alpha", "beta", "submissions/my_attack", "submissions/my_pmp"]
    assert versions["alpha"] == ["0.1.0", "2.13.0", "5.23.0", "0.21.0", "0.1.5", "0.4.13", "zoo123", "aten AVX2"]
    trap2 = next(r for r in tables.records("results") if r["run"][0] == "alpha" and r["defense"][0] == "trap2"
                 and r["model"][0] == "llama")
    success = (1 / 3) / 0.75  # tests/unit/test_results.py computes it by hand
    assert trap2["attack_success"][0].startswith(f"{success:.3f} ["), trap2["attack_success"]
    assert math.isclose(float(trap2["attack_success"][1] or "nan"), success)
    matrix = {r["defense"][0]: r for r in tables.records("architectures-alpha-table")}
    assert matrix["pmp"]["finetune|mamba|full"][0] == "N/A", "a declared n/a shows as N/A"
    assert matrix["trap2"]["merge|gpt2|adapter"][0] == "invalid"
    assert matrix["pmp"]["merge|llama|adapter"][0] == "–", "pmp has no merge row: not run"
    headline = tables.records("headline-alpha-merge-table")
    assert [(r["defense"][0], r["model"][0]) for r in headline][:2] == [("trap2", "llama"), ("none", "llama")], \
        "ranked within its run: scored defenses by attack success, then none"
    assert {r["defense"][0] for r in tables.records("headline-beta-merge-table")} >= {"trap2_v2"}, \
        "each run has its own ranking: rows of two runs are never ranked together"
    assert "rescaling: void on every input" in headline[0]["flags"][0]
    assert any(r["attack_success"][0] == "invalid" for r in headline)
    assert headline[0]["n_seeds"][0] == "2"
    assert {key for key in tables.headers["headline-alpha-merge-table"]} >= {
        "attack_success", "worst_attack_success", "success_pinned", "success_rescaling", "success_aligning",
        "success_data", "utility_retention", "verdict", "n_seeds", "flags", "paper"}
    assert oct((leaderboard / INDEX_FILE).stat().st_mode & 0o777) == "0o644"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("LOCKBENCH_NO_BROWSER"):
            pytest.skip("LOCKBENCH_NO_BROWSER is set and chromium is missing")
        pytest.fail("chromium is not installed: `make setup` installs Debian's chromium package "
                    "(set LOCKBENCH_NO_BROWSER=1 to skip this test)")
    return found


def _render(page: Path, fragment: str) -> Tables:
    """The DOM after the page's scripts ran, as headless Chromium dumps it."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                                 f"{page.as_uri()}{fragment}"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return parse(result.stdout)


def test_chromium_renders_and_sorts_the_table(leaderboard: Path) -> None:
    page = leaderboard / INDEX_FILE
    by_protection = _render(page, "#sort=protection:desc")
    assert by_protection.body.get("data-ready") == "1", "the page's script did not run"
    records = by_protection.records("results")
    assert sorted(_identity(r) for r in records) == _expected(leaderboard)
    attrs = by_protection.table_attrs["results"]
    assert (attrs.get("data-sort-key"), attrs.get("data-sort-dir")) == ("protection", "desc")
    values = [float(r["protection"][1]) if r["protection"][1] else None for r in records]
    numbers = [v for v in values if v is not None]
    assert numbers == sorted(numbers, reverse=True) and len(numbers) >= 4, values
    assert values[len(numbers):] == [None] * (len(values) - len(numbers)), "unscored rows must sort last"
    static = [_identity(r) for r in parse(page.read_text()).records("results")]
    assert [_identity(r) for r in records] != static, "sorting changed nothing: the test would prove nothing"

    by_defense = _render(page, "#sort=defense:asc").records("results")
    names = [r["defense"][0] for r in by_defense]
    assert names == sorted(names), names


def test_chromium_screenshot_shows_the_headline_first(leaderboard: Path, tmp_path: Path) -> None:
    """A real screenshot: the page renders, and the first screen holds the ranked headline tables, not
    the long table (the headline comes before it in the DOM)."""
    page = leaderboard / INDEX_FILE
    shot = tmp_path / "page.png"
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1400,1000",
                                 f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, len(data)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1400, 1000)
    text = page.read_text()
    assert text.index('id="headline-alpha-merge"') < text.index('id="headline-alpha-finetune"') < text.index('id="results"')
    if os.environ.get("LOCKBENCH_KEEP_SCREENSHOT"):
        shutil.copy2(shot, os.environ["LOCKBENCH_KEEP_SCREENSHOT"])
