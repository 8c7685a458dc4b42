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
from typing import Any

import torch
from peft import get_peft_model

from bench.device import device_of
from bench.harness.grid import Cell
from bench.plugins import ATTACKS, Defense, OwnerView, Release

CONTROL_DEFENSE = "control"
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
                from bench.zoo.build import lora_config_for

                lora = owner.recipe.lora
                torch.manual_seed(owner.seed)  # peft draws A at random; B starts at zero: the update is zero
                model = get_peft_model(copy.deepcopy(owner.base),
                                       lora_config_for(owner.base, lora.r, lora.alpha, lora.dropout))
                return Release(model, notes={"control": "release-free: zero LoRA update"})
            return Release(copy.deepcopy(owner.base), notes={"control": "release-free: the public base"})
        torch.manual_seed(10_007 + owner.seed)
        scratch = type(owner.base)(owner.base.config).to(device_of(owner.base))  # transformers' own random initialisation
        return Release(scratch.eval(), notes={"control": "from-scratch: random initialisation"})


def shared_controls(cells: list[Cell]) -> dict[int, int]:
    """Control cells computed once for every seed: {index of a control cell: index of the cell computed in
    its place}. A merge-track control's release is the public base (or a zero LoRA update) and the public
    world has no seed, so an attack that declares itself seed-free (`Attack.seed_free`) gives the same
    control at every seed (measured bit for bit: per_member, the TIES coefficient search and align_to_base
    at three seeds); its cell at the grid's first seed stands in for the others."""
    first: dict[tuple, int] = {}
    shared: dict[int, int] = {}
    for index, cell in sorted(enumerate(cells), key=lambda pair: pair[1].defense.seed):
        job = cell.defense
        if job.defense != CONTROL_DEFENSE or job.track != "merge":
            continue
        attack_cls = ATTACKS.get(cell.attack)
        if not attack_cls.seed_free(attack_cls.Config.model_validate_json(cell.attack_config)):
            continue
        where = (job.release_format, job.model, job.task, cell.attack_key, cell.task, cell.members)
        if where in first:
            shared[index] = first[where]
        else:
            first[where] = index
    return shared


def copied_control(record: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """The record of a shared control (`shared_controls`) for `cell`, a seed it was not computed at: the same
    numbers under the cell's own seed, with no time of its own (the work was done once)."""
    return {**record, "seed": cell.defense.seed, "attack_seconds": 0.0, "defense_seconds": 0.0}
