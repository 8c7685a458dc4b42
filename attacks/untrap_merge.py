"""Un-trap fine-tune, then merge (issue 29): Trap²'s own objective turned around.

Trap² trains the update ΔW = W − W0 so that `W0 + s·ΔW` fails away from s = 1, which is what merging does
to each member. The attacker holds the release and the public base W0, so it can train the release
(full weights; an adapter is folded first) to *minimise* the mean loss over scales, `E_s L(W0 + s·ΔW)` with
s drawn uniformly from [s_min, s_max] each step (by default averaged with the loss at s = 1, which keeps
the skill: without it, measured on the ci zoo's trapped `length` release, accuracy fell 0.96 → 0.81), on
its own T_p data: a release that works at every scale survives the merge. It then merges the un-trapped
release with the public experts, searching each method of its grid at a few shared coefficients on
attacker_val.

The scaled forward is torch.func's `functional_call` on the release's own module with the scaled weights;
the loop is the zoo's training loop (`bench.zoo.training.train`). No library offers the objective itself,
so it is written here.
"""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace
from typing import Any

import torch
from pydantic import Field
from torch import nn

from attacks.common import MergeInputs, Objective, merge_knobs, validation_scorer
from bench.config import StrictModel
from bench.plugins import Attack, AttackOutput, PublicView, register_attack
from bench.toolkit.evaluate import as_plain_model
from bench.toolkit.merging import sparsifies
from bench.zoo.training import TrainSettings, tokenise, train


class UnTrapConfig(StrictModel):
    steps: int = Field(100, ge=1, description="training steps of the un-trap fine-tune")
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(32, ge=1)
    s_min: float = Field(0.05, gt=0, description="smallest scale of the update (Trap²'s own range)")
    s_max: float = Field(2.0, gt=0, description="largest scale of the update")
    anchor: bool = Field(True, description="add the loss at s = 1 to each step's scaled loss (the mean of the "
                         "two), so the release keeps its skill while it learns to survive re-scaling")
    methods: list[str] = Field(default_factory=lambda: ["task_arithmetic", "ties"], min_length=1,
                               description="mergekit methods of the merge after the un-trap")
    coefficients: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.7, 1.0], min_length=1,
                                      description="shared weights tried per method, chosen on attacker_val")
    density: float = Field(0.5, gt=0, le=1, description="for sparsifying methods")
    objective: Objective = "all"


class ScaleAveraged(nn.Module):
    """The release's module evaluated at `W0 + s·(W − W0)`, one s drawn per forward from U[s_min, s_max]
    (with `anchor`, the loss is the mean of that and the loss at s = 1). Its parameters are the release's
    own, so training it trains the release."""

    def __init__(self, model: nn.Module, base_state: dict[str, torch.Tensor], config: UnTrapConfig,
                 seed: int) -> None:
        super().__init__()
        self.model = model
        self.base_state = {name: base_state[name].detach() for name, _ in model.named_parameters()}
        self.s_min, self.s_max, self.anchor = config.s_min, config.s_max, config.anchor
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, **inputs: Any) -> SimpleNamespace:
        scale = self.s_min + (self.s_max - self.s_min) * torch.rand((), generator=self.generator).item()
        scaled = {name: self.base_state[name] + scale * (weight - self.base_state[name])
                  for name, weight in self.model.named_parameters()}
        loss = torch.func.functional_call(self.model, scaled, args=(), kwargs=inputs).loss
        if self.anchor:
            loss = (loss + self.model(**inputs).loss) / 2
        return SimpleNamespace(loss=loss)


def untrap(view: PublicView, config: UnTrapConfig) -> nn.Module:
    """A copy of the release (folded) trained to work at every scale of its update, on attacker_train."""
    model = copy.deepcopy(as_plain_model(view.release))
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    wrapped = ScaleAveraged(model, dict(view.base.state_dict()), config, view.seed)
    data = tokenise(view.tokenizer, view.attacker_train.prompts, view.attacker_train.answers)
    train(wrapped, data, TrainSettings(steps=config.steps, lr=config.lr, batch_size=config.batch_size,
                                       seed=view.seed))
    return model.eval()


@register_attack(track="merge", family="data")
class UnTrapMerge(Attack[UnTrapConfig]):
    name = "untrap_merge"
    description = ("fine-tunes the release on attacker data to work at every scale of its update (Trap²'s "
                   "objective turned around), then merges it, coefficients chosen on attacker_val")

    def run(self, view: PublicView) -> AttackOutput:
        config = self.config
        untrapped = untrap(view, config)
        # the un-trapped release stands in for the release (folded once, the original never)
        inputs = MergeInputs.from_view(dataclasses.replace(view, release=untrapped, release_format="full"))
        evaluate = validation_scorer(view, config.objective)
        trace: list[dict[str, Any]] = []
        best: tuple[float, Any, str, dict[str, Any]] = (-1.0, None, "", {})
        for method in config.methods:
            layout = inputs.layout(method)
            for coefficient in config.coefficients:
                parameters: dict[str, Any] = {"weight": coefficient}
                if sparsifies(method):
                    parameters["density"] = config.density
                model = inputs.merge(method, parameters, layout)
                value = evaluate(model)
                trace.append({"method": method, "weight": coefficient, "val": value})
                if value > best[0]:
                    best = (value, model, method, parameters)
        value, model, method, parameters = best
        knobs = merge_knobs(method, parameters, inputs.layout(method), view.seed, objective=config.objective,
                            val_score=value, evaluations=len(trace), trace=trace, untrap_steps=config.steps,
                            untrap_lr=config.lr)
        return AttackOutput(models={1.0: model}, knobs=knobs, steps=config.steps,
                            examples=len(view.attacker_train.prompts))
