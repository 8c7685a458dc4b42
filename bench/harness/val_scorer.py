"""The scorer handed to attacks (`PublicView.score_val`): lm-eval accuracy on the attacker's validation split.

DESIGN §2: an attack may measure a model on its own validation split and on nothing else. The scorer is
built by the harness from the materialised tasks but keeps none of them: it holds the tokenizer, the
attacker_val rows (already in memory, the same rows the attack gets as `attacker_val` /
`public_experts_val`) and the lm-eval names of those tasks — no file path, no storage root, no
`MaterializedTasks`, so nothing in it leads to the test split, the owner's split or `private/`.

Scores equal `bench.toolkit.evaluate.score(..., split="attacker_val")`: the lm-eval task config is the one
`tasks.lmeval` writes for the attacker_val YAML (same name, templates, delimiter, metric), except that its
documents come from an in-memory `datasets.Dataset` through lm-eval's `custom_dataset` hook instead of
`dataset_path: json` over the JSONL file. Nothing is written to disk. `bench.harness.scoring.LmEvalScorer`
builds one from the materialised tasks (`read_attacker_val`), keeping none of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bench.plugins import TaskData
from bench.runtime.device import device_of
from bench.toolkit.evaluate import METRIC_BY_FORM, as_plain_model, quiet_hflm_class
from tasks.lmeval import MIN_GEN_TOKS, MaterializedTasks, task_config
from tasks.rows import read_rows

SPLIT = "attacker_val"
FORM = "loglikelihood"


class AttackerValScorer:
    """`score_val(model, task_names) -> {task: accuracy}` on attacker_val only; `calls` counts evaluations.

    Scoring a task it was not built with raises KeyError: there is nothing else it could score.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, rows: Mapping[str, TaskData], names: Mapping[str, str],
                 batch_size: int = 64):
        self._tokenizer = tokenizer
        # Copies as tuples: the scorer's documents cannot be changed through the view's TaskData lists.
        self._rows = {task: (tuple(data.prompts), tuple(data.answers)) for task, data in rows.items()}
        self._names = dict(names)
        self._datasets: dict[str, Any] = {}
        self._batch_size = batch_size
        self.calls = 0

    @property
    def tasks(self) -> list[str]:
        """The tasks it can score."""
        return list(self._rows)

    def task_config(self, task: str) -> dict[str, Any]:
        """The lm-eval task config scoring `task`'s attacker_val rows: `tasks.lmeval`'s, documents in memory."""
        if task not in self._rows:
            raise KeyError(f"the attacker-val scorer has no task {task!r}; it scores {sorted(self._rows)}")
        config = task_config(self._names[task], Path(), SPLIT, FORM, MIN_GEN_TOKS, task)
        del config["dataset_path"], config["dataset_kwargs"]

        def documents(**_: Any) -> Any:  # lm-eval passes the task's metadata as keywords
            return self._documents(task)

        # A closure, not a partial: lm-eval deep-copies task configs, and copies a function as itself.
        config["custom_dataset"] = documents
        return config

    def _documents(self, task: str) -> Any:
        """The task's rows as lm-eval's dataset (built once: an in-memory Arrow table, no cache file)."""
        if task not in self._datasets:
            # local: torch and the Hugging Face stack load only where a model is touched (`import bench` stays light)
            import datasets

            prompts, answers = self._rows[task]
            table = datasets.Dataset.from_dict({"prompt": list(prompts), "answer": list(answers)})
            self._datasets[task] = datasets.DatasetDict({SPLIT: table})
        return self._datasets[task]

    def __call__(self, model: PreTrainedModel | PeftModel, task_names: list[str]) -> dict[str, float]:
        # local: lm-eval takes seconds to import; only scoring needs it (a fully cached run never loads it)
        from lm_eval import simple_evaluate

        configs = {task: self.task_config(task) for task in task_names}
        self.calls += 1
        plain = as_plain_model(model).eval()
        lm = quiet_hflm_class()(pretrained=plain, tokenizer=self._tokenizer, batch_size=self._batch_size,
                                 device=str(device_of(plain)), max_length=plain.config.max_position_embeddings
                                 if hasattr(plain.config, "max_position_embeddings") else None)
        with torch.no_grad():
            # By name, as `score` asks for its YAML tasks (the same lm-eval names: a caller watching
            # simple_evaluate sees attacker_val task names), from a TaskManager indexing only these configs.
            output = simple_evaluate(model=lm, tasks=[config["task"] for config in configs.values()],
                                     task_manager=_task_manager(configs.values()), log_samples=False,
                                     bootstrap_iters=0, verbosity="ERROR")
        assert output is not None
        metric = METRIC_BY_FORM[FORM]
        return {task: float(output["results"][config["task"]][metric]) for task, config in configs.items()}


def read_attacker_val(tasks: MaterializedTasks, task_names: Sequence[str] | None = None
                      ) -> tuple[dict[str, TaskData], dict[str, str]]:
    """The attacker_val rows of `task_names` (None: every task that has that split), read from the JSONL
    lm-eval would read, and their lm-eval task names; a task without an attacker_val split raises."""
    if task_names is None:
        task_names = [task for task in tasks.tasks if _has_attacker_val(tasks, task)]
    rows: dict[str, TaskData] = {}
    names: dict[str, str] = {}
    for task in dict.fromkeys(task_names):
        names[task] = tasks.lm_eval_name(task, split=SPLIT, form=FORM)
        read = read_rows(tasks.split_path(task, SPLIT))
        rows[task] = TaskData([row["prompt"] for row in read], [row["answer"] for row in read])
    return rows, names


def _has_attacker_val(tasks: MaterializedTasks, task: str) -> bool:
    try:
        tasks.lm_eval_name(task, split=SPLIT, form=FORM)
    except ValueError:
        return False
    return True


def _task_manager(configs: Iterable[dict[str, Any]]) -> Any:
    """An lm-eval TaskManager whose index holds exactly `configs`, inline (nothing on disk is indexed:
    lm-eval's own tasks would take seconds, and there is no YAML to find)."""
    # local: lm-eval takes seconds to import; only scoring needs it (a fully cached run never loads it)
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import TaskIndex

    manager = TaskManager(include_defaults=False)
    for config in configs:
        manager.task_index[config["task"]] = TaskIndex.entry_from_config(config)
    return manager
