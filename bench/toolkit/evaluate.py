"""Scoring through lm-eval: every accuracy lockbench reports comes from `lm_eval.simple_evaluate`.

Procedural tasks default to their log-likelihood form, whose `acc` (lm-eval's is_greedy) says that
greedy decoding would emit exactly the answer and its newline: the same signal as generative
exact match, for one forward pass instead of a decoding loop.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import transformers
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bench.runtime.device import device_of
from tasks.lmeval import MaterializedTasks, task_manager

Form = Literal["loglikelihood", "gen"]
METRIC_BY_FORM = {"loglikelihood": "acc,none", "gen": "exact_match,none"}


def _quiet_lm_eval() -> None:
    """lm-eval draws a progress bar per task and request type; at hundreds of small evaluations per run
    they drown the harness's own progress display, so they are switched off once per process.

    `simple_evaluate` also records the git commit of the working directory by running `git describe
    --always` with stderr left on the terminal (lm_eval.loggers.utils.get_git_commit_hash, imported by name
    into lm_eval.evaluator): outside a git checkout every evaluation printed `fatal: not a git repository`.
    lockbench discards that field (its cells carry their own versions), so the name lm_eval.evaluator
    calls is replaced by one that runs nothing."""

    # local: lm-eval takes seconds to import; only scoring needs it (a fully cached run never loads it)
    import datasets
    import lm_eval.api.task
    import lm_eval.evaluator
    from tqdm import tqdm

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    lm_eval.api.task.tqdm = functools.partial(tqdm, disable=True)
    lm_eval.evaluator.get_git_commit_hash = _no_git_hash


def _no_git_hash() -> None:
    """Stands in for lm-eval's git probe: the results' `git_hash` is None, as lm-eval itself reports outside
    a checkout, and no `git` process (nor its `fatal:` line) is started."""
    return None


@functools.cache
def quiet_hflm_class():
    # local: lm-eval takes seconds to import; only scoring needs it (a fully cached run never loads it)
    from lm_eval.models.huggingface import HFLM

    _quiet_lm_eval()

    class QuietHFLM(HFLM):
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

    return QuietHFLM


def as_plain_model(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """Fold a LoRA adapter into a copy of its base so lm-eval sees an ordinary causal LM."""
    if isinstance(model, PeftModel):
        return copy.deepcopy(model).merge_and_unload()
    return model


def score(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    task_names: Sequence[str],
    tasks: MaterializedTasks,
    split: str = "test",
    form: Form = "loglikelihood",
    limit: int | None = None,
    batch_size: int = 64,
) -> dict[str, float]:
    """Accuracy per task on `split` (`test` for reporting, `attacker_val` for an attacker's search)."""
    output, names = _evaluate(model, tokenizer, task_names, tasks, split, form, limit, batch_size, log_samples=False)
    return {task: result_metric(output["results"][name], METRIC_BY_FORM[form], name) for task, name in names.items()}


@dataclass(frozen=True)
class TaskScore:
    """A task's accuracy and its per-example values in document order (what a bootstrap over test examples
    resamples; lm-eval's accuracy is their mean). `examples` is empty when the metric has no per-example value."""

    accuracy: float
    examples: tuple[float, ...] = ()


def score_examples(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    task_names: Sequence[str],
    tasks: MaterializedTasks,
    split: str = "test",
    form: Form = "loglikelihood",
    batch_size: int = 64,
) -> dict[str, TaskScore]:
    """`score`, with each task's per-example metric values (lm-eval's logged samples, ordered by doc_id)."""
    output, names = _evaluate(model, tokenizer, task_names, tasks, split, form, None, batch_size, log_samples=True)
    scores = {}
    for task, name in names.items():
        accuracy = result_metric(output["results"][name], METRIC_BY_FORM[form], name)
        metric = METRIC_BY_FORM[form].split(",")[0]
        samples = sorted(output.get("samples", {}).get(name, []), key=lambda sample: sample["doc_id"])
        values = tuple(float(sample[metric]) for sample in samples) if all(metric in s for s in samples) else ()
        scores[task] = TaskScore(accuracy, values)
    return scores


def _evaluate(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase, task_names: Sequence[str],
              tasks: MaterializedTasks, split: str, form: Form, limit: int | None, batch_size: int,
              log_samples: bool) -> tuple[dict, dict[str, str]]:
    """One `simple_evaluate` call over the tasks' `split` YAMLs: its output and the lm-eval name of each task."""
    # local: lm-eval takes seconds to import; only scoring needs it (a fully cached run never loads it)
    from lm_eval import simple_evaluate

    plain = as_plain_model(model).eval()
    lm = quiet_hflm_class()(pretrained=plain, tokenizer=tokenizer, batch_size=batch_size, device=str(device_of(plain)),
              max_length=plain.config.max_position_embeddings if hasattr(plain.config, "max_position_embeddings")
              else None)
    names = {task: tasks.lm_eval_name(task, split=split, form=form) for task in task_names}
    with torch.no_grad():
        output = simple_evaluate(
            model=lm,
            tasks=list(names.values()),
            task_manager=task_manager(tasks.include_path, tasks.needs_default_tasks),
            limit=limit,
            log_samples=log_samples,
            bootstrap_iters=0,
            verbosity="ERROR",
        )
    assert output is not None
    return output, names


def result_metric(result: dict[str, object], preferred: str, name: str) -> float:
    """The task's accuracy: `preferred` ("acc,none" or "exact_match,none") when lm-eval reports it, else the
    first other metric of the task (a stock or hand-written YAML defines its own), never a stderr."""
    if preferred in result:
        return float(result[preferred])  # type: ignore[arg-type]
    metrics = [key for key in result if "," in key and "_stderr" not in key and isinstance(result[key], int | float)]
    if not metrics:
        raise ValueError(f"lm-eval reported no metric for task '{name}' (keys: {sorted(result)})")
    return float(result[metrics[0]])  # type: ignore[arg-type]
