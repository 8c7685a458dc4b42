"""Procedural tasks for lockbench: deterministic generators, disjoint splits, lm-eval exposure.

Built-in tasks (tasks.builtin) and third-party ones are found through the ``lockbench.tasks``
entry-point group on first lookup (bench.plugins.registry).
"""

from tasks.base import SPLITS, Example, ProceduralTask, SplitSizes
from tasks.lmeval import MaterializedTasks, TaskSource, materialize, task_manager
from tasks.registry import get_task, list_tasks, register_task
from tasks.splits import build_splits

__all__ = [
    "SPLITS",
    "Example",
    "MaterializedTasks",
    "ProceduralTask",
    "SplitSizes",
    "TaskSource",
    "build_splits",
    "get_task",
    "list_tasks",
    "materialize",
    "register_task",
    "task_manager",
]
