"""Multi-task heal (issue 29): merge the release with the public experts through mergekit, then fine-tune
the merged model (peft LoRA or full) on the attacker's data for the protected task *and* every member.

`merge_heal` heals on T_p's data alone, so its heal pulls the merge toward T_p and wipes the other member
(in its release-free control too): it cannot reach the merge track's goal, a model that keeps every
member's skill. This is the heal a reviewer runs instead. It models an attacker who holds a little data
for each skill it wants (its own attacker_train rows of each task, never the owner's or test's) and repairs
whatever a defense broke in the merge, for all of them at once.
"""

from __future__ import annotations

from pydantic import Field

from attacks.merge_heal import MergeHealConfig, merge_then_heal
from bench.plugins import Attack, AttackOutput, PublicView, register_attack
from bench.toolkit.finetuning import Method


class MultiTaskHealConfig(MergeHealConfig):
    heal: Method = Field("lora", description="LoRA (peft) or full fine-tuning of the merged model")


def heal_data(view: PublicView) -> tuple[list[str], list[str]]:
    """T_p's attacker_train rows, then each member's, interleaved by the training loop's own shuffle."""
    prompts, answers = list(view.attacker_train.prompts), list(view.attacker_train.answers)
    missing = sorted(set(view.public_experts) - set(view.public_experts_train))
    if missing:
        raise ValueError(f"multitask_heal needs the attacker's training rows of every member; the view has none "
                         f"for {missing} (PublicView.public_experts_train)")
    for task in sorted(view.public_experts):
        rows = view.public_experts_train[task]
        prompts += rows.prompts
        answers += rows.answers
    return prompts, answers


@register_attack(track="merge", family="data")
class MultiTaskHeal(Attack[MultiTaskHealConfig]):
    name = "multitask_heal"
    description = ("mergekit merge, then a short fine-tune (LoRA or full) of the merged model on the "
                   "attacker's data for the protected task and every member")

    def run(self, view: PublicView) -> AttackOutput:
        prompts, answers = heal_data(view)
        return merge_then_heal(view, self.config, self.config.heal, prompts, answers,
                               heal_tasks=[view.task, *sorted(view.public_experts)])
