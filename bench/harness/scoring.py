"""The scorer seam: every accuracy the harness records goes through the run context's `Scorer`.

lm-eval's implementation (`LmEvalScorer`) is the only real one: test-split scores through
`bench.toolkit.evaluate.score`, the attackers' validation scores through `bench.harness.val_scorer.AttackerValScorer`.
Tests may substitute a double, as lm-eval's own `DummyLM` stands in for a model: `$LOCKBENCH_SCORER` names
a factory `module:attribute` called with the materialised tasks (Ray workers inherit the variable), so
plumbing tests of the harness run without lm-eval. A double's name salts every cache key that holds a
score (releases, scores, cells), so its numbers can never be mistaken for lm-eval's in a shared root.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from bench.harness.val_scorer import AttackerValScorer, read_attacker_val
from bench.toolkit.evaluate import score, score_examples
from tasks.lmeval import MaterializedTasks

if TYPE_CHECKING:
    from bench.toolkit.evaluate import TaskScore

SCORER_ENV = "LOCKBENCH_SCORER"
LM_EVAL = "lm_eval"

#: `score_val(model, task_names) -> {task: accuracy}` on the attacker's validation split, with a `calls` count.
ValScorer = Callable[[Any, list[str]], dict[str, float]]


class Scorer(Protocol):
    name: str

    def score(self, model: Any, tokenizer: Any, task_names: Sequence[str]) -> dict[str, float]:
        """Accuracy per task on the test split."""
        ...

    def score_examples(self, model: Any, tokenizer: Any, task_names: Sequence[str]) -> dict[str, TaskScore]:
        """`score` with each task's per-example values on the test split (empty where the scorer has none)."""
        ...

    def attacker_val(self, tokenizer: Any, task_names: Sequence[str] | None = None) -> ValScorer:
        """The scorer an attack gets (PublicView.score_val): the attacker's validation split of these tasks
        (None: of every task that has one) and nothing else."""
        ...


class LmEvalScorer:
    """lm-eval over the materialised task YAMLs (test) and in-memory attacker_val documents."""

    name = LM_EVAL

    def __init__(self, tasks: MaterializedTasks):
        self.tasks = tasks

    def score(self, model: Any, tokenizer: Any, task_names: Sequence[str]) -> dict[str, float]:

        return score(model, tokenizer, list(task_names), self.tasks)

    def score_examples(self, model: Any, tokenizer: Any, task_names: Sequence[str]) -> dict[str, TaskScore]:

        return score_examples(model, tokenizer, list(task_names), self.tasks)

    def attacker_val(self, tokenizer: Any, task_names: Sequence[str] | None = None) -> ValScorer:

        names = None if task_names is None else list(task_names)
        return AttackerValScorer(tokenizer, *read_attacker_val(self.tasks, names))


def make_scorer(tasks: MaterializedTasks) -> Scorer:
    """lm-eval's scorer, or the double `$LOCKBENCH_SCORER` names (`module:factory`)."""
    spec = os.environ.get(SCORER_ENV, LM_EVAL).strip() or LM_EVAL
    if spec == LM_EVAL:
        return LmEvalScorer(tasks)
    module, _, attribute = spec.partition(":")
    if not attribute:
        raise ValueError(f"{SCORER_ENV}={spec!r}: give '{LM_EVAL}' or 'module:factory'")
    return getattr(importlib.import_module(module), attribute)(tasks)


def cache_salt(scorer: Scorer) -> tuple[str, ...]:
    """What a scorer adds to cache keys: nothing for lm-eval (existing caches stay valid), its name otherwise."""
    return () if scorer.name == LM_EVAL else (f"scorer:{scorer.name}",)
