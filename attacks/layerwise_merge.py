"""Layer-wise adaptive merging (issue 29, DESIGN §4): one coefficient per layer group and member, fitted on
the attacker's validation split by coordinate ascent from the plain merge (every weight 1).

A scale trap is trained against one global scale of the update: the loss rises when the whole update is
re-scaled. An attacker with per-layer coefficients can keep the update at scale 1 in the layers where the
trap lives and re-weight or drop it elsewhere, or turn off one layer of a member that conflicts with the
release (AdaMerging's layer-wise coefficients, here fitted by search on `attacker_val` rather than by
entropy minimisation on unlabelled test inputs). Only `view.score_val` is consulted.

mergekit's in-memory API broadcasts a parameter over every tensor, so the merge runs once per layer group
with that group's weights; the methods allowed here treat each tensor on its own, so merging group by group
is the same merge. The grouping by layer index is ours (no maintained library groups a state dict so).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field, field_validator

from attacks.common import (
    MergeInputs,
    Objective,
    SeedFreeMerge,
    merge_knobs,
    model_from_state,
    objective_examples,
    validation_scorer,
    weighted_method,
)
from bench.config import StrictModel
from bench.plugins import Attack, AttackOutput, PublicView, register_attack
from bench.toolkit.merging import draws_random, merge_state_dicts, method_spec, sparsifies

#: `model.layers.3.` (Llama, Mamba), `transformer.h.3.` (GPT-2), `blocks.3.`: the block index of a tensor.
LAYER = re.compile(r"\.(?:layers|h|blocks)\.(\d+)\.")
OUTSIDE = "embeddings and head"


class LayerwiseMergeConfig(StrictModel):
    method: str = Field("task_arithmetic", description="mergekit method with a per-member weight that treats each "
                        "tensor on its own and draws no random number (task_arithmetic, ties)")
    weights: list[float] = Field(default_factory=lambda: [0.0, 0.5, 1.0, 1.5, 2.0], min_length=2,
                                 description="candidate coefficients of one member in one layer group (0 drops it)")
    rounds: int = Field(1, ge=1, le=3, description="coordinate-ascent passes over every (group, member)")
    density: float = Field(1.0, gt=0, le=1, description="for sparsifying methods")
    objective: Objective = Field("all", description="maximise T_p with the members' tasks (the merge track's goal)")

    @field_validator("method")
    @classmethod
    def _per_tensor_method(cls, method: str) -> str:
        weighted_method(method)
        if draws_random(method):
            raise ValueError(f"mergekit method '{method}' draws random numbers: merging it layer by layer would "
                             "not be the same merge")
        return method


def layer_groups(names: list[str]) -> dict[str, list[str]]:
    """Tensor names by group: one per block index, and one for everything outside the blocks."""
    groups: dict[str, list[str]] = {}
    for name in names:
        match = LAYER.search(name)
        groups.setdefault(f"layer {int(match.group(1))}" if match else OUTSIDE, []).append(name)
    return dict(sorted(groups.items(), key=lambda item: (item[0] != OUTSIDE, len(item[0]), item[0])))


@register_attack(track="merge", family="rescaling")
class LayerwiseMerge(SeedFreeMerge, Attack[LayerwiseMergeConfig]):
    name = "layerwise_merge"
    description = ("fits one merge coefficient per layer group and member (0 … 2) on the attacker's validation "
                   "split, by coordinate ascent from the plain merge")

    def run(self, view: PublicView) -> AttackOutput:
        config = self.config
        inputs = MergeInputs.from_view(view)
        layout = inputs.layout(config.method)
        evaluate = validation_scorer(view, config.objective)
        groups = layer_groups(list(inputs.base))
        members = list(inputs.members)
        merged_groups: dict[tuple[str, tuple[float, ...]], dict[str, torch.Tensor]] = {}
        trace: list[dict[str, Any]] = []
        names = {parameter.name for parameter in method_spec(config.method).parameters}

        def parameters(weights: Mapping[str, float]) -> dict[str, Any]:
            chosen: dict[str, Any] = {"weight": dict(weights)}
            if "normalize" in names:
                chosen["normalize"] = False  # normalising would undo the fitted scales
            if sparsifies(config.method):
                chosen["density"] = config.density
            return chosen

        def merged(group: str, weights: Mapping[str, float]) -> dict[str, torch.Tensor]:
            """One group's merged tensors, merged once per distinct weighting of that group."""
            key = (group, tuple(weights[name] for name in members))
            if key not in merged_groups:
                names = groups[group]
                merged_groups[key] = merge_state_dicts(
                    {n: inputs.base[n] for n in names},
                    {member: {n: state[n] for n in names} for member, state in inputs.members.items()},
                    config.method, parameters(weights), seed=inputs.seed, layout=layout)
            return merged_groups[key]

        def trial(plan: dict[str, dict[str, float]]) -> tuple[float, Any]:
            state = {name: tensor for group, weights in plan.items() for name, tensor in merged(group, weights).items()}
            model = model_from_state(inputs.template, {name: state[name] for name in inputs.base})
            value = evaluate(model)
            trace.append({"weights": {group: dict(weights) for group, weights in plan.items()}, "val": value})
            return value, model

        plan = {group: dict.fromkeys(members, 1.0) for group in groups}
        best_value, best_model = trial(plan)
        for _ in range(config.rounds):
            for group in groups:
                for member in members:
                    for weight in config.weights:
                        if weight == plan[group][member]:
                            continue
                        candidate = {**plan, group: {**plan[group], member: weight}}
                        value, model = trial(candidate)
                        if value > best_value:
                            best_value, best_model, plan = value, model, candidate
        knobs = merge_knobs(config.method, {**parameters(plan[next(iter(groups))]), "weight": plan}, layout,
                            view.seed, objective=config.objective, val_score=best_value, evaluations=len(trace),
                            groups=list(groups), trace=trace)
        return AttackOutput(models={1.0: best_model}, knobs=knobs, examples=objective_examples(view, config.objective))
