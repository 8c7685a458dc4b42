"""`none`: the unprotected reference every number is normalised by (DESIGN §3).

Merge track: the owner's plainly fine-tuned expert (the zoo's). Finetune track: the plainly
pre-trained base. Tracks: merge, finetune; formats: adapter, full; any architecture.
"""

from __future__ import annotations

from bench.plugins import Defense, OwnerView, Release, register_defense


@register_defense
class NoDefense(Defense):
    name = "none"
    description = "unprotected reference: plain fine-tuning (merge) or plain pre-training (finetune)"
    tracks = frozenset({"merge", "finetune"})

    def protect(self, owner: OwnerView) -> Release:
        return Release(owner.unprotected())
