"""What a cell record measures on its models beyond one accuracy per task (DESIGN §5):

- on the test split, per-example values (`bench.results.examples`) of every model a cell's number depends on,
  so that intervals can resample test examples, paired across defenses (same examples, same resample);
- on the attacker's validation split, the accuracies the attacker's pick is made from: the merged (or
  fine-tuned) model's, and its own references — the public base, the release on T_p and the public
  experts on the other members. Nothing the attacker could not measure enters its pick.

Scores of the public base and experts are cached once per model under the storage root.
"""

from __future__ import annotations

import json
from typing import Any

from bench.harness.context import HarnessContext
from bench.harness.grid import Cell
from bench.harness.score_cache import cached_scores
from bench.results.examples import encode
from bench.toolkit.evaluate import TaskScore


def as_record(scores: dict[str, TaskScore]) -> dict[str, dict[str, Any]]:
    """{"acc": {task: accuracy}, "examples": {task: code}}: the JSON form of a scorer's TaskScores."""
    return {"acc": {task: score.accuracy for task, score in scores.items()},
            "examples": {task: encode(score.examples) for task, score in scores.items()}}


def base_test(ctx: HarnessContext, model: str) -> dict[str, dict[str, Any]]:
    """The public base on every task's test split (`as_record` form), cached per model."""
    return cached_scores(ctx, f"base-{model}", model, lambda: as_record(ctx.scorer.score_examples(
        ctx.zoo.load_base(model), ctx.zoo.tokenizer(model), ctx.all_tasks)))


def expert_test(ctx: HarnessContext, model: str, release_format: str, task: str) -> dict[str, dict[str, Any]]:
    """A public expert on its own task's test split (`as_record` form), cached."""
    return cached_scores(ctx, f"expert-{model}-{release_format}-{task}", f"{model}{release_format}{task}",
                         lambda: as_record(ctx.scorer.score_examples(
                             ctx.zoo.load_expert_as(model, task, release_format), ctx.zoo.tokenizer(model), [task])))


def val_scores(ctx: HarnessContext, model_name: str, model: Any, tasks: list[str]) -> dict[str, float]:
    """Accuracy on the attacker's validation split of `tasks`, through the scorer attacks are given."""
    return dict(ctx.scorer.attacker_val(ctx.zoo.tokenizer(model_name), tasks)(model, tasks))


def _base_val(ctx: HarnessContext, model: str, tasks: list[str]) -> dict[str, float]:
    return cached_scores(ctx, f"base-val-{model}", model + "+".join(tasks),
                         lambda: val_scores(ctx, model, ctx.zoo.load_base(model), tasks))


def _expert_val(ctx: HarnessContext, model: str, release_format: str, task: str) -> float:
    return cached_scores(ctx, f"expert-val-{model}-{release_format}-{task}", f"{model}{release_format}{task}",
                         lambda: val_scores(ctx, model, ctx.zoo.load_expert_as(model, task, release_format), [task]))[task]


def merge_scores(ctx: HarnessContext, cell: Cell, merged: Any, release: dict[str, Any]) -> dict[str, Any]:
    """The raw merge-track columns of one cell from its merged model and its release's metrics.json."""
    job = cell.defense
    members = list(cell.members)
    tasks = [cell.task, *members]
    scores = ctx.scorer.score_examples(merged, ctx.zoo.tokenizer(job.model), tasks)
    base = base_test(ctx, job.model)
    experts = {m: expert_test(ctx, job.model, job.release_format, m) for m in members}
    expert_acc = {m: experts[m]["acc"][m] for m in members}
    examples = {"merged": {t: encode(scores[t].examples) for t in tasks},
                "base": {t: base["examples"].get(t, "") for t in tasks},
                "release": {cell.task: release.get("examples", {}).get(cell.task, "")},
                "experts": {m: experts[m]["examples"].get(m, "") for m in members}}
    standalone = {cell.task: release.get("utility_val")} | {
        m: _expert_val(ctx, job.model, job.release_format, m) for m in members}
    return {
        "merged_acc": scores[cell.task].accuracy,
        "merged_acc_members": _mean([scores[m].accuracy for m in members]),
        "members_expert_acc": _mean(list(expert_acc.values())),
        "merged_acc_by_member": json.dumps({m: scores[m].accuracy for m in members}, sort_keys=True),
        "base_acc_by_member": json.dumps({m: base["acc"][m] for m in members}, sort_keys=True),
        "expert_acc_by_member": json.dumps(expert_acc, sort_keys=True),
        "val_acc_by_task": json.dumps(val_scores(ctx, job.model, merged, tasks), sort_keys=True),
        "val_base_by_task": json.dumps(_base_val(ctx, job.model, tasks), sort_keys=True),
        "val_standalone_by_task": json.dumps(standalone, sort_keys=True),
        "examples": json.dumps(examples, sort_keys=True),
    }


def finetune_scores(ctx: HarnessContext, cell: Cell, models: dict[float, Any], release: dict[str, Any],
                    budget_tag: dict[float, str]) -> dict[str, Any]:
    """The raw finetune-track columns of one cell from its model after each budget fraction."""
    job = cell.defense
    before = release[f"acc:{cell.task}"]
    record: dict[str, Any] = {"acc_before": before}
    examples = {"before": {cell.task: release.get("examples", {}).get(cell.task, "")}}
    tokenizer = ctx.zoo.tokenizer(job.model)
    last = max(models)
    for fraction, model in sorted(models.items()):
        after = ctx.scorer.score_examples(model, tokenizer, [cell.task])[cell.task]
        tag = budget_tag.get(fraction)
        if tag is None:  # a fraction cells.csv has no column for: kept in the record, and warned about when published
            record[f"gain_at_{fraction:g}"], record[f"acc_at_{fraction:g}"] = after.accuracy - before, after.accuracy
        else:  # the CSV's own column names (bench.results.columns)
            record[f"gain_{tag}"] = after.accuracy - before
            if tag != "b1":  # the full budget's accuracy is `acc_after`
                record[f"acc_{tag}"] = after.accuracy
            examples[tag] = {cell.task: encode(after.examples)}
        if fraction == last:
            record["acc_after"] = after.accuracy
            record["val_acc_by_task"] = json.dumps(val_scores(ctx, job.model, model, [cell.task]))
    record["examples"] = json.dumps(examples, sort_keys=True)
    return record


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
