"""The grid's `utility_tasks` role: stock-format lm-eval tasks scored on every release, never trained.

Offline, a stock task is exercised through a YAML that `include:`s lm-eval's own `arc_easy.yaml` and changes
only where the documents come from (`dataset_path`, `dataset_name`, `dataset_kwargs`) to JSONL files the test
writes in ARC's schema; the scores must be lm-eval's own for that task.
"""

from __future__ import annotations

import json
from pathlib import Path

import lm_eval
import pytest
import yaml
from rich.console import Console

from bench.config import ConfigError
from bench.harness.utility_tasks import check_utility_tasks
from bench.presets import Preset, load_preset
from bench.report.leaderboard import run_and_write
from bench.results import read_csv

STOCK_ARC = Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_easy.yaml"


def arc_rows(count: int, offset: int) -> list[dict]:
    """ARC-schema questions whose right answer is the shortest choice in two rows of three: any small LM
    gives a short continuation the higher log-likelihood, so lm-eval's `acc` lands far from chance (1/4)."""
    choices = ["a", "bbbbbb", "cccccccccccc", "dddddddddddddddddd"]
    return [{"id": f"q{i}", "question": f"pick {i}", "choices": {"text": choices, "label": ["a", "b", "c", "d"]},
             "answerKey": "d" if i % 3 == 0 else "a"} for i in range(offset, offset + count)]


@pytest.fixture(scope="module")
def arc_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("arc-local")
    files = {}
    for split, (count, offset) in {"train": (8, 0), "validation": (8, 8), "test": (24, 16)}.items():
        files[split] = folder / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(row) + "\n" for row in arc_rows(count, offset)))
    config = {"include": str(STOCK_ARC), "task": "arc_local", "dataset_path": "json", "dataset_name": None,
              "dataset_kwargs": {"data_files": {split: str(path) for split, path in files.items()}}}
    path = folder / "arc_local.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def micro_with(utility_tasks: list, tmp_path: Path) -> Preset:
    data = load_preset("micro").model_dump(mode="json")
    data["grid"].update(models=["llama"], release_formats=["full"], finetune_attacks=[], utility_tasks=utility_tasks)
    return Preset.model_validate(data)


def test_utility_task_yaml_is_scored_by_lm_eval_into_cells_csv(micro_zoo, arc_yaml: Path, tmp_path: Path) -> None:
    preset = micro_with([{"name": "arc_local", "lm_eval_yaml": str(arc_yaml)}], tmp_path)
    root = Path(micro_zoo.root)
    summary = run_and_write(preset, root, tmp_path / "run", console=Console(quiet=True))
    cells = read_csv(summary.out_dir / "cells.csv", "cells")  # the schema's reader: "n/a" stays a status
    ok = cells[cells["status"] == "ok"]
    assert len(ok) > 0
    releases = ok["utility_tasks_acc"].map(json.loads)
    bases = ok["base_utility_tasks_acc"].map(json.loads)
    assert all(set(scores) == {"arc_local"} for scores in [*releases, *bases])

    # lm-eval's own number for the base, computed here without lockbench's scoring code
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    model = micro_zoo.load_base("llama")
    output = lm_eval.simple_evaluate(model=HFLM(pretrained=model, tokenizer=micro_zoo.tokenizer("llama"), batch_size=8),
                                     tasks=["arc_local"], task_manager=TaskManager(include_path=str(arc_yaml.parent),
                                                                                   include_defaults=False),
                                     bootstrap_iters=0)
    assert output is not None
    expected = output["results"]["arc_local"]["acc,none"]
    assert abs(expected - 0.25) > 0.2, f"lm-eval's accuracy {expected} should be far from chance here"
    assert {round(scores["arc_local"], 6) for scores in bases} == {round(expected, 6)}
    # `none` releases the zoo's expert, which was trained on its own task only: its score is its own number
    none = ok[ok["defense"] == "none"]
    assert none["utility_tasks_acc"].map(lambda text: 0.0 <= json.loads(text)["arc_local"] <= 1.0).all()

    # visible where a reader looks: the run's README and the leaderboard page
    release = none["utility_tasks_acc"].map(lambda text: json.loads(text)["arc_local"]).mean()
    kept = release / expected
    readme = (summary.out_dir / "README.md").read_text()
    assert "## Utility tasks" in readme
    assert f"| none | merge | llama | full | arc_local | {release:.3f} | {expected:.3f} | {kept:.3f} |" in readme
    board_csv = read_csv(summary.out_dir / "leaderboard.csv", "leaderboard")
    merge_none = board_csv[(board_csv["defense"] == "none") & (board_csv["track"] == "merge")].iloc[0]
    assert json.loads(merge_none["utility_tasks_acc"])["arc_local"] == pytest.approx(release, abs=1e-6)
    assert json.loads(merge_none["utility_tasks_retention"])["arc_local"] == pytest.approx(kept, abs=1e-5)
    import shutil

    from html_tables import parse

    from bench.report.html import write_html_index

    board = tmp_path / "leaderboard"
    shutil.copytree(summary.out_dir, board / "utility-run")  # as published (micro breaks the validity rule)
    write_html_index(board)
    page = parse((board / "index.html").read_text())
    rows = {(r["defense"][0], r["utility_task"][0]): r for r in page.records("utility-tasks")}
    assert float(rows[("none", "arc_local")]["release_acc"][0]) == pytest.approx(release, abs=5e-4)
    assert float(rows[("none", "arc_local")]["retention"][0]) == pytest.approx(kept, abs=5e-4)
    assert float(rows[("none", "arc_local")]["base_acc"][0]) == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize("entry, message", [
    ("no_such_stock_task_xyz", "utility task 'no_such_stock_task_xyz': lm-eval has no task"),
    ({"name": "gone", "lm_eval_yaml": "/nonexistent/gone.yaml"}, "gone"),
    ({"name": "sort"}, "also trained"),
])
def test_a_bad_utility_task_is_one_error_line_before_any_training(entry, message: str, tmp_path: Path) -> None:
    preset = micro_with([entry], tmp_path)
    root = tmp_path / "root"
    with pytest.raises(ConfigError) as raised:
        run_and_write(preset, root, tmp_path / "run", console=Console(quiet=True))
    text = str(raised.value)
    assert message in text and "\n" not in text, text
    assert not (root / "zoo").exists(), "nothing may be trained before the tasks are checked"


def test_a_yaml_that_is_no_single_task_names_the_task(tmp_path: Path) -> None:
    group = tmp_path / "group.yaml"
    group.write_text(yaml.safe_dump({"group": "g", "task": ["arc_easy"]}))
    preset = micro_with([{"name": "grouped", "lm_eval_yaml": str(group)}], tmp_path)
    with pytest.raises(ConfigError, match="task 'grouped'.*one lm-eval task"):
        check_utility_tasks(preset, tmp_path)


def test_utility_tasks_validate_as_task_sources() -> None:
    with pytest.raises(Exception, match="at most one"):
        Preset.model_validate({**load_preset("micro").model_dump(mode="json"), "grid": {
            **load_preset("micro").model_dump(mode="json")["grid"],
            "utility_tasks": [{"name": "x", "jsonl": "a", "lm_eval_yaml": "b.yaml"}]}})


def test_utility_summary_counts_each_release_once_and_measures_retention() -> None:
    """Two cells of one release (two attacks) count once; retention = release / base; a base at 0 is not
    measurable; controls and failed cells are left out; the leaderboard columns are JSON per task."""
    import math

    import pandas as pd

    from bench.report.readme import markdown_table
    from bench.report.utility import board_columns, readme_section, utility_summary

    def cell(defense: str, seed: int, attack: str, release: float, base: float, status: str = "ok") -> dict:
        return {"defense": defense, "track": "merge", "model": "llama", "release_format": "full", "seed": seed,
                "defense_config": "{}", "task": "sort", "attack": attack, "status": status,
                "utility_tasks_acc": json.dumps({"arc": release, "zero": 0.5}),
                "base_utility_tasks_acc": json.dumps({"arc": base, "zero": 0.0})}

    cells = pd.DataFrame([cell("trap2", 0, "ta", 0.3, 0.6), cell("trap2", 0, "ties", 0.3, 0.6),
                          cell("trap2", 1, "ta", 0.5, 0.6), cell("control", 0, "ta", 0.9, 0.6),
                          cell("trap2", 2, "ta", 0.0, 0.6, status="failed")])
    summary = utility_summary(cells).set_index("utility_task")
    assert summary.loc["arc", "release_acc"] == pytest.approx(0.4) and summary.loc["arc", "n_releases"] == 2
    assert summary.loc["arc", "retention"] == pytest.approx(0.4 / 0.6)
    assert math.isnan(summary.loc["zero", "retention"])
    assert set(summary["defense"]) == {"trap2"}
    board = pd.DataFrame([{"defense": "trap2", "track": "merge", "model": "llama", "release_format": "full"},
                          {"defense": "none", "track": "merge", "model": "llama", "release_format": "full"}])
    columns = board_columns(board, cells)
    assert json.loads(columns["utility_tasks_acc"][0]) == {"arc": 0.4, "zero": 0.5}
    assert json.loads(columns["utility_tasks_retention"][0]) == {"arc": round(0.4 / 0.6, 6), "zero": None}
    assert columns["utility_tasks_acc"][1] == ""
    assert "| trap2 | merge | llama | full | arc | 0.400 | 0.600 | 0.667 |" in readme_section(cells, markdown_table)
    assert readme_section(cells.drop(columns=["utility_tasks_acc"]), markdown_table) == []
