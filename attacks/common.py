"""Helpers shared by attacks: folding adapters and building a model from a merged state dict."""

from __future__ import annotations

from peft import PeftModel
from transformers import PreTrainedModel

from bench.evaluate import as_plain_model
from bench.merging import merge_state_dicts
from bench.plugins import PublicView


def full_weights(model: PreTrainedModel | PeftModel) -> dict:
    """Full weights of a release or public expert: adapters are folded into a copy of their base."""
    return {name: tensor.detach() for name, tensor in as_plain_model(model).state_dict().items()}


def model_from_state(template: PreTrainedModel, state: dict) -> PreTrainedModel:
    model = type(template)(template.config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"merged state has unexpected tensors: {unexpected[:3]}")
    return model.eval()


def merge_release(view: PublicView, method: str, parameters: dict, release_weight: float | None = None,
                  uses_base: bool = True) -> PreTrainedModel:
    """Merge the release with the public experts through mergekit (in memory).

    `parameters` are mergekit's; a scalar `weight` applies to every member unless `release_weight`
    pins the release's own weight (the per-member attacker of DESIGN §4).
    """
    members = {"release": full_weights(view.release)}
    members.update({f"expert:{task}": full_weights(model) for task, model in view.public_experts.items()})
    params = dict(parameters)
    if release_weight is not None:
        other = params.get("weight", 1.0)
        params["weight"] = {name: (release_weight if name == "release" else other) for name in members}
    merged = merge_state_dicts(view.base.state_dict(), members, method, params, seed=view.seed, uses_base=uses_base)
    return model_from_state(view.base, merged)
