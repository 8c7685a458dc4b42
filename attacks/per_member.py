"""Per-member adaptive merging (DESIGN §4): keep the protected release at weight 1.0 and search the other
members' weights on the attacker's validation split.

A scale trap (Trap²) punishes re-scaling the protected update; an attacker who knows that never
re-scales it and tunes only the public experts. First one shared weight for all others, then (with
`refine`) one coordinate-ascent pass per member. Only `view.score_val` is consulted.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from attacks.common import (
    RELEASE,
    MergeInputs,
    Objective,
    SeedFreeMerge,
    member_weights,
    merge_knobs,
    objective_examples,
    validation_scorer,
    weighted_method,
)
from bench.config import StrictModel
from bench.plugins import Attack, AttackOutput, PublicView, register_attack
from bench.toolkit.merging import method_spec, sparsifies


class PerMemberConfig(StrictModel):
    method: str = Field("task_arithmetic", description="mergekit method with a per-member weight")
    release_weight: float = Field(1.0, gt=0, description="the protected update's pinned weight")
    weights: list[float] = Field(default_factory=lambda: [0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5], min_length=1,
                                 description="candidate weights of the other members (down to 0.02: a member "
                                 "that drowns the pinned release can be turned almost off)")
    refine: bool = Field(False, description="after the shared weight, one coordinate-ascent pass per member "
                         "(n − 1 more searches: off by default for cost, on in the `full` preset)")
    density: float = Field(1.0, gt=0, le=1, description="for sparsifying methods")
    objective: Objective = Field("all", description="with the release pinned, 'protected' would just drop the "
                                 "others; 'all' keeps them (the merge track's goal)")

    @field_validator("method")
    @classmethod
    def _weighted_method(cls, method: str) -> str:
        return weighted_method(method)


@register_attack(track="merge", family="pinned")
class PerMember(SeedFreeMerge, Attack[PerMemberConfig]):
    name = "per_member"
    description = ("pins the release at weight 1.0 and searches the other members' weights on the "
                   "attacker's validation split")

    def run(self, view: PublicView) -> AttackOutput:
        config = self.config
        inputs = MergeInputs.from_view(view)
        layout = inputs.layout(config.method)
        evaluate = validation_scorer(view, config.objective)
        names = {parameter.name for parameter in method_spec(config.method).parameters}
        others = [name for name in inputs.members if name != RELEASE]
        trace: list[dict[str, Any]] = []

        def parameters(weights: dict[str, float]) -> dict[str, Any]:
            chosen: dict[str, Any] = {"weight": member_weights(list(inputs.members), config.release_weight, weights)}
            if "normalize" in names:
                chosen["normalize"] = False  # normalising would re-scale the pinned release
            if sparsifies(config.method):
                chosen["density"] = config.density
            return chosen

        seen: set[tuple[float, ...]] = set()
        best: tuple[float, Any, dict[str, float]] = (-1.0, None, {})

        def trial(weights: dict[str, float]) -> None:
            """Merge and score one weighting (each at most once); keep only the best model in memory."""
            nonlocal best
            key = tuple(weights[name] for name in others)
            if key in seen:
                return
            seen.add(key)
            model = inputs.merge(config.method, parameters(weights), layout)
            value = evaluate(model)
            trace.append({"weights": dict(weights), "val": value})
            if value > best[0]:
                best = (value, model, dict(weights))

        for weight in config.weights:
            trial({name: weight for name in others})
        if config.refine and len(others) > 1:
            for name in others:
                for weight in config.weights:
                    trial({**best[2], name: weight})
        value, model, best_weights = best
        knobs = merge_knobs(config.method, parameters(best_weights), layout, view.seed,
                            objective=config.objective, val_score=value, evaluations=len(trace), trace=trace)
        return AttackOutput(models={1.0: model}, knobs=knobs, examples=objective_examples(view, config.objective))
