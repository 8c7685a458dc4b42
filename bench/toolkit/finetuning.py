"""Fine-tuning recipes shared by the zoo's validity check and the fine-tuning attacks."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from peft import PeftModel, get_peft_model
from pydantic import Field
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bench.config import StrictModel
from bench.toolkit.evaluate import as_plain_model
from bench.zoo.config import TrainingConfig
from bench.zoo.recipes import lora_config_for
from bench.zoo.training import TrainSettings, tokenise, train

Method = Literal["lora", "full"]


class FinetuneRecipe(StrictModel):
    """One fine-tuning configuration: LoRA (peft) or full, with its training budget."""

    method: Method
    training: TrainingConfig
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)


def _trainable(model: PreTrainedModel | PeftModel, method: Method, r: int, alpha: int,
               seed: int) -> PreTrainedModel | PeftModel:
    """A trainable copy: a fresh peft LoRA over a folded copy, or a plain copy for full fine-tuning.

    The LoRA matrices are initialised from `seed` alone (in a forked stream): a search's run at one
    learning rate then starts from the same adapter whichever rates ran before it, and a grid that drops
    a rate leaves the others unchanged."""

    plain = copy.deepcopy(as_plain_model(model))
    if method == "lora":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return get_peft_model(plain, lora_config_for(plain, r, alpha, 0.0))
    return plain


def _folded(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """An eval-mode plain copy of the model being trained (LoRA folded in); training continues untouched."""
    snapshot = copy.deepcopy(model)
    if isinstance(snapshot, PeftModel):
        snapshot = snapshot.merge_and_unload()
    return snapshot.eval()


def checkpoint_step(steps: int, fraction: float) -> int:
    """The step (1-based) at which `fraction` of a `steps`-step budget is reached."""
    return min(steps, max(1, round(fraction * steps)))


@dataclass(frozen=True)
class FinetuneSettings:
    """One fine-tuning run: LoRA (peft, `lora_r` / `lora_alpha`) or full, and its training loop's settings."""

    method: Method
    training: TrainSettings
    lora_r: int = 8
    lora_alpha: int = 16
    #: full fine-tuning only: per parameter name, the entries that may change (the rest get no gradient;
    #: with the default zero weight decay they keep their values exactly)
    update_mask: Mapping[str, torch.Tensor] | None = None

    @classmethod
    def from_recipe(cls, recipe: FinetuneRecipe, seed: int) -> FinetuneSettings:
        training = recipe.training
        return cls(recipe.method, TrainSettings(steps=training.steps, lr=training.lr, batch_size=training.batch_size,
                                                warmup_steps=training.warmup_steps, seed=seed),
                   recipe.lora_r, recipe.lora_alpha)


def train_snapshots(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                    answers: list[str], settings: FinetuneSettings, at_steps: Sequence[int]
                    ) -> dict[int, PreTrainedModel]:
    """Fine-tune a copy of `model` as `settings` say; a folded snapshot after each step in `at_steps`."""
    trained = _trainable(model, settings.method, settings.lora_r, settings.lora_alpha, settings.training.seed)
    mask_gradients = None
    if settings.update_mask is not None:
        if settings.method != "full":
            raise ValueError("update_mask: only full fine-tuning trains the release's own entries")
        masked = [(p, settings.update_mask[name].to(p.dtype)) for name, p in trained.named_parameters()
                  if name in settings.update_mask]

        def mask_gradients() -> None:
            for parameter, keep in masked:
                if parameter.grad is not None:
                    parameter.grad.mul_(keep)
    marks = set(at_steps)
    snapshots: dict[int, PreTrainedModel] = {}

    def on_step(step: int, loss: float) -> None:
        if step + 1 in marks:
            snapshots[step + 1] = _folded(trained)
            trained.train()

    train(trained, tokenise(tokenizer, prompts, answers), settings.training, on_step=on_step,
          on_gradients=mask_gradients)
    return snapshots


def finetune_checkpoints(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                         answers: list[str], settings: FinetuneSettings, fractions: Sequence[float] = (1.0,)
                         ) -> dict[float, PreTrainedModel]:
    """Fine-tune a copy of `model` and return a folded snapshot at each budget fraction of its steps."""
    steps = settings.training.steps
    snapshots = train_snapshots(model, tokenizer, prompts, answers, settings,
                                [checkpoint_step(steps, f) for f in fractions])
    return {fraction: snapshots[checkpoint_step(steps, fraction)] for fraction in fractions}


def finetune(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], answers: list[str],
             recipe: FinetuneRecipe, seed: int) -> PreTrainedModel:
    """Return a fine-tuned copy of `model` (LoRA adapters are folded back in); `model` is untouched."""
    return finetune_checkpoints(model, tokenizer, prompts, answers, FinetuneSettings.from_recipe(recipe, seed))[1.0]


@dataclass
class SweepResult:
    """The configuration chosen on the attacker's validation split, its checkpoints, and every trial."""

    lr: float
    steps: int
    val_score: float
    checkpoints: dict[float, PreTrainedModel]
    trials: list[dict[str, float]] = field(default_factory=list)
    trained_steps: int = 0  # optimiser steps over the whole sweep


def sweep(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
          answers: list[str], settings: FinetuneSettings, lrs: Sequence[float], step_counts: Sequence[int],
          evaluate: Callable[[PreTrainedModel], float], fractions: Sequence[float] = (1.0,),
          independent_runs: bool = False) -> SweepResult:
    """Try every (lr, steps) from `model` (the rest as `settings` say; their lr and steps are ignored), pick
    the best by `evaluate` (the attacker's own split), and keep only the winner's budget-fraction
    checkpoints. Ties go to fewer steps, then the lower lr; trials are listed in the order they ran
    (lr-major).

    With `independent_runs` each pair is its own run (its own cosine schedule). Otherwise one run per lr
    of the largest step count is stopped early at each candidate count (checkpoints of the same run):
    half the cost for two counts, and the full-length candidates are exactly the independent ones.
    """
    counts = sorted(set(step_counts))
    keep = sorted({*fractions, 1.0})
    best: SweepResult | None = None
    trials: list[dict[str, float]] = []
    for lr in sorted(set(lrs)):
        for stops in ([[steps] for steps in counts] if independent_runs else [counts]):
            run = replace(settings, training=replace(settings.training, lr=lr, steps=max(stops), warmup_steps=0))
            snapshots = train_snapshots(model, tokenizer, prompts, answers, run,
                                        [checkpoint_step(stop, f) for stop in stops for f in keep])
            for stop in stops:
                value = evaluate(snapshots[checkpoint_step(stop, 1.0)])
                trials.append({"lr": lr, "steps": stop, "val": value})
                better = best is None or value > best.val_score or (
                    value == best.val_score and (stop, lr) < (best.steps, best.lr))
                if better:  # only the winner's checkpoints stay in memory
                    best = SweepResult(lr, stop, value, {f: snapshots[checkpoint_step(stop, f)] for f in fractions})
            del snapshots
    assert best is not None, "the sweep needs at least one learning rate and one step count"
    best.trials = trials
    best.trained_steps = len(set(lrs)) * (sum(counts) if independent_runs else max(counts))
    return best
