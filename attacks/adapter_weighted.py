"""Merging in adapter space: peft's `add_weighted_adapter` combines the released LoRA adapter with the
public experts' adapters (cat, linear, SVD, TIES, DARE and magnitude-prune variants), and the combined
adapter is folded into the base.

Only an adapter release has adapter factors to combine: against a full-weight release the attack raises
`AttackNotApplicable` (the cell is n/a, not failed). peft's linear/TIES/DARE act on the A and B factors
separately, which is not the same merge as on the folded weights: a defense that shapes its factors can
behave differently here than under mergekit, which is why this attack exists beside the folded merges.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Literal

import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from pydantic import Field

from attacks.common import AttackNotApplicable
from bench.config import StrictModel
from bench.plugins import Attack, AttackFamily, AttackOutput, PublicView, register_attack

Combination = Literal["cat", "linear", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd",
                      "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"]
_SPARSE = ("ties", "dare", "magnitude_prune")


class AdapterWeightedConfig(StrictModel):
    combination_type: Combination = Field("cat", description="peft add_weighted_adapter combination")
    weight: float = Field(1.0, description="weight of every public expert's adapter")
    release_weight: float | None = Field(None, description="the release's weight (default: `weight`)")
    density: float | None = Field(None, gt=0, le=1, description="for TIES / DARE / magnitude-prune types")
    majority_sign_method: Literal["total", "frequency"] = "total"


@register_attack(track="merge", family="rescaling", formats={"adapter"})
class AdapterWeighted(Attack[AdapterWeightedConfig]):
    name = "adapter_weighted"
    description = "peft add_weighted_adapter of the released LoRA with the experts' LoRAs (adapter releases only)"

    @classmethod
    def attack_family(cls, config: StrictModel) -> AttackFamily:
        """Concatenating the adapters with the release at weight 1 adds its update unchanged (pinned);
        every other combination re-weights, sparsifies or re-factorises it."""
        assert isinstance(config, AdapterWeightedConfig)
        release_weight = config.weight if config.release_weight is None else config.release_weight
        return "pinned" if config.combination_type == "cat" and release_weight == 1.0 else "rescaling"

    def run(self, view: PublicView) -> AttackOutput:
        config = self.config
        sparse = config.combination_type.startswith(_SPARSE)
        if sparse and config.density is None:
            raise ValueError(f"combination '{config.combination_type}' needs a density")
        model, names = _adapter_stack(view)
        release_weight = config.weight if config.release_weight is None else config.release_weight
        weights = [release_weight] + [config.weight] * (len(names) - 1)
        torch.manual_seed(view.seed)  # DARE drops factor entries at random
        with torch.no_grad():
            model.add_weighted_adapter(names, weights, "combined", combination_type=config.combination_type,
                                       density=config.density if sparse else None,
                                       majority_sign_method=config.majority_sign_method)
        model.set_adapter("combined")
        merged = model.merge_and_unload(adapter_names=["combined"]).eval()
        knobs: dict[str, Any] = {
            "method": f"peft_{config.combination_type}",
            "weights": dict(zip(names, weights, strict=True)), "normalize": None, "lambda": None,
            "density": config.density if sparse else None,
            "rescale": config.combination_type.startswith("dare") if sparse else None,
            "seed": view.seed, "majority_sign_method": config.majority_sign_method,
        }
        return AttackOutput(models={1.0: merged}, knobs=knobs)


def _adapter_name(task: str) -> str:
    return "expert_" + re.sub(r"\W", "_", task)


def _adapter_stack(view: PublicView) -> tuple[PeftModel, list[str]]:
    """One PeftModel on a copy of the public base holding the release's and every expert's adapter."""
    if view.release_format != "adapter" or not isinstance(view.release, PeftModel):
        raise AttackNotApplicable("adapter-space merging needs a LoRA adapter release; this release is "
                                  f"'{view.release_format}' weights")
    sources = {"release": view.release}
    for task, expert in view.public_experts.items():
        if not isinstance(expert, PeftModel):
            raise AttackNotApplicable(f"public expert '{task}' is not a LoRA adapter")
        sources[_adapter_name(task)] = expert
    model: PeftModel | None = None
    for name, source in sources.items():
        config = copy.deepcopy(source.peft_config[source.active_adapter])
        if model is None:
            model = PeftModel(copy.deepcopy(view.base), config, adapter_name=name)
        else:
            model.add_adapter(name, config)
        state = get_peft_model_state_dict(source, adapter_name=source.active_adapter)
        result = set_peft_model_state_dict(model, state, adapter_name=name)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"adapter '{name}' did not load: unexpected {result.unexpected_keys[:3]}")
    assert model is not None
    return model, list(sources)
