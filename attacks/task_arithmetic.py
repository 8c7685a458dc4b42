"""Task arithmetic (Ilharco et al., 2023) through mergekit: base + λ · Σ wᵢ (θᵢ − base)."""

from __future__ import annotations

from pydantic import Field

from attacks.common import merge_release
from bench.config import StrictModel
from bench.plugins import Attack, AttackOutput, PublicView, register_attack


class TaskArithmeticConfig(StrictModel):
    weight: float = Field(1.0, gt=0, description="coefficient of every member's task vector")
    normalize: bool = Field(False, description="divide by the sum of weights (plain averaging when True)")
    lambda_: float = Field(1.0, alias="lambda", gt=0)


@register_attack
class TaskArithmetic(Attack):
    name = "task_arithmetic"
    description = "mergekit task arithmetic of the release with the public experts at a fixed coefficient"
    track = "merge"
    Config = TaskArithmeticConfig

    def run(self, view: PublicView) -> AttackOutput:
        config: TaskArithmeticConfig = self.config  # type: ignore[assignment]
        parameters = {"weight": config.weight, "normalize": config.normalize, "lambda": config.lambda_}
        merged = merge_release(view, "task_arithmetic", parameters)
        knobs = {"method": "task_arithmetic", "weights": config.weight, "normalize": config.normalize,
                 "lambda": config.lambda_, "density": None, "rescale": None}
        return AttackOutput(models={1.0: merged}, knobs=knobs)
