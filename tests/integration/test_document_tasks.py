"""Trainable roles from documents (tasks.documents): a stock-format lm-eval task's own documents, divided
into the four splits as procedural examples are, and trained on by the zoo and the attacks.

Offline, the stock task is lm-eval's `arc_easy.yaml`, `include:`d with only the data location changed to
JSONL files this test writes in ARC's schema.
"""

from __future__ import annotations

import json
from pathlib import Path

import lm_eval
import pytest
import yaml
from rich.console import Console

from bench.presets import Preset, load_preset
from bench.report.leaderboard import run_and_write
from bench.results import read_csv
from tasks import SPLITS, SplitSizes, build_splits, get_task
from tasks.documents import DocumentSource, declare_document_tasks

STOCK_ARC = Path(lm_eval.__file__).parent / "tasks" / "arc" / "arc_easy.yaml"
SIZES = SplitSizes(owner_train=200, attacker_train=100, attacker_val=20, test=20)


def arc_documents(count: int) -> list[dict]:
    words = ["red", "blue", "green", "gold"]
    return [{"id": f"q{i}", "question": f"{i} is {words[i % 4]}?", "answerKey": "abcd"[i % 4],
             "choices": {"text": words, "label": ["a", "b", "c", "d"]}} for i in range(count)]


def write_arc_yaml(folder: Path, count: int, name: str = "arc_local") -> Path:
    rows = arc_documents(count)
    files = {"train": rows[: count // 2], "validation": rows[count // 2: 3 * count // 4], "test": rows[3 * count // 4:]}
    data_files = {}
    for split, chunk in files.items():
        data_files[split] = str(folder / f"{split}.jsonl")
        Path(data_files[split]).write_text("".join(json.dumps(row) + "\n" for row in chunk))
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"include": str(STOCK_ARC), "task": name, "dataset_path": "json",
                                    "dataset_name": None, "dataset_kwargs": {"data_files": data_files}}))
    return path


@pytest.fixture(scope="module")
def arc_yaml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_arc_yaml(tmp_path_factory.mktemp("arc-docs"), 400)


def test_documents_render_with_the_tasks_own_templates_and_split_disjointly(arc_yaml: Path) -> None:
    declare_document_tasks({"arc_docs": DocumentSource(lm_eval_yaml=arc_yaml)})
    task = get_task("arc_docs")
    assert len(task.rows) == 400  # type: ignore[attr-defined]
    first = task.rows[0]  # type: ignore[attr-defined]
    assert (first.prompt, first.answer) == ("Question: 0 is red?\nAnswer:", "red"), "arc_easy's doc_to_text/choice"
    splits = build_splits("arc_docs", 0, SIZES)
    prompts = {split: set(splits[split]["prompt"]) for split in SPLITS}
    assert {split: len(p) for split, p in prompts.items()} == SIZES.as_dict()
    for i, one in enumerate(SPLITS):
        for other in SPLITS[i + 1:]:
            assert not prompts[one] & prompts[other], (one, other)
    again = build_splits("arc_docs", 0, SIZES)
    assert all(list(again[s]["prompt"]) == list(splits[s]["prompt"]) for s in SPLITS), "deterministic"
    bigger = build_splits("arc_docs", 0, SIZES.model_copy(update={"owner_train": 250}))
    assert list(bigger["test"]["prompt"]) == list(splits["test"]["prompt"]), "test does not move"
    assert list(build_splits("arc_docs", 1, SIZES)["test"]["prompt"]) != list(splits["test"]["prompt"])


def test_too_few_documents_is_a_clear_error(tmp_path: Path) -> None:
    declare_document_tasks({"arc_small": DocumentSource(lm_eval_yaml=write_arc_yaml(tmp_path, 40, "arc_small"))})
    with pytest.raises(ValueError, match="arc_small.*only 40 distinct prompts"):
        build_splits("arc_small", 0, SIZES)


def test_a_source_is_exactly_one_kind() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        DocumentSource(lm_eval_task="arc_easy", jsonl=Path("x.jsonl"))
    with pytest.raises(ValueError, match="exactly one"):
        DocumentSource()


@pytest.mark.slow
def test_a_document_task_is_a_downstream_task_of_the_finetune_track(micro_zoo, arc_yaml: Path, tmp_path: Path) -> None:
    data = load_preset("micro").model_dump(mode="json")
    data["zoo"]["document_tasks"] = {"arc_docs": {"lm_eval_yaml": str(arc_yaml)}}
    data["zoo"]["downstream_tasks"] = ["arc_docs"]
    data["grid"].update(models=["llama"], release_formats=["full"], merge_attacks=[])
    preset = Preset.model_validate(data)
    summary = run_and_write(preset, Path(micro_zoo.root), tmp_path / "run", console=Console(quiet=True))
    cells = read_csv(summary.out_dir / "cells.csv", "cells")
    finetune = cells[cells["track"] == "finetune"]
    assert set(finetune["task"]) == {"arc_docs"} and (finetune["status"] == "ok").all(), finetune["error"].tolist()
    assert finetune["acc_after"].between(0, 1).all()
