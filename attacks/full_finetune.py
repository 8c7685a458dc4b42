"""Full fine-tuning of every weight of the release on the attacker's data: a learning-rate × steps sweep
(or an Optuna search that also chooses the warm-up) chosen on the attacker's validation split (the
strongest adaptation a defense like PMP must survive)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from attacks.common import SweepConfig, run_sweep
from bench.plugins import Attack, AttackOutput, PublicView, register_attack


class FullFinetuneConfig(SweepConfig):
    lr: list[float] = Field(default_factory=lambda: [1e-4, 3e-4, 1e-3], min_length=1)
    steps: list[int] = Field(default_factory=lambda: [150, 300], min_length=1)
    lr_range: tuple[float, float] = (1e-4, 3e-3)

    @model_validator(mode="before")
    @classmethod
    def _no_rank(cls, data: Any) -> Any:
        """A clearer error than "extra input" for a LoRA setting copied into a full fine-tuning config."""
        if isinstance(data, dict) and "rank_choices" in data:
            raise ValueError("rank_choices: full fine-tuning trains every weight; there is no LoRA rank to search")
        return data


@register_attack(track="finetune", family="finetune")
class FullFinetune(Attack[FullFinetuneConfig]):
    name = "full_finetune"
    description = "full fine-tuning of every weight, lr × steps sweep chosen on the attacker's validation split"

    def run(self, view: PublicView) -> AttackOutput:
        return run_sweep(view, self.config, "full")
