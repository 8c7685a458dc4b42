"""LoRA fine-tuning (peft) of the release on the attacker's data: a learning-rate × steps sweep chosen on
the attacker's validation split, with checkpoints at the budget fractions of the chosen run."""

from __future__ import annotations

from pydantic import Field

from attacks.common import SweepConfig, run_sweep
from bench.plugins import Attack, AttackOutput, PublicView, register_attack


class LoraFinetuneConfig(SweepConfig):
    lr: list[float] = Field(default_factory=lambda: [1e-3, 2e-3, 4e-3], min_length=1)
    steps: list[int] = Field(default_factory=lambda: [150, 300], min_length=1)
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)


@register_attack
class LoraFinetune(Attack):
    name = "lora_finetune"
    description = "peft LoRA fine-tuning of the release, lr × steps sweep chosen on the attacker's validation split"
    track = "finetune"
    Config = LoraFinetuneConfig

    def run(self, view: PublicView) -> AttackOutput:
        config: LoraFinetuneConfig = self.config  # type: ignore[assignment]
        return run_sweep(view, config, "lora", config.r, config.alpha)
