"""`none`: the unprotected reference every number is normalised by (DESIGN §3).

Merge track: the owner's plainly fine-tuned expert. Finetune track: the plainly pre-trained base. At
job seed 0 these are the zoo's own; at every other seed they are re-trained through the zoo's own code
path (`bench.zoo.recipes.train_*`, by the harness: `bench.harness.references`, shared with the post-hoc
defenses) with that seed's initialisation and row order, so that the intervals
across seeds include training variance for the reference as they do for every defense (DESIGN §5).
A hub base (`pretrained:`) cannot be re-trained here: its finetune release is the same at every seed.
Tracks: merge, finetune; formats: adapter, full; any architecture.
"""

from __future__ import annotations

from bench.plugins import Defense, OwnerView, Release, register_defense
from bench.zoo.recipes import base_seed, expert_seed


@register_defense(paper="unprotected reference", tracks={"merge", "finetune"})
class NoDefense(Defense):
    name = "none"
    description = "unprotected reference: plain fine-tuning (merge) or plain pre-training (finetune), re-trained per seed"

    def protect(self, owner: OwnerView) -> Release:
        if owner.seed == 0:
            return Release(owner.unprotected(), notes={"trained": "the zoo's own"})
        recipe = owner.recipe
        if owner.track == "merge":
            assert owner.task is not None
            seed = expert_seed(recipe, owner.task, owner.release_format == "adapter", owner.seed)
        elif recipe.models[owner.model_name].architecture is None:
            return Release(owner.base, notes={"trained": "hub base: the same at every seed"})
        else:
            seed = base_seed(recipe, owner.seed)
        # the harness re-trained it once for this job seed (bench.harness.references), shared with the
        # post-hoc defenses that transform the same expert or base
        return Release(owner.unprotected(), notes={"trained": f"re-trained with seed {seed}"})
