"""Adaptive merging (Trap²'s attacker, DESIGN §4): search one shared merge coefficient on the attacker's
own validation split, then the density (drop rate) of a sparsifying method at that coefficient.

A defense that only breaks merges at the usual coefficients (averaging puts each update at 1/N) is
beaten by an attacker who simply scales back up; this attack measures that. Only `view.score_val`
(lm-eval on attacker_val) is consulted; the test split is never read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import Field, field_validator

from attacks.common import (
    MergeInputs,
    Objective,
    SeedFreeMerge,
    merge_knobs,
    objective_examples,
    validation_scorer,
    weighted_method,
)
from bench.config import StrictModel
from bench.plugins import Attack, AttackOutput, PublicView, register_attack
from bench.toolkit.merging import method_spec, sparsifies

#: Trap²'s range, 0.1 … 9.9, on a roughly geometric grid (dense where merges usually peak); early
#: stopping ends the climb a couple of steps after the peak, so the large values cost nothing unless needed.
DEFAULT_COEFFICIENTS = [0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 9.9]


class AdaptiveCoefficientConfig(StrictModel):
    method: str = Field("dare_ties", description="mergekit method with a per-member weight (and density)")
    coefficients: list[float] = Field(default_factory=lambda: list(DEFAULT_COEFFICIENTS), min_length=1,
                                      description="shared weight of every member, searched in ascending order")
    patience: int = Field(2, ge=1, description="stop after this many coefficients scoring below the best")
    densities: list[float] = Field(default_factory=lambda: [0.5, 0.8],
                                   description="then searched at the best coefficient (density 1.0 is the start)")
    normalize: bool = Field(False, description="mergekit normalize: dividing by the weights' sum undoes the search")
    objective: Objective = Field("protected", description="maximise the protected task alone (one shared "
                                 "coefficient cannot drop the others), its mean with the members' tasks, or "
                                 "the mean normalised accuracy (Trap²'s criterion)")

    @field_validator("method")
    @classmethod
    def _weighted_method(cls, method: str) -> str:
        return weighted_method(method)

    @field_validator("coefficients", "densities")
    @classmethod
    def _ascending(cls, values: list[float]) -> list[float]:
        if any(v <= 0 for v in values) or values != sorted(set(values)):
            raise ValueError("must be positive, distinct and ascending")
        return values

    @field_validator("densities")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        if any(v > 1 for v in values):
            raise ValueError("densities are kept fractions, at most 1")
        return values


def search_coefficient(coefficients: list[float], patience: int,
                       trial: Callable[[float], tuple[float, Any]]) -> tuple[float, tuple[float, Any]]:
    """Trap²'s search: try the coefficients in ascending order and keep the best validation score; stop after
    `patience` scores below the best so far (a tie, e.g. the flat start of small coefficients, is no miss,
    and a new best resets the count). Returns (best coefficient, (its score, its trial result)); the first
    of equal scores wins."""
    best_weight, best = coefficients[0], (-math.inf, None)
    misses = 0
    for weight in coefficients:
        result = trial(weight)
        if result[0] > best[0]:
            best, best_weight, misses = result, weight, 0
        elif result[0] < best[0]:
            misses += 1
            if misses >= patience:
                break
    return best_weight, best


@register_attack(track="merge", family="rescaling")
class AdaptiveCoefficient(SeedFreeMerge, Attack[AdaptiveCoefficientConfig]):
    name = "adaptive_coefficient"
    description = ("searches one shared merge coefficient (0.1…9.9, early stopping), then the density, "
                   "on the attacker's validation split")

    def run(self, view: PublicView) -> AttackOutput:
        config = self.config
        inputs = MergeInputs.from_view(view)
        layout = inputs.layout(config.method)
        evaluate = validation_scorer(view, config.objective)
        names = {parameter.name for parameter in method_spec(config.method).parameters}
        trace: list[dict[str, Any]] = []

        def parameters(weight: float, density: float) -> dict[str, Any]:
            chosen: dict[str, Any] = {"weight": weight}
            if "normalize" in names:
                chosen["normalize"] = config.normalize
            if sparsifies(config.method):
                chosen["density"] = density
            return chosen

        def trial(weight: float, density: float) -> tuple[float, Any]:
            model = inputs.merge(config.method, parameters(weight, density), layout)
            value = evaluate(model)
            trace.append({"weight": weight, "density": density, "val": value})
            return value, model

        best_weight, best = search_coefficient(config.coefficients, config.patience, lambda weight: trial(weight, 1.0))
        best_density = 1.0
        if sparsifies(config.method):
            for density in config.densities:
                if density >= 1.0:
                    continue
                result = trial(best_weight, density)
                if result[0] > best[0]:
                    best, best_density = result, density
        chosen = parameters(best_weight, best_density)
        knobs = merge_knobs(config.method, chosen, layout, view.seed, objective=config.objective,
                            val_score=best[0], evaluations=len(trace), trace=trace)
        return AttackOutput(models={1.0: best[1]}, knobs=knobs, examples=objective_examples(view, config.objective))
