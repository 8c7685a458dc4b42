"""Fault and fast plugins for the reliability tests (issue 8), in one module that test modules import to
register them, and that subprocess runs and Ray workers import by name through LOCKBENCH_PLUGINS
(`reliability_runs.PLUGINS`). Fast and deterministic: cells are compared by `fingerprint`, since the micro zoo
scores 0 everywhere. tests/conftest.py shows a helper module's plugins only to the test modules that import it."""

from __future__ import annotations

import copy
import hashlib
import math
from typing import Any

import torch
from pydantic import Field

from bench.config import StrictModel
from bench.plugins import (
    Attack,
    AttackOutput,
    Defense,
    OwnerView,
    PublicView,
    Release,
    register_attack,
    register_defense,
)


def plain_state(model: Any) -> dict[str, torch.Tensor]:
    from bench.toolkit.evaluate import as_plain_model

    return {name: tensor.detach().clone() for name, tensor in as_plain_model(model).state_dict().items()}


def fingerprint(model: Any) -> str:
    """A hash of the weights (rounded to 1e-6): micro scores 0 everywhere, so cells are compared by this."""
    digest = hashlib.sha256()
    for name, tensor in sorted(plain_state(model).items()):
        digest.update(name.encode())
        digest.update(torch.round(tensor.double() * 1e6).to(torch.int64).numpy().tobytes())
    return digest.hexdigest()[:16]


@register_attack
class RelMerge(Attack):
    """Task arithmetic in plain torch: base + Σ (member − base), the release among the members."""

    name = "rel_merge"
    description = "test plugin: task arithmetic without mergekit"
    track = "merge"
    family = "pinned"

    def run(self, view: PublicView) -> AttackOutput:
        base = plain_state(view.base)
        merged = copy.deepcopy(view.base)
        states = [plain_state(view.release)] + [plain_state(expert) for expert in view.public_experts.values()]
        with torch.no_grad():
            merged.load_state_dict({name: tensor + sum(state[name] - tensor for state in states)
                                    for name, tensor in base.items()})
        return AttackOutput(models={1.0: merged.eval()}, knobs={"method": "rel_merge", "fingerprint": fingerprint(merged)})


@register_attack
class RelFinetune(Attack):
    """Two steps of the zoo's training loop on the attacker's data (seeded, so reruns agree)."""

    name = "rel_finetune"
    description = "test plugin: a two-step full fine-tune"
    track = "finetune"
    family = "finetune"

    def run(self, view: PublicView) -> AttackOutput:
        from bench.toolkit.evaluate import as_plain_model
        from bench.zoo.training import TrainSettings, tokenise, train

        model = copy.deepcopy(as_plain_model(view.release)).train()
        data = tokenise(view.tokenizer, view.attacker_train.prompts[:64], view.attacker_train.answers[:64])
        train(model, data, TrainSettings(steps=2, lr=1e-3, batch_size=16, seed=view.seed))
        return AttackOutput(models={fraction: model.eval() for fraction in view.budget_fractions},
                            knobs={"method": "full", "lr": 1e-3, "steps": 2, "fingerprint": fingerprint(model)},
                            steps=2, examples=64)


class FastConfig(StrictModel):
    k: int = Field(0, ge=0)


@register_attack
class RelFast(Attack):
    """Returns the release as the merge (no compute): the 300-cell grid measures the harness, not attacks."""

    name = "rel_fast"
    description = "test plugin: instant merge attack, one cell per config value"
    track = "merge"
    family = "pinned"
    Config = FastConfig

    def run(self, view: PublicView) -> AttackOutput:
        from bench.toolkit.evaluate import as_plain_model

        return AttackOutput(models={1.0: as_plain_model(view.release)}, knobs={"method": "rel_fast"})


@register_defense
class RelRaiser(Defense):
    name = "rel_raiser"
    description = "test plugin: raises in protect"
    tracks = frozenset({"merge"})

    def protect(self, owner: OwnerView) -> Release:
        raise RuntimeError("rel_raiser refuses\nover two lines")


@register_defense
class RelNan(Defense):
    name = "rel_nan"
    description = "test plugin: releases NaN weights"
    tracks = frozenset({"merge"})

    def protect(self, owner: OwnerView) -> Release:
        model = copy.deepcopy(owner.unprotected())
        with torch.no_grad():
            next(p for p in model.parameters() if p.is_floating_point()).fill_(math.nan)
        return Release(model)


@register_defense
class RelWrongType(Defense):
    name = "rel_wrong_type"
    description = "test plugin: returns a state dict instead of a Release"
    tracks = frozenset({"merge"})

    def protect(self, owner: OwnerView) -> Release:
        return owner.unprotected().state_dict()  # type: ignore[return-value]


@register_attack
class RelBadKnob(RelFinetune):
    """Reports a fine-tuning method the cells schema does not know."""

    name = "rel_bad_knob"
    description = "test plugin: reports knob method 'qlora'"

    def run(self, view: PublicView) -> AttackOutput:
        output = super().run(view)
        output.knobs["method"] = "qlora"
        return output
