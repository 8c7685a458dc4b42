"""Trainable tasks from documents: a stock lm-eval task's own documents, an lm-eval task YAML's, or JSONL rows.

A zoo can train an expert (or use a downstream task) on a real dataset instead of a generator. The documents
are rendered to (prompt, answer) with the lm-eval task's own `doc_to_text` and `doc_to_target` (a multiple-
choice target becomes the text of its choice), pooled over the task's splits, and then divided exactly as
a procedural task's examples are (`tasks.splits`): deterministically from the seed, disjoint by prompt,
`test` first so that growing a training split never changes what is scored.

A preset declares them under `zoo.document_tasks` (cheap: no file is read); the documents are loaded on the
first lookup of the name, so listing or validating a preset for another machine never touches its data.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import ClassVar

import pydantic

from tasks.base import Example, ProceduralTask
from tasks.rows import read_rows


class DocumentSource(pydantic.BaseModel, extra="forbid", frozen=True):
    """Exactly one of: a stock lm-eval task name, an lm-eval task YAML, a JSONL file of prompt/answer rows."""

    lm_eval_task: str | None = None
    lm_eval_yaml: Path | None = None
    jsonl: Path | None = None
    max_documents: int | None = pydantic.Field(None, ge=1, description="keep the first N documents (in order)")

    @pydantic.model_validator(mode="after")
    def _exactly_one(self) -> DocumentSource:
        given = [name for name in ("lm_eval_task", "lm_eval_yaml", "jsonl") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of lm_eval_task, lm_eval_yaml, jsonl (got {given or 'none'})")
        return self


class DocumentTask(ProceduralTask):
    """A task whose examples are a fixed list of documents; `sample` draws one of them."""

    rows: ClassVar[tuple[Example, ...]] = ()
    digest: ClassVar[str] = ""
    max_example_chars: ClassVar[int | None] = None  # real documents are longer than the tiny zoo's examples
    ascii_only: ClassVar[bool] = False

    def sample(self, rng: random.Random) -> Example:
        return self.rows[rng.randrange(len(self.rows))]


_DECLARED: dict[str, DocumentSource] = {}
_BUILT: dict[str, tuple[DocumentSource, type[DocumentTask]]] = {}


def declare_document_tasks(sources: dict[str, DocumentSource]) -> None:
    """Make `sources` known by name; a later declaration of a name replaces an earlier one."""
    _DECLARED.update(sources)


def document_task(name: str) -> type[DocumentTask] | None:
    """The task class of a declared document task (its documents loaded once per source), else None."""
    source = _DECLARED.get(name)
    if source is None:
        return None
    built = _BUILT.get(name)
    if built is None or built[0] != source:
        rows = tuple(load_documents(name, source))
        digest = hashlib.sha256(json.dumps([[r.prompt, r.answer] for r in rows]).encode()).hexdigest()[:16]
        cls = type(f"DocumentTask_{name}", (DocumentTask,), {
            "name": name, "description": f"documents of {_describe(source)} ({len(rows)} distinct prompts)",
            "rows": rows, "digest": digest})
        _BUILT[name] = (source, cls)
    return _BUILT[name][1]


def declared_names() -> list[str]:
    return sorted(_DECLARED)


def declared_sources() -> dict[str, DocumentSource]:
    """A copy of the declarations, so that a caller (a test) can put them back with `restore_declared`."""
    return dict(_DECLARED)


def restore_declared(sources: dict[str, DocumentSource]) -> None:
    """Make `sources` the whole set of declarations again (what `declared_sources` returned)."""
    _DECLARED.clear()
    _DECLARED.update(sources)


def _describe(source: DocumentSource) -> str:
    if source.lm_eval_task:
        return f"lm-eval task '{source.lm_eval_task}'"
    return str(source.lm_eval_yaml or source.jsonl)


def load_documents(name: str, source: DocumentSource) -> list[Example]:
    """The source's documents as examples with distinct prompts (a prompt seen twice keeps its first answer
    only when both agree; two answers for one prompt is an error, as for a procedural task)."""
    if source.jsonl is not None:
        pairs = _jsonl_pairs(name, Path(source.jsonl))
    else:
        pairs = _lm_eval_pairs(name, source)
    if source.max_documents is not None:
        pairs = pairs[: source.max_documents]
    seen: dict[str, str] = {}
    rows = []
    for prompt, answer in pairs:
        if "\n" in answer or not answer.strip() or not prompt:
            continue  # scoring is "answer, then a newline": such a document cannot be scored that way
        answer = answer.strip()
        if prompt in seen:
            if seen[prompt] != answer:
                raise ValueError(f"task {name!r}: two answers for prompt {prompt[:60]!r}")
            continue
        seen[prompt] = answer
        rows.append(Example(prompt, answer))
    if not rows:
        raise ValueError(f"task {name!r}: no usable document in {_describe(source)}")
    return rows


def _jsonl_pairs(name: str, path: Path) -> list[tuple[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"task {name!r}: jsonl file {path} does not exist")
    return [(row["prompt"], row["answer"]) for row in read_rows(path)]


def _lm_eval_pairs(name: str, source: DocumentSource) -> list[tuple[str, str]]:
    """Every document of every split the lm-eval task has, rendered with the task's own templates."""
    # local: lm-eval takes seconds to import; only scoring needs it (a fully cached run never loads it)
    from lm_eval.tasks import TaskManager, get_task_dict

    if source.lm_eval_yaml is not None:
        path = Path(source.lm_eval_yaml)
        if not path.is_file():
            raise FileNotFoundError(f"task {name!r}: lm_eval_yaml {path} does not exist")
        from lm_eval.tasks._yaml_loader import load_yaml

        task_name = load_yaml(path, resolve_func=False).get("task")
        manager = TaskManager(include_path=str(path.parent), include_defaults=False)
    else:
        task_name, manager = source.lm_eval_task, TaskManager(include_defaults=True)
    if not isinstance(task_name, str) or task_name not in manager.all_tasks:
        raise ValueError(f"task {name!r}: lm-eval has no task {task_name!r}")
    task = get_task_dict([task_name], manager)[task_name]
    pairs = []
    for has, docs in (("has_training_docs", "training_docs"), ("has_validation_docs", "validation_docs"),
                      ("has_test_docs", "test_docs")):
        if getattr(task, has)():
            for doc in getattr(task, docs)():
                pairs.append((str(task.doc_to_text(doc)), _target_text(task, doc)))
    return pairs


def _target_text(task, doc) -> str:
    target = task.doc_to_target(doc)
    if task.OUTPUT_TYPE == "multiple_choice":
        choices = task.doc_to_choice(doc)
        target = choices[target] if isinstance(target, int) else target
    if isinstance(target, list):
        target = target[0]
    return str(target)
