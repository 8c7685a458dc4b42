"""Per-process state of a run: the preset, the built zoo and the materialised tasks.

Workers (Ray or serial) rebuild it from the preset and storage root; every piece is cached on disk,
so this costs a few file reads.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness.scoring import Scorer, cache_salt, make_scorer
from bench.plugins import TaskData
from bench.presets import Preset
from bench.zoo.build import Zoo, build_zoo
from tasks import build_splits, materialize
from tasks.lmeval import MaterializedTasks


@dataclass
class HarnessContext:
    preset: Preset
    root: Path
    zoo: Zoo
    tasks: MaterializedTasks
    scorer: Scorer  # every recorded accuracy goes through it (bench.harness.scoring)

    @property
    def cache_salt(self) -> tuple[str, ...]:
        """Added to the key of every cached entry that holds a score."""
        return cache_salt(self.scorer)

    def split(self, task: str, split: str) -> TaskData:
        data = build_splits(task, self.preset.zoo.seed, self.preset.zoo.split_sizes)[split]
        return TaskData(list(data["prompt"]), list(data["answer"]))

    @property
    def all_tasks(self) -> list[str]:
        return scored_tasks(self.preset)


def scored_tasks(preset: Preset) -> list[str]:
    """Every task a preset scores: the base's mixture, the experts' tasks and the downstream tasks."""
    zoo = preset.zoo
    return sorted(set(zoo.base_tasks) | set(zoo.all_expert_tasks()) | set(zoo.downstream_tasks))


#: lm-eval's own functions, kept so `make perf` can measure scoring without the trim.
LM_EVAL_ORIGINALS: dict[str, Any] = {}


@functools.cache
def trim_lm_eval_overheads() -> None:
    """Remove two per-call costs of lm-eval that profiling the harness found (once per process).

    `simple_evaluate` fills an environment block (torch's collect_env: about ten subprocesses such as
    `pip list`, ~1 s) that `bench.toolkit.evaluate.score` discards, on every call; and lm-eval compiles each
    Jinja template anew for every document. With hundreds of small evaluations per run these were
    most of the scoring time (`make perf`, lm-eval figure). Scores are unchanged: the environment block
    is never read, and a compiled template renders exactly as a fresh one.
    """
    # local: lm-eval takes seconds to import; only scoring needs it (a fully cached run never loads it)
    import lm_eval.api.task
    import lm_eval.evaluator
    import lm_eval.utils

    task_class = lm_eval.api.task.ConfigurableTask
    LM_EVAL_ORIGINALS.update(add_env_info=lm_eval.evaluator.add_env_info, apply_template=lm_eval.utils.apply_template,
                             download=task_class.download)
    compiled = functools.lru_cache(maxsize=256)(lm_eval.utils.env.from_string)
    lm_eval.evaluator.add_env_info = lambda results: None
    lm_eval.utils.apply_template = lambda template, doc: compiled(template).render(**doc)
    task_class.download = _cached_download(task_class.download)


def _cached_download(download: Any) -> Any:
    """lm-eval's `Task.download` re-reads a task's dataset (datasets.load_dataset over its JSONL) every
    time a task is built, i.e. on every `score` call. Keep the loaded dataset per process, keyed by the
    dataset arguments and the size and mtime of every local data file, so a rewritten file is re-read.
    Datasets are immutable Arrow tables: sharing one between evaluations changes nothing."""

    cache: OrderedDict[str, Any] = OrderedDict()

    def stamp(value: Any) -> Any:
        if isinstance(value, str) and os.path.isfile(value):
            info = os.stat(value)
            return [value, info.st_size, info.st_mtime_ns]
        if isinstance(value, dict):
            return {key: stamp(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [stamp(item) for item in value]
        return value

    def cached(self: Any, dataset_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if kwargs or not isinstance(getattr(self, "DATASET_PATH", None), str) or callable(
                getattr(self.config, "custom_dataset", None)):
            return download(self, dataset_kwargs, **kwargs)
        key = json.dumps([self.DATASET_PATH, self.DATASET_NAME, stamp(dataset_kwargs or {})], sort_keys=True,
                         default=str)
        if key not in cache:
            download(self, dataset_kwargs)
            cache[key] = self.dataset
            while len(cache) > 256:
                cache.popitem(last=False)
        self.dataset = cache[key]

    return cached


@functools.lru_cache(maxsize=4)
def _context(preset_json: str, root: str) -> HarnessContext:
    preset = Preset.model_validate_json(preset_json)
    grid = preset.grid
    zoo = build_zoo(preset.zoo, Path(root), grid.models if grid else None, grid.expert_models if grid else None)
    tasks = materialize(scored_tasks(preset), preset.zoo.seed, preset.zoo.split_sizes, Path(root) / "tasks" / zoo.hash)
    return HarnessContext(preset, Path(root), zoo, tasks, make_scorer(tasks))


def get_context(preset: Preset, root: Path) -> HarnessContext:
    return _context(preset.model_dump_json(), str(root))


def clear_contexts() -> None:
    """Forget this process's contexts, so the next `get_context` re-checks the zoo on disk."""
    _context.cache_clear()


@contextlib.contextmanager
def lm_eval_untrimmed() -> Iterator[None]:
    """lm-eval as shipped, without `trim_lm_eval_overheads` (restored on exit): what the trim saves
    (`make perf`), and the reference a test compares the trimmed scores with."""
    # local: lm-eval takes seconds to import; only scoring needs it (a fully cached run never loads it)
    import lm_eval.api.task
    import lm_eval.evaluator
    import lm_eval.utils

    trim_lm_eval_overheads()  # records lm-eval's own functions once
    task_class = lm_eval.api.task.ConfigurableTask
    trimmed = lm_eval.evaluator.add_env_info, lm_eval.utils.apply_template, task_class.download
    lm_eval.evaluator.add_env_info = LM_EVAL_ORIGINALS["add_env_info"]
    lm_eval.utils.apply_template = LM_EVAL_ORIGINALS["apply_template"]
    task_class.download = LM_EVAL_ORIGINALS["download"]
    try:
        yield
    finally:
        lm_eval.evaluator.add_env_info, lm_eval.utils.apply_template, task_class.download = trimmed
