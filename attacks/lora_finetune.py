"""LoRA fine-tuning (peft) of the release on the attacker's data, with checkpoints at budget fractions."""

from __future__ import annotations

import copy

from peft import get_peft_model
from pydantic import Field

from bench.config import StrictModel
from bench.evaluate import as_plain_model
from bench.plugins import Attack, AttackOutput, PublicView, register_attack
from bench.zoo.build import lora_config_for
from bench.zoo.training import TrainSettings, tokenise, train


class LoraFinetuneConfig(StrictModel):
    lr: float = Field(1e-3, gt=0)
    steps: int = Field(300, ge=1)
    batch_size: int = Field(32, ge=1)
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)


def checkpoint_steps(steps: int, fractions: list[float]) -> dict[int, float]:
    """Step (1-based) at which each budget fraction is reached."""
    return {max(1, round(fraction * steps)): fraction for fraction in fractions}


@register_attack
class LoraFinetune(Attack):
    name = "lora_finetune"
    description = "peft LoRA fine-tuning of the released base on the attacker's split of the downstream task"
    track = "finetune"
    Config = LoraFinetuneConfig

    def run(self, view: PublicView) -> AttackOutput:
        config: LoraFinetuneConfig = self.config  # type: ignore[assignment]
        model = get_peft_model(copy.deepcopy(as_plain_model(view.release)),
                               lora_config_for(view.base, config.r, config.alpha, 0.0))
        data = tokenise(view.tokenizer, view.attacker_train.prompts, view.attacker_train.answers)
        marks = checkpoint_steps(config.steps, view.budget_fractions)
        snapshots = {}

        def on_step(step: int, loss: float) -> None:
            if step + 1 in marks:
                snapshots[marks[step + 1]] = copy.deepcopy(model).merge_and_unload().eval()
                model.train()

        train(model, data, TrainSettings(steps=config.steps, lr=config.lr, batch_size=config.batch_size,
                                         seed=view.seed), on_step=on_step)
        knobs = {"method": "lora", "lr": config.lr, "steps": config.steps, "r": config.r}
        return AttackOutput(models=snapshots, knobs=knobs, steps=config.steps, examples=len(view.attacker_train.prompts))
