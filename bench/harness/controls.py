"""The controls of DESIGN §5: what an attack reaches *without* the release.

* merge track, **release-free control**: the release replaced by the public base, i.e. an update of
  zero (the base's weights for a full release; a fresh peft LoRA, whose B factors start at zero, for an
  adapter release). The same attack configuration then merges the public experts around nothing, so
  `control_acc` is what the attacker gets on the protected task from the public world and its own data.
* finetune track, **from-scratch control**: a randomly initialised model of the released architecture,
  so `acc_after_scratch` is what the fine-tuning attack learns with no release at all.

Controls are cells of their own (defense label `control`), run once per (model, format, task, members,
attack configuration, seed) and shared by every defense; they are never ranked.
"""

from __future__ import annotations

import copy
import json

import torch
from peft import get_peft_model

from bench.plugins import Defense, OwnerView, Release
from bench.plugins.threat_model import CONTROL_DEFENSE  # noqa: F401 - re-exported for the harness
from bench.runtime.device import device_of
from bench.zoo.recipes import lora_config_for

CONTROL_KIND = {"merge": "release-free", "finetune": "from-scratch"}


def control_config(track: str) -> str:
    """The canonical config text of a track's control (it names the control in `cells.csv`)."""
    return json.dumps({"control": CONTROL_KIND[track]}, sort_keys=True)


class ControlRelease(Defense):
    """Not a registered defense: the harness adds its cells itself, and a grid cannot name it."""

    name = CONTROL_DEFENSE
    description = "release-free control (merge: the public base as the release) / from-scratch control (finetune)"
    paper = "control (DESIGN §5)"
    tracks = frozenset({"merge", "finetune"})

    def protect(self, owner: OwnerView) -> Release:
        if owner.track == "merge":
            if owner.release_format == "adapter":
                lora = owner.recipe.lora
                torch.manual_seed(owner.seed)  # peft draws A at random; B starts at zero: the update is zero
                model = get_peft_model(copy.deepcopy(owner.base),
                                       lora_config_for(owner.base, lora.r, lora.alpha, lora.dropout))
                return Release(model, notes={"control": "release-free: zero LoRA update"})
            return Release(copy.deepcopy(owner.base), notes={"control": "release-free: the public base"})
        torch.manual_seed(10_007 + owner.seed)
        scratch = type(owner.base)(owner.base.config).to(device_of(owner.base))  # transformers' own random initialisation
        return Release(scratch.eval(), notes={"control": "from-scratch: random initialisation"})
