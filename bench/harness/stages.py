"""The cached stages: defend (+ evaluate release) and attack (+ evaluate) for one cell.

Layout under the storage root, each entry written atomically and keyed by a content hash:
- `releases/<job>/public/`  the release in Hugging Face format (what attacks may load)
- `releases/<job>/metrics.json`  release-side scores
- `private/<job>/`  the defense's private material, a separate tree no attack is given
- `cells/<cell>.json`  one raw cell record
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import save_file
from transformers import PreTrainedModel

from bench.harness.cell_scores import as_record, base_test, finetune_scores, merge_scores, val_scores
from bench.harness.context import HarnessContext
from bench.harness.controls import CONTROL_DEFENSE, ControlRelease
from bench.harness.grid import Cell, DefenseJob
from bench.harness.owner_secret import owner_secret
from bench.harness.references import reference_base, reference_expert
from bench.harness.score_cache import CODE_VERSION, read_json_record
from bench.plugins import (
    ATTACKS,
    DEFENSES,
    AttackNotApplicable,
    Defense,
    OwnerView,
    PublicView,
    Release,
    TaskData,
)
from bench.results.columns import BUDGETS
from bench.runtime.storage import (
    cached_directory,
    content_hash,
    fault_point,
    is_complete,
    write_json_atomic,
)
from bench.toolkit.measure import release_diagnostics
from bench.zoo.build import load_model
from bench.zoo.recipes import replay_sample
from bench.zoo.training import ANSWER_END  # noqa: F401 - documents the scoring convention

#: The budget fraction of each finetune column tag (`b025` at ¼), as a cell's `examples` roles.
BUDGET_TAGS: dict[float, str] = {fraction: tag for tag, fraction in BUDGETS.items()}


class DefenseOutputError(RuntimeError):
    """A defense returned something that cannot be released (wrong type, NaN weights, …)."""


def release_dir(ctx: HarnessContext, job: DefenseJob) -> Path:
    return ctx.root / "releases" / f"{job.defense}-{job.model}-{_job_key(ctx, job)}"


def private_dir(ctx: HarnessContext, job: DefenseJob) -> Path:
    return ctx.root / "private" / f"{job.defense}-{job.model}-{_job_key(ctx, job)}"


def _job_key(ctx: HarnessContext, job: DefenseJob) -> str:
    return content_hash(job.key, ctx.zoo.hash, CODE_VERSION, *ctx.cache_salt)


def owner_view(ctx: HarnessContext, job: DefenseJob) -> OwnerView:
    zoo = ctx.zoo
    recipe = ctx.preset.zoo.recipe(job.model)
    # finetune track: the job seed's own plain base (re-trained per seed), what `none` releases; the
    # release-free control reads only the base's config (it starts from a random init), so it does not
    # wait for, or race `none` to train, that base
    own_base = job.track == "finetune" and job.defense != CONTROL_DEFENSE
    base = reference_base(ctx, job) if own_base else zoo.load_base(job.model)
    view = OwnerView(track=job.track, release_format=job.release_format, model_name=job.model,
                     base=base, tokenizer=zoo.tokenizer(job.model), seed=job.seed,
                     secret=owner_secret(ctx.preset.zoo.seed, job.key), task=job.task, recipe=recipe)
    if job.track == "merge":
        assert job.task is not None
        view.owner_train, view.owner_val = hold_out(ctx.split(job.task, "owner_train"))
        view.replay = TaskData(*replay_sample(recipe, len(view.owner_train.prompts), job.seed))
        view.reference_release = reference_expert(ctx, job)  # the job seed's own plain expert
    else:
        for task in recipe.base_tasks:
            owner = ctx.split(task, "owner_train")
            train, view.capability_val[task] = hold_out(owner)
            count = max(1, round(recipe.base_task_fractions.get(task, 1.0) * len(owner.prompts)))
            view.capability_data[task] = TaskData(train.prompts[:count], train.answers[:count])
    return view


def hold_out(data: TaskData, fraction: float = 0.1) -> tuple[TaskData, TaskData]:
    """Split an owner split into training and a held-out tail for the owner's checkpoint selection."""
    held = max(1, round(fraction * len(data.prompts)))
    return (TaskData(data.prompts[:-held], data.answers[:-held]),
            TaskData(data.prompts[-held:], data.answers[-held:]))


def check_release(release: Any, job: DefenseJob) -> Release:
    if not isinstance(release, Release):
        raise DefenseOutputError(f"defense '{job.defense}' returned {type(release).__name__}, expected Release")
    model = release.model
    if job.release_format == "adapter" and job.track == "merge" and not isinstance(model, PeftModel):
        raise DefenseOutputError(f"defense '{job.defense}' must release a peft adapter for format 'adapter'")
    if not isinstance(model, PreTrainedModel | PeftModel):
        raise DefenseOutputError(f"defense '{job.defense}' released {type(model).__name__}, not a transformers model")
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise DefenseOutputError(f"defense '{job.defense}' released non-finite weights in {name}")
    return release


def _release_metrics(ctx: HarnessContext, job: DefenseJob, model: PreTrainedModel | PeftModel) -> dict[str, Any]:
    """Merge track: the release's accuracy on T_p (lm-eval, test split, with its per-example values; and on
    the attacker's validation split, the attacker's own reference for T_p) and its diagnostics at scales
    1/8 … 2 on the owner's held-out tail; finetune track: the base's capability tasks and the downstream tasks."""
    tokenizer = ctx.zoo.tokenizer(job.model)
    if job.track == "merge":
        assert job.task is not None
        held_out = hold_out(ctx.split(job.task, "owner_train"))[1]
        test = as_record(ctx.scorer.score_examples(model, tokenizer, [job.task]))
        return {"utility": test["acc"][job.task], "examples": test["examples"],
                "utility_val": val_scores(ctx, job.model, model, [job.task])[job.task],
                **release_diagnostics(ctx.zoo.load_base(job.model), model, tokenizer, held_out.prompts,
                                      held_out.answers)}
    capability = list(ctx.preset.zoo.base_tasks)  # the base's skills: what a protected base must keep
    test = as_record(ctx.scorer.score_examples(model, tokenizer, capability + list(ctx.preset.zoo.downstream_tasks)))
    scores = test["acc"]
    return {"utility": sum(scores[t] for t in capability) / len(capability), "examples": test["examples"],
            **{f"acc:{task}": value for task, value in scores.items()}}


def run_defense_job(ctx: HarnessContext, job: DefenseJob) -> Path:
    """Produce, check, save and score one release (cached)."""
    target = release_dir(ctx, job)
    if is_complete(target):
        return target
    if job.defense == CONTROL_DEFENSE:
        defense: Defense = ControlRelease()  # its config text only names the kind of control
    else:
        defense_cls = DEFENSES.get(job.defense)
        defense = defense_cls(defense_cls.Config.model_validate_json(job.defense_config))
    family = ctx.zoo.family(job.model)

    def build(scratch: Path) -> None:
        if not defense.supports(job.track, job.release_format, family):
            write_json_atomic(scratch / "metrics.json", {"status": "n/a"})
            return
        torch.manual_seed(job.seed)
        started = time.perf_counter()
        release = check_release(defense.protect(owner_view(ctx, job)), job)
        seconds = time.perf_counter() - started
        release.model.save_pretrained(str(scratch / "public"), safe_serialization=True)
        ctx.zoo.tokenizer(job.model).save_pretrained(scratch / "public")
        fault_point("defense:saved")
        if release.private:
            _write_private(ctx, job, release.private)
        metrics = _release_metrics(ctx, job, release.model)
        write_json_atomic(scratch / "metrics.json", {"status": "ok", "defense_seconds": seconds,
                                                     "notes": release.notes, **metrics})

    return cached_directory(target, build)


def _write_private(ctx: HarnessContext, job: DefenseJob, private: dict[str, torch.Tensor]) -> None:
    """Written afresh with every new release, so a release never pairs with an older run's mask or key."""
    shutil.rmtree(private_dir(ctx, job), ignore_errors=True)

    def build(scratch: Path) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in private.items()}, str(scratch / "private.safetensors"))

    cached_directory(private_dir(ctx, job), build)


def load_release(ctx: HarnessContext, job: DefenseJob) -> PreTrainedModel | PeftModel:
    """Load a release from its public directory only."""
    public = release_dir(ctx, job) / "public"
    if (public / "adapter_config.json").is_file():
        return PeftModel.from_pretrained(ctx.zoo.load_base(job.model), str(public))
    return load_model(public)


def _public_view(ctx: HarnessContext, cell: Cell, fractions: list[float]) -> PublicView:
    job, zoo = cell.defense, ctx.zoo
    experts: dict[str, Any] = {}
    experts_val, experts_train = {}, {}
    for member in cell.members:
        experts[member] = zoo.load_expert_as(job.model, member, job.release_format)
        experts_val[member] = ctx.split(member, "attacker_val")
        experts_train[member] = ctx.split(member, "attacker_train")
    return PublicView(track=job.track, release_format=job.release_format, model_name=job.model,
                      release=load_release(ctx, job), base=zoo.load_base(job.model), tokenizer=zoo.tokenizer(job.model),
                      task=cell.task, attacker_train=ctx.split(cell.task, "attacker_train"),
                      attacker_val=ctx.split(cell.task, "attacker_val"), public_experts=experts,
                      public_experts_val=experts_val, public_experts_train=experts_train, seed=job.seed,
                      budget_fractions=fractions,
                      score_val=ctx.scorer.attacker_val(zoo.tokenizer(job.model), [cell.task, *cell.members]))


def cached_cell(ctx: HarnessContext, cell: Cell) -> dict[str, Any] | None:
    """The cell's cached record if it is intact and belongs to this cell, else None."""
    record = read_json_record(cell_path(ctx, cell))
    if not isinstance(record, dict) or record.get("status") in (None, "failed"):
        return None
    return record if record.get("attack_key") == cell.attack_key else None


def cell_path(ctx: HarnessContext, cell: Cell) -> Path:
    return ctx.root / "cells" / f"{content_hash(cell.key, ctx.zoo.hash, CODE_VERSION, *ctx.cache_salt)}.json"


def attack_family(cell: Cell) -> str:
    """The cell's attack family (DESIGN §4), as its attack declares it for this configuration."""
    attack_cls = ATTACKS.get(cell.attack)
    return attack_cls.attack_family(attack_cls.Config.model_validate_json(cell.attack_config))


def cell_identity(ctx: HarnessContext, cell: Cell) -> dict[str, Any]:
    job = cell.defense
    paper = ControlRelease.paper if job.defense == CONTROL_DEFENSE else DEFENSES.get(job.defense).paper
    return {"attack_family": attack_family(cell), "defense_paper": paper,
        "track": job.track, "defense": job.defense_label, "defense_config": job.defense_config,
        "release_format": job.release_format, "model": job.model, "family": ctx.zoo.family(job.model),
        "task": cell.task, "members": "+".join(cell.members), "n_members": len(cell.members) + 1
        if job.track == "merge" else 0, "attack": cell.attack_label, "attack_config": cell.attack_config,
        "attack_key": cell.attack_key, "seed": job.seed,
    }


def run_cell(ctx: HarnessContext, cell: Cell, fractions: list[float]) -> dict[str, Any]:
    """Attack one release and score it; returns the raw record (cached when it succeeded)."""
    path = cell_path(ctx, cell)
    cached = cached_cell(ctx, cell)
    if cached is not None:
        return cached
    record: dict[str, Any] = {**cell_identity(ctx, cell), "status": "ok", "error": ""}
    try:
        record.update(_attack_and_score(ctx, cell, fractions))
    except Exception as error:  # one failing cell must not stop the grid
        record.update(status="failed", error=f"{type(error).__name__}: {error}".replace("\n", " | ")[:500],
                      traceback=traceback.format_exc(limit=8))
        return record
    write_json_atomic(path, record)
    return record


def _attack_and_score(ctx: HarnessContext, cell: Cell, fractions: list[float]) -> dict[str, Any]:
    job = cell.defense
    run_defense_job(ctx, job)
    metrics = json.loads((release_dir(ctx, job) / "metrics.json").read_text())
    if metrics["status"] == "n/a":
        return {"status": "n/a"}
    attack_cls = ATTACKS.get(cell.attack)
    attack = attack_cls(attack_cls.Config.model_validate_json(cell.attack_config))
    view = _public_view(ctx, cell, fractions)
    torch.manual_seed(job.seed)
    started = time.perf_counter()
    try:
        output = attack.run(view)
    except AttackNotApplicable as reason:
        return {"status": "n/a", "error": str(reason)[:500]}
    seconds = time.perf_counter() - started
    fault_point("cell:attacked")
    tokenizer = ctx.zoo.tokenizer(job.model)
    base_scores = base_test(ctx, job.model)["acc"]
    result: dict[str, Any] = {
        "utility": metrics["utility"], "base_acc": base_scores[cell.task],
        "defense_seconds": metrics.get("defense_seconds", 0.0), "attack_seconds": seconds,
        "attack_steps": output.steps, "attack_examples": output.examples,
        **{f"knob_{k}": v for k, v in output.knobs.items()},
    }
    if job.track == "merge":
        result.update(merge_scores(ctx, cell, output.models[1.0], metrics))
        result.update(release_metrics_of(metrics))
    else:
        result.update(finetune_scores(ctx, cell, output.models, metrics, BUDGET_TAGS))
    # every intermediate model the attack reports, scored on the cell's task (merge-then-heal's `pre_heal`)
    result["stage_acc"] = {stage: ctx.scorer.score(model, tokenizer, [cell.task])[cell.task]
                           for stage, model in sorted(output.stages.items())}
    return result


def release_metrics_of(metrics: dict[str, Any]) -> dict[str, float]:
    """The release diagnostics of a release's metrics.json, as cell columns."""
    return {key: value for key, value in metrics.items() if key.startswith(("release_acc_", "release_loss_"))}
