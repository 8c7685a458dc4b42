"""Per-process state of a run: the preset, the built zoo and the materialised tasks.

Workers (Ray or serial) rebuild it from the preset and storage root; every piece is cached on disk,
so this costs a few file reads.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from bench.plugins import TaskData
from bench.presets import Preset
from bench.zoo.build import Zoo, build_zoo
from tasks import build_splits, materialize
from tasks.lmeval import MaterializedTasks


@dataclass
class HarnessContext:
    preset: Preset
    root: Path
    zoo: Zoo
    tasks: MaterializedTasks

    def split(self, task: str, split: str) -> TaskData:
        data = build_splits(task, self.preset.zoo.seed, self.preset.zoo.split_sizes)[split]
        return TaskData(list(data["prompt"]), list(data["answer"]))

    @property
    def all_tasks(self) -> list[str]:
        return scored_tasks(self.preset)


def scored_tasks(preset: Preset) -> list[str]:
    """Every task a preset scores: the base's mixture, the experts' tasks and the downstream tasks."""
    zoo = preset.zoo
    return sorted(set(zoo.base_tasks) | set(zoo.expert_tasks) | set(zoo.downstream_tasks))


@functools.lru_cache(maxsize=4)
def _context(preset_json: str, root: str) -> HarnessContext:
    preset = Preset.model_validate_json(preset_json)
    zoo = build_zoo(preset.zoo, Path(root))
    tasks = materialize(scored_tasks(preset), preset.zoo.seed, preset.zoo.split_sizes, Path(root) / "tasks" / zoo.hash)
    return HarnessContext(preset, Path(root), zoo, tasks)


def get_context(preset: Preset, root: Path) -> HarnessContext:
    return _context(preset.model_dump_json(), str(root))
