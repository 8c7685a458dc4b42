"""`trap2`: merging-resistant fine-tuning (Jang, Kim, Koo, Ok, "Trap²", ICML 2026, arXiv 2601.21898).

Merging re-scales every member's update (averaging N updates puts each at 1/N; task arithmetic at its
coefficient), so Trap² fine-tunes the update ΔW to work at its nominal scale and fail when re-scaled:

    J(ΔW) = L(W0 + ΔW) − λ · w(s) · L(W0 + s·ΔW),   s ~ U([s_min, 1−δ] ∪ [1+δ, s_max]),

one Monte-Carlo sample s per step, w(s) ∈ {1/s, 1/√s, 1}. Adapter format: a fresh LoRA on the base,
scaling only B (ΔW = BA → s·BA). Full format: W0 is the base, the scaled point W0 + s·(W − W0) over all
parameters. The scaled point is written into the trainable tensors in place for the second pass and
restored exactly (no model copy per step; the gradient gets the chain rule's factor s), with the same
dropout randomness as the clean pass. As in the paper there is no clipping of the scaled
loss: stability comes from a small λ, gradient-norm clipping at 1.0, skipping non-finite steps and
choosing the checkpoint on the nominal (s = 1) validation accuracy of the owner's held-out tail.

Budget: the zoo's own expert recipe for this model (`recipe.expert_training`, or `recipe.lora.training`
with the LoRA shape of the zoo's adapters), the same replay share of the public mixture, started from
the base — so `none` and `trap2` differ in the objective (and Trap²'s checkpoint selection), not in
budget. `steps` overrides the step count (the λ × budget sweep of issue 15); compare such a release
with `trap2` at λ = 0 and the same `steps`, not with `none`, whose expert keeps the zoo's budget.
Tracks: merge. Formats: adapter, full. Architectures: any causal LM peft can put LoRA on.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from peft import PeftModel, get_peft_model
from pydantic import Field, model_validator

from bench.config import StrictModel
from bench.plugins import Defense, OwnerView, Release, register_defense
from bench.zoo.recipes import expert_seed, lora_config_for
from defenses._training import (
    BestCheckpoint,
    batch_of,
    eval_steps,
    evaluate,
    optimise,
    owner_task_data,
    rows_loss,
    same_randomness,
    settings_from,
)

Weighting = Literal["inv", "inv_sqrt", "one"]


class Trap2Config(StrictModel):
    lambda_: float = Field(0.01, alias="lambda", ge=0,
                           description="weight of the scaled-point loss (paper: 1e-3 … 1e-2)")
    weighting: Weighting = Field("inv_sqrt", description="w(s): 1/s (paper's vision script), 1/√s (its LLM "
                                 "script, the default here: the zoo is language models) or 1")
    s_min: float = Field(0.05, gt=0)
    s_max: float = Field(2.0, gt=1)
    delta: float = Field(0.05, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    eval_every: int = Field(0, ge=0, description="validation period in steps for checkpoint choice (0: a tenth)")
    steps: int | None = Field(None, ge=1, description="training steps instead of the zoo's expert budget (the "
                              "papers train far longer than our zoo: a longer budget lets the trap form)")

    @model_validator(mode="after")
    def _interval(self) -> Trap2Config:
        if not self.s_min < 1 - self.delta:
            raise ValueError("s_min must lie below 1 − delta")
        if not 1 + self.delta < self.s_max:
            raise ValueError("s_max must lie above 1 + delta")
        return self


def sample_scale(config: Trap2Config, rng: random.Random) -> float:
    """s uniform on [s_min, 1−δ] ∪ [1+δ, s_max] (each interval drawn in proportion to its length)."""
    low = (1 - config.delta) - config.s_min
    high = config.s_max - (1 + config.delta)
    u = rng.random() * (low + high)
    return config.s_min + u if u < low else 1 + config.delta + (u - low)


def weight_of(scale: float, weighting: Weighting) -> float:
    return {"inv": 1 / scale, "inv_sqrt": 1 / math.sqrt(scale), "one": 1.0}[weighting]


def scaled_parameters(model: torch.nn.Module, anchor: dict[str, torch.Tensor] | None,
                      scale: float) -> dict[str, torch.Tensor]:
    """The trainable tensors at scale s, differentiable in the trainable parameters (for
    `torch.func.functional_call`; the reference the faster `at_scale` is tested against).

    Adapter (`anchor` None): s·B for every LoRA B factor. Full: W0 + s·(W − W0) for every parameter.
    """
    if anchor is None:
        return {name: scale * p for name, p in model.named_parameters() if p.requires_grad and ".lora_B." in name}
    return {name: anchor[name] + scale * (p - anchor[name]) for name, p in model.named_parameters()
            if p.requires_grad}


def scaled_targets(model: torch.nn.Module, anchor: dict[str, torch.Tensor] | None
                   ) -> list[tuple[torch.nn.Parameter, torch.Tensor | None]]:
    """(parameter, W0) pairs that re-scaling moves: every LoRA B (W0 = None: B → s·B) or every parameter."""
    if anchor is None:
        return [(p, None) for name, p in model.named_parameters() if p.requires_grad and ".lora_B." in name]
    return [(p, anchor[name]) for name, p in model.named_parameters() if p.requires_grad]


@contextmanager
def at_scale(targets: list[tuple[torch.nn.Parameter, torch.Tensor | None]], scale: float) -> Iterator[None]:
    """Temporarily write the scaled point into the parameters themselves (restored exactly on exit).

    Cheaper than `functional_call`, whose re-parametrisation cost about 35 % of a plain step on the ci
    zoo (measured 107 vs 91 ms per Trap² step against 45 ms per plain step): at this scale the step
    budget of ≤ 2.2× a plain step is otherwise out of reach.
    """
    saved = [p.detach().clone() for p, _ in targets]
    with torch.no_grad():
        for p, w0 in targets:
            if w0 is None:
                p.mul_(scale)
            else:
                p.sub_(w0).mul_(scale).add_(w0)
    try:
        yield
    finally:
        with torch.no_grad():
            for (p, _), value in zip(targets, saved, strict=True):
                p.copy_(value)


def add_scaled_loss_gradient(loss_at_scale: Callable[[], torch.Tensor], parameters: list[torch.nn.Parameter],
                             targets: list[tuple[torch.nn.Parameter, torch.Tensor | None]], scale: float,
                             weight: float) -> torch.Tensor:
    """Add weight · ∂L(scaled point)/∂θ to every `.grad` and return L(scaled point).

    The loss is evaluated with the scaled point written in place; by the chain rule a re-scaled tensor
    (B, or W in W0 + s·(W − W0)) gets s times the gradient at the scaled point, an unscaled trainable one
    (LoRA's A) the gradient itself. A non-finite loss adds nothing (the caller skips the step).
    """
    kept = [p.grad for p in parameters]
    for p in parameters:
        p.grad = None
    with at_scale(targets, scale):
        loss = loss_at_scale()
        if torch.isfinite(loss):
            loss.backward()
    rescaled = {id(p) for p, _ in targets}
    with torch.no_grad():
        for p, before in zip(parameters, kept, strict=True):
            added = p.grad
            if added is not None:
                added.mul_(weight * (scale if id(p) in rescaled else 1.0))
                if before is not None:
                    added.add_(before)
            p.grad = added if added is not None else before
    return loss.detach()


@register_defense(paper="Trap² (Jang et al., ICML 2026, arXiv 2601.21898)", tracks={"merge"}, formats={"adapter", "full"})
class Trap2(Defense[Trap2Config]):
    name = "trap2"
    description = "Trap²: fine-tune the update to work at scale 1 and fail when a merge re-scales it"

    @classmethod
    def budget_control(cls, config: Trap2Config) -> Trap2Config | None:  # type: ignore[override]
        """At its own step budget, Trap² is judged against λ = 0 at that budget: the same code and training,
        no trap term (`none`'s expert keeps the zoo's budget)."""
        return None if config.steps is None else config.model_copy(update={"lambda_": 0.0})

    def protect(self, owner: OwnerView) -> Release:
        config = self.config
        recipe = owner.recipe
        adapter = owner.release_format == "adapter"
        # The zoo's seed for this expert at job seed 0 (same LoRA init and row order as `none`).
        seed = expert_seed(recipe, owner.task or "", adapter, owner.seed)
        torch.manual_seed(seed)
        model: torch.nn.Module = copy.deepcopy(owner.base)
        if adapter:
            lora = recipe.lora
            model = get_peft_model(model, lora_config_for(owner.base, lora.r, lora.alpha, lora.dropout))
            training = lora.training
            anchor = None
        else:
            training = recipe.expert_training
            for parameter in model.parameters():
                parameter.requires_grad_(True)
            anchor = {name: p.detach().clone() for name, p in model.named_parameters()}
        if config.steps is not None:
            training = training.model_copy(update={"steps": config.steps})
        data = batch_of(owner.tokenizer, owner_task_data(owner, training.replay_fraction))
        assert owner.owner_val is not None
        val = batch_of(owner.tokenizer, owner.owner_val)
        settings = settings_from(training, seed, config.grad_clip)
        parameters = [p for p in model.parameters() if p.requires_grad]
        rng = random.Random(seed)
        scaled_losses: list[float] = []
        checkpoints = BestCheckpoint(model)
        marks = eval_steps(settings.steps, config.eval_every)

        targets = scaled_targets(model, anchor)

        def objective(rows: torch.Tensor, step: int) -> float:
            scale = sample_scale(config, rng)
            with same_randomness() as replay:
                clean = rows_loss(model, data, rows)
                clean.backward()
                if config.lambda_ == 0:
                    return clean.item()
                replay()
                scaled = add_scaled_loss_gradient(lambda: rows_loss(model, data, rows), parameters, targets, scale,
                                                  -config.lambda_ * weight_of(scale, config.weighting))
            if not torch.isfinite(scaled):
                return math.nan
            scaled_losses.append(scaled.item())
            return clean.item()

        def after_step(step: int) -> None:
            if step in marks:
                accuracy, loss = evaluate(model, val)
                checkpoints.offer(step, accuracy, loss)

        model.train()
        stats = optimise(parameters, settings, data.input_ids.shape[0], objective, after_step=after_step)
        checkpoints.restore()
        model.eval()
        with at_scale(targets, 0.5):
            half_acc, half_loss = evaluate(model, val)
        notes = {
            "lambda": config.lambda_, "weighting": config.weighting, "steps": settings.steps,
            "skipped_steps": stats.skipped, "best_step": checkpoints.step,
            "val_acc": checkpoints.best[0] if checkpoints.best else None,
            "val_loss": checkpoints.best[1] if checkpoints.best else None,
            "val_acc_at_0.5": half_acc, "val_loss_at_0.5": half_loss,
            "final_train_loss": stats.losses[-1],
            "mean_scaled_loss_last_tenth": _tail_mean(scaled_losses),
        }
        if adapter:
            assert isinstance(model, PeftModel)
        return Release(model, notes=notes)


def _tail_mean(values: list[float]) -> float | None:
    tail = values[-max(1, len(values) // 10):]
    return sum(tail) / len(tail) if tail else None
