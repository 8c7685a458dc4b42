"""Fine-tuning recipes shared by the zoo's validity check and the fine-tuning attacks."""

from __future__ import annotations

import copy
from typing import Literal

from peft import get_peft_model
from pydantic import Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bench.config import StrictModel
from bench.zoo.config import TrainingConfig
from bench.zoo.training import TrainSettings, tokenise, train


class FinetuneRecipe(StrictModel):
    """One fine-tuning configuration: LoRA (peft) or full, with its training budget."""

    method: Literal["lora", "full"]
    training: TrainingConfig
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)


def finetune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    answers: list[str],
    recipe: FinetuneRecipe,
    seed: int,
) -> PreTrainedModel:
    """Return a fine-tuned copy of `model` (LoRA adapters are folded back in); `model` is untouched."""
    from bench.zoo.build import lora_config_for

    trained = copy.deepcopy(model)
    if recipe.method == "lora":
        trained = get_peft_model(trained, lora_config_for(trained, recipe.lora_r, recipe.lora_alpha, 0.0))
    data = tokenise(tokenizer, prompts, answers)
    settings = TrainSettings(steps=recipe.training.steps, lr=recipe.training.lr,
                             batch_size=recipe.training.batch_size,
                             warmup_steps=recipe.training.warmup_steps, seed=seed)
    train(trained, data, settings)
    if recipe.method == "lora":
        trained = trained.merge_and_unload()
    return trained.eval()
