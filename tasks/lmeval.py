"""Expose tasks to lm-eval as task YAMLs over local JSONL files.

Every benchmark score goes through lm-eval, so the same configs also accept stock lm-eval tasks and
hand-written task YAMLs on machines that have them. For each task two forms are generated:

* ``lockbench_<task>`` (log-likelihood): acc = 1 iff the answer followed by a newline is the greedy
  continuation of the prompt, i.e. greedy decoding would print exactly the answer and then stop;
* ``lockbench_<task>_gen`` (generate_until): exact match of the greedy generation, cut at the first
  newline, against the answer. With ``max_gen_toks`` > the longest answer in characters it measures
  the same thing, except that a model ending the answer with its EOS token instead of a newline
  passes here and fails the log-likelihood form.

Each form scores ``test``; the ``_val`` variants score ``attacker_val``, the split attackers may tune on.
The owner's and attackers' training splits are never referenced by a YAML.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import datasets
import pydantic
import yaml

from bench.runtime.storage import replace_atomically, write_text_atomic
from tasks.base import SPLITS, SplitSizes
from tasks.registry import list_tasks
from tasks.rows import read_rows
from tasks.splits import build_splits

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

PREFIX = "lockbench_"
FORMS: tuple[str, ...] = ("loglikelihood", "gen")
_FORM_ALIASES = {
    "loglikelihood": "loglikelihood",
    "ll": "loglikelihood",
    "gen": "gen",
    "generate_until": "gen",
}
SCORED_SPLITS: dict[str, str] = {"test": "", "attacker_val": "_val"}
"""Split scored through lm-eval → suffix of its task name."""
METRIC_KEYS: dict[str, str] = {"loglikelihood": "acc,none", "gen": "exact_match,none"}
"""Key of the score in ``lm_eval.simple_evaluate(...)["results"][<lm-eval task name>]``."""
MIN_GEN_TOKS = 16

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
Kind = Literal["procedural", "stock", "jsonl", "lm_eval_yaml"]


class TaskSource(pydantic.BaseModel, extra="forbid", frozen=True):
    """Where a task comes from, as written in a config.

    ``name`` alone: a registered procedural task, else a stock lm-eval task passed through.
    ``jsonl``: a directory with ``test.jsonl`` (and optionally the other split files), or one file
    used as ``test``; rows need string ``prompt`` and ``answer``. ``lm_eval_yaml``: an existing
    single-task lm-eval YAML. A bare string is accepted as ``{"name": string}``.
    """

    name: str
    jsonl: Path | None = None
    lm_eval_yaml: Path | None = None

    @pydantic.model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"name": data} if isinstance(data, str) else data

    @pydantic.field_validator("name")
    @classmethod
    def _check_name(cls, name: str) -> str:
        if not _NAME_RE.match(name):
            raise ValueError(f"task name {name!r} must match {_NAME_RE.pattern} (it names files and tasks)")
        return name

    @pydantic.model_validator(mode="after")
    def _one_source(self) -> TaskSource:
        if self.jsonl is not None and self.lm_eval_yaml is not None:
            raise ValueError(f"task {self.name!r}: give at most one of `jsonl` and `lm_eval_yaml`, not both")
        if self.lm_eval_yaml is not None and self.lm_eval_yaml.suffix not in (".yaml", ".yml"):
            raise ValueError(f"task {self.name!r}: lm_eval_yaml {str(self.lm_eval_yaml)!r} is not .yaml")
        return self

    @property
    def kind(self) -> Kind:
        if self.jsonl is not None:
            return "jsonl"
        if self.lm_eval_yaml is not None:
            return "lm_eval_yaml"
        return "procedural" if self.name in list_tasks() else "stock"


@dataclass(frozen=True)
class _Entry:
    kind: Kind
    files: dict[str, Path]  # split -> JSONL file (procedural and jsonl sources)
    names: dict[tuple[str, str], str]  # (split, form) -> lm-eval task name


@dataclass(frozen=True)
class MaterializedTasks:
    """The result of :func:`materialize`: where lm-eval finds the tasks and what they are called."""

    include_path: Path
    entries: dict[str, _Entry] = field(repr=False)

    @property
    def tasks(self) -> list[str]:
        """Task names, in the order given to materialize."""
        return list(self.entries)

    @property
    def needs_default_tasks(self) -> bool:
        """Whether a stock lm-eval task is among them (then build the TaskManager with defaults)."""
        return any(e.kind == "stock" for e in self.entries.values())

    def kind(self, task: str) -> Kind:
        return self._entry(task).kind

    def lm_eval_name(self, task: str, split: str = "test", form: str = "loglikelihood") -> str:
        """The lm-eval task name scoring `split` of `task` in `form` ("loglikelihood" or "gen").

        Stock and YAML tasks define their own metric, so `form` is ignored for them, and they only
        have a `test` split: asking for another raises rather than silently scoring the test set.
        """
        if split not in SCORED_SPLITS:
            raise ValueError(f"split {split!r} is not scored by lm-eval; use one of {list(SCORED_SPLITS)}")
        try:
            canonical = _FORM_ALIASES[form]
        except KeyError:
            raise ValueError(f"unknown form {form!r}; use one of {list(FORMS)}") from None
        entry = self._entry(task)
        if entry.kind in ("stock", "lm_eval_yaml"):
            canonical = "loglikelihood"
        try:
            return entry.names[(split, canonical)]
        except KeyError:
            raise ValueError(f"task {task!r} ({entry.kind}) has no {split!r} split to score") from None

    def split_path(self, task: str, split: str) -> Path:
        """The JSONL file holding `split` of a procedural or jsonl task."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; use one of {list(SPLITS)}")
        entry = self._entry(task)
        if entry.kind not in ("procedural", "jsonl"):
            raise ValueError(f"task {task!r} is a {entry.kind} task and has no local JSONL splits")
        try:
            return entry.files[split]
        except KeyError:
            raise FileNotFoundError(f"task {task!r} has no {split!r} split ({split}.jsonl)") from None

    def load_split(self, task: str, split: str) -> datasets.Dataset:
        """`split` of `task` as a Dataset (read directly, no datasets cache involved)."""
        return datasets.Dataset.from_list(read_rows(self.split_path(task, split)))

    def _entry(self, task: str) -> _Entry:
        try:
            return self.entries[task]
        except KeyError:
            raise KeyError(f"task {task!r} was not materialized; have {self.tasks}") from None


# ----------------------------------------------------------------------------- file writing


class _Dumper(yaml.SafeDumper):
    """Writes strings containing a newline double-quoted ("{{answer}}\\n"), which reads unambiguously."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = '"' if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _dump_yaml(cfg: dict[str, Any]) -> str:
    header = "# Generated by lockbench (tasks.lmeval); rewritten on every run, do not edit.\n"
    return header + yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, width=4096)


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def write_jsonl_atomic(dataset: datasets.Dataset, dest: Path) -> bool:
    """`Dataset.to_json` (JSON lines) to `dest`, atomically and only if the bytes differ."""

    def write(scratch: Path) -> None:
        with _quiet_progress():
            dataset.to_json(str(scratch), lines=True)

    return replace_atomically(dest, write, only_if_changed=True)


# ----------------------------------------------------------------------------- lm-eval configs


def task_config(lm_name: str, data_file: Path, split: str, form: str, max_gen_toks: int, task: str) -> dict:
    """One lm-eval task over one JSONL split (absolute path: lm-eval resolves data_files against
    the working directory, not the YAML's location)."""
    cfg: dict[str, Any] = {
        "task": lm_name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {split: str(data_file)}},
        "test_split": split,
        "doc_to_text": "{{prompt}}",
        # lm-eval's default " " would be inserted between prompt and answer in few-shot turns.
        "target_delimiter": "",
        "num_fewshot": 0,
    }
    if form == "loglikelihood":
        cfg |= {
            "output_type": "loglikelihood",
            # The newline makes "acc" (is_greedy) mean: greedy decoding emits the answer, then stops.
            "doc_to_target": "{{answer}}\n",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
    else:
        cfg |= {
            "output_type": "generate_until",
            # The bare column (not "{{answer}}"): lm-eval literal_eval()s rendered targets that look
            # like "[...]" and would turn such an answer into a list of targets.
            "doc_to_target": "answer",
            "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": max_gen_toks},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        }
    cfg["metadata"] = {"version": 1.0, "lockbench_task": task, "split": split, "form": form}
    return cfg


def _names_for(task: str) -> dict[tuple[str, str], str]:
    return {
        (split, form): f"{PREFIX}{task}{'_gen' if form == 'gen' else ''}{suffix}"
        for split, suffix in SCORED_SPLITS.items()
        for form in FORMS
    }


def _write_task_dir(task_dir: Path, configs: dict[str, dict]) -> None:
    """Write lm-eval name -> config as YAMLs in task_dir and drop stale lockbench YAMLs there."""
    task_dir.mkdir(parents=True, exist_ok=True)
    for lm_name, cfg in configs.items():
        write_text_atomic(task_dir / f"{lm_name}.yaml", _dump_yaml(cfg), only_if_changed=True)
    for old in task_dir.glob(f"{PREFIX}*.yaml"):
        if old.stem not in configs:
            old.unlink(missing_ok=True)


def _check_user_yaml(task: str, path: Path) -> None:
    # local: lm-eval takes seconds to import; only scoring needs it (a fully cached run never loads it)
    from lm_eval.tasks._yaml_loader import load_yaml

    try:
        cfg = load_yaml(path, resolve_func=False)
    except Exception as err:  # noqa: BLE001 - report any parse failure with the task it belongs to
        raise ValueError(f"task {task!r}: cannot read lm-eval YAML {path}: {err}") from err
    if "group" in cfg or not isinstance(cfg.get("task"), str):
        raise ValueError(f"task {task!r}: {path} must define one lm-eval task (a `task:` name, no `group:`)")


def _jsonl_files(task: str, path: Path) -> dict[str, Path]:
    if path.is_dir():
        files = {split: path / f"{split}.jsonl" for split in SPLITS if (path / f"{split}.jsonl").is_file()}
        if "test" not in files:
            raise FileNotFoundError(f"task {task!r}: {path} has no test.jsonl")
        return files
    if path.is_file():
        return {"test": path}
    raise FileNotFoundError(f"task {task!r}: jsonl path {path} does not exist")


def _jsonl_configs(task: str, files: dict[str, Path]) -> dict[str, dict]:
    names = _names_for(task)
    scored = [split for split in SCORED_SPLITS if split in files]
    longest = max(len(row["answer"]) for split in scored for row in read_rows(files[split]))
    # Enough tokens to emit the longest answer and its newline even at one token per character.
    max_gen_toks = max(MIN_GEN_TOKS, longest + 1)
    configs = {}
    for split in scored:
        for form in FORMS:
            name = names[(split, form)]
            configs[name] = task_config(name, files[split], split, form, max_gen_toks, task)
    return configs


def _coerce(sources: Sequence[TaskSource | str | Mapping[str, Any]]) -> list[TaskSource]:
    out = [s if isinstance(s, TaskSource) else TaskSource.model_validate(s) for s in sources]
    names = [s.name for s in out]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"task(s) given more than once: {duplicates}")
    return out


def materialize(
    sources: Sequence[TaskSource | str | Mapping[str, Any]],
    seed: int,
    sizes: SplitSizes,
    root: Path,
) -> MaterializedTasks:
    """Write the splits and lm-eval YAMLs of `sources` under `root` (idempotent, atomic per file).

    Procedural tasks get ``root/<task>/<split>.jsonl`` for all SPLITS; every non-stock task gets its
    YAMLs in ``root/<task>/``. Pass ``include_path`` to lm-eval (see :func:`task_manager`).
    """
    root = Path(root).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    coerced = _coerce(sources)
    _check_unique_names(coerced)  # before writing anything, so a failed call leaves no stray YAML
    entries: dict[str, _Entry] = {}
    for source in coerced:
        task, kind = source.name, source.kind
        task_dir = root / task
        if kind == "procedural":
            splits = build_splits(task, seed, sizes)
            task_dir.mkdir(parents=True, exist_ok=True)
            files = {split: task_dir / f"{split}.jsonl" for split in SPLITS}
            for split in SPLITS:
                write_jsonl_atomic(splits[split], files[split])
            configs = _jsonl_configs(task, files)
        elif kind == "jsonl":
            assert source.jsonl is not None
            files = _jsonl_files(task, source.jsonl.expanduser().resolve())
            configs = _jsonl_configs(task, files)
        elif kind == "lm_eval_yaml":
            assert source.lm_eval_yaml is not None
            path = source.lm_eval_yaml.expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(f"task {task!r}: lm_eval_yaml {path} does not exist")
            _check_user_yaml(task, path)
            files = {}
            lm_name = _names_for(task)[("test", "loglikelihood")]
            # An absolute include keeps the user's !function references resolving next to their
            # file; our `task:` key wins over theirs so the name is predictable.
            configs = {lm_name: {"include": str(path), "task": lm_name}}
        else:  # stock lm-eval task: nothing to write, the name passes through
            entries[task] = _Entry(kind, {}, {("test", "loglikelihood"): task})
            continue
        _write_task_dir(task_dir, configs)
        names = {key: name for key, name in _names_for(task).items() if name in configs}
        entries[task] = _Entry(kind, files, names)
    return MaterializedTasks(include_path=root, entries=entries)


def _check_unique_names(sources: list[TaskSource]) -> None:
    """Refuse e.g. a jsonl task "add_gen" next to procedural "add" (both would be lockbench_add_gen)."""
    owners: dict[str, str] = {}
    for source in sources:
        task = source.name
        candidates = [task] if source.kind == "stock" else list(_names_for(task).values())
        for lm_name in candidates:
            if lm_name in owners and owners[lm_name] != task:
                raise ValueError(f"lm-eval task {lm_name!r} would belong to {owners[lm_name]!r} and {task!r}")
            owners[lm_name] = task


# ----------------------------------------------------------------------------- TaskManager


def _yaml_fingerprint(path: Path) -> tuple[tuple[str, int, int], ...]:
    """Which YAMLs exist under `path` (and their mtimes): a cached TaskManager only indexes the
    YAMLs present when it was built, so a new materialize into the same root must rebuild it."""
    items = []
    for p in sorted(path.glob("**/*.yaml")):
        with contextlib.suppress(FileNotFoundError):
            st = p.stat()
            items.append((p.relative_to(path).as_posix(), st.st_mtime_ns, st.st_size))
    return tuple(items)


@functools.lru_cache(maxsize=16)
def _cached_task_manager(path: str, include_defaults: bool, fingerprint: tuple) -> TaskManager:
    # local: lm-eval takes seconds to import; only scoring needs it (a fully cached run never loads it)
    from lm_eval.tasks import TaskManager

    del fingerprint  # part of the cache key only
    return TaskManager(include_path=path, include_defaults=include_defaults)


def task_manager(include_path: Path, include_defaults: bool = False) -> TaskManager:
    """An lm-eval TaskManager over `include_path`, cached per process (indexing stock tasks takes
    seconds, hence include_defaults only when a stock task is requested)."""
    path = Path(include_path).expanduser().resolve()
    return _cached_task_manager(str(path), include_defaults, _yaml_fingerprint(path))
