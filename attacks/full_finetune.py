"""Full fine-tuning of every weight of the release on the attacker's data: a learning-rate × steps sweep
chosen on the attacker's validation split (the strongest adaptation a defense like PMP must survive)."""

from __future__ import annotations

from pydantic import Field

from attacks.common import SweepConfig, run_sweep
from bench.plugins import Attack, AttackOutput, PublicView, register_attack


class FullFinetuneConfig(SweepConfig):
    lr: list[float] = Field(default_factory=lambda: [1e-4, 3e-4, 1e-3], min_length=1)
    steps: list[int] = Field(default_factory=lambda: [150, 300], min_length=1)


@register_attack
class FullFinetune(Attack):
    name = "full_finetune"
    description = "full fine-tuning of every weight, lr × steps sweep chosen on the attacker's validation split"
    track = "finetune"
    Config = FullFinetuneConfig

    def run(self, view: PublicView) -> AttackOutput:
        return run_sweep(view, self.config, "full")  # type: ignore[arg-type]
