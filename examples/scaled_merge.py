"""An example lockbench attack to copy: task arithmetic with the release's update at weight 0.5.

Submit it with

    lockbench submit --attack examples/scaled_merge.py --preset smoke

Down-scaling the protected update is exactly what a scale trap (Trap²) claims to punish, so this attack
is family "rescaling" (DESIGN §4); at `release_weight` 1.0 it adds the update unchanged and
`attack_family` says "pinned" instead. It shows everything an attack submission needs — an `Attack`
subclass with `name`, `description`, `track`, `family`, a `Config` (a `StrictModel`, so a typo in a
config key is an error) and `run`, which receives the public view and returns an `AttackOutput`.
"""

from __future__ import annotations

from pydantic import Field

from attacks.common import MergeInputs, member_weights, merge_knobs
from bench.config import StrictModel
from bench.plugins import Attack, AttackFamily, AttackOutput, PublicView

METHOD = "task_arithmetic"  # through mergekit, never re-implemented


class ScaledMergeConfig(StrictModel):
    release_weight: float = Field(0.5, gt=0, description="the release's task-vector weight")
    others_weight: float = Field(1.0, gt=0, description="each public expert's task-vector weight")


class ScaledMerge(Attack):
    name = "scaled_merge"
    description = "example: task arithmetic with the release at weight 0.5 and the public experts at 1.0"
    track = "merge"
    family = "rescaling"
    Config = ScaledMergeConfig

    @classmethod
    def attack_family(cls, config: StrictModel) -> AttackFamily:
        """Weight 1.0 keeps the release at scale 1: that is a pinned merge, not a rescaling one."""
        assert isinstance(config, ScaledMergeConfig)
        return "pinned" if config.release_weight == 1.0 else "rescaling"

    def run(self, view: PublicView) -> AttackOutput:
        config: ScaledMergeConfig = self.config  # type: ignore[assignment]
        inputs = MergeInputs.from_view(view)  # the release and the cell's public experts, as full weights
        layout = inputs.layout(METHOD)
        weights = member_weights(list(inputs.members), config.release_weight, config.others_weight)
        parameters = {"weight": weights, "normalize": False}  # normalising would re-scale every member again
        merged = inputs.merge(METHOD, parameters, layout)
        return AttackOutput(models={1.0: merged}, knobs=merge_knobs(METHOD, parameters, layout, view.seed))
