"""LoRA fine-tuning (peft) of the release on the attacker's data: a learning-rate × steps sweep (or an
Optuna search that also chooses the rank and warm-up) chosen on the attacker's validation split, with
checkpoints at the budget fractions of the chosen run."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, field_validator

from attacks.common import SweepConfig, run_sweep
from bench.plugins import Attack, AttackOutput, PublicView, register_attack

if TYPE_CHECKING:
    from bench.toolkit.search import OptunaSpace  # optuna is imported only where a cell searches with it


class LoraFinetuneConfig(SweepConfig):
    lr: list[float] = Field(default_factory=lambda: [1e-3, 2e-3, 4e-3], min_length=1)
    steps: list[int] = Field(default_factory=lambda: [150, 300], min_length=1)
    r: int = Field(8, ge=1, description="grid: the LoRA rank")
    alpha: int = Field(16, ge=1)
    lr_range: tuple[float, float] = (5e-4, 1e-2)
    rank_choices: list[int] = Field(default_factory=lambda: [4, 8, 16], min_length=1,
                                    description="optuna: LoRA ranks to choose from")

    GRID_ONLY: ClassVar[frozenset[str]] = SweepConfig.GRID_ONLY | {"r"}
    OPTUNA_ONLY: ClassVar[frozenset[str]] = SweepConfig.OPTUNA_ONLY | {"rank_choices"}

    @field_validator("rank_choices")
    @classmethod
    def _positive_ranks(cls, ranks: list[int]) -> list[int]:
        if any(rank < 1 for rank in ranks):
            raise ValueError("rank_choices: each rank must be ≥ 1")
        return ranks

    def optuna_space(self) -> OptunaSpace:
        return dataclasses.replace(super().optuna_space(), rank_choices=tuple(self.rank_choices))


@register_attack(track="finetune", family="finetune")
class LoraFinetune(Attack[LoraFinetuneConfig]):
    name = "lora_finetune"
    description = "peft LoRA fine-tuning of the release, lr × steps sweep chosen on the attacker's validation split"

    def run(self, view: PublicView) -> AttackOutput:
        config = self.config
        return run_sweep(view, config, "lora", config.r, config.alpha)
