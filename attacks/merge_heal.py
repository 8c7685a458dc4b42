"""Merge-then-heal (DESIGN §4): merge the release with the public experts through mergekit, then give the
merged model a short LoRA fine-tune (peft) on the attacker's own data for the protected task.

A defense that breaks the merge only slightly (a damaged but nearby model) is undone by a few steps of
training; the step budget makes the attack cheap enough that an owner cannot dismiss it.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from attacks.common import MergeInputs, merge_knobs
from bench.config import StrictModel
from bench.plugins import Attack, AttackOutput, PublicView, register_attack
from bench.toolkit.finetuning import FinetuneSettings, Method, finetune_checkpoints
from bench.toolkit.merging import method_spec
from bench.zoo.training import TrainSettings


class MergeHealConfig(StrictModel):
    method: str = Field("task_arithmetic", description="mergekit method of the merge step")
    parameters: dict[str, Any] = Field(default_factory=lambda: {"weight": 1.0},
                                       description="mergekit parameters of the merge step")
    steps: int = Field(50, ge=1, description="LoRA steps of the heal (the attacker's budget)")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(32, ge=1)
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _known_parameters(self) -> MergeHealConfig:
        known = {parameter.name for parameter in method_spec(self.method).parameters}
        unknown = sorted(set(self.parameters) - known)
        if unknown:
            raise ValueError(f"mergekit method '{self.method}' has no parameter(s) {unknown}; it takes {sorted(known)}")
        return self


@register_attack(track="merge", family="data")
class MergeHeal(Attack[MergeHealConfig]):
    name = "merge_heal"
    description = "mergekit merge, then a short peft LoRA fine-tune of the merged model on the attacker's data"

    def run(self, view: PublicView) -> AttackOutput:
        return merge_then_heal(view, self.config, "lora", view.attacker_train.prompts, view.attacker_train.answers)


def merge_then_heal(view: PublicView, config: MergeHealConfig, heal: Method, prompts: list[str],
                    answers: list[str], **knobs: Any) -> AttackOutput:
    """The one merge-then-heal: mergekit merge of the release and the members, then a `heal` fine-tune
    (peft LoRA or full) of the merged model on `prompts` → `answers`; the merge before the heal is the
    `pre_heal` stage."""
    inputs = MergeInputs.from_view(view)
    layout = inputs.layout(config.method)
    merged = inputs.merge(config.method, dict(config.parameters), layout)
    settings = FinetuneSettings(heal, TrainSettings(steps=config.steps, lr=config.lr, batch_size=config.batch_size,
                                                    seed=view.seed), config.r, config.alpha)
    healed = finetune_checkpoints(merged, view.tokenizer, prompts, answers, settings)[1.0]
    recorded = merge_knobs(config.method, dict(config.parameters), layout, view.seed, heal=heal,
                           heal_steps=config.steps, heal_lr=config.lr,
                           heal_r=config.r if heal == "lora" else None, **knobs)
    return AttackOutput(models={1.0: healed}, knobs=recorded, steps=config.steps, examples=len(prompts),
                        stages={"pre_heal": merged})
