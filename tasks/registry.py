"""Name → task class, in the one plugin registry (bench.plugins.registry) under the `lockbench.tasks` entry points.

Configs name tasks by string; keeping the mapping in one place gives a helpful error (with a "did you
mean") for a typo instead of a late failure inside training or lm-eval. Document tasks (tasks.documents)
are declared by a preset rather than registered, and are looked up after the registered ones.
"""

from __future__ import annotations

import re

from bench.plugins.registry import Registry
from tasks.base import ProceduralTask

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# Suffixes that lm-eval task names derived from a task use (see tasks.lmeval); a task named like
# that would collide with another task's derived names.
RESERVED_SUFFIXES = ("_val", "_gen")


def check_task(cls: type) -> None:
    name = cls.name
    if not _NAME_RE.match(name) or name.endswith(RESERVED_SUFFIXES):
        raise ValueError(f"task name {name!r} of {cls.__qualname__} must match {_NAME_RE.pattern} "
                         f"and not end with {' or '.join(RESERVED_SUFFIXES)}")


TASKS: Registry[type[ProceduralTask]] = Registry("task", ProceduralTask, "lockbench.tasks", check_task)


def register_task(cls: type[ProceduralTask]) -> type[ProceduralTask]:
    """Class decorator: make `cls` available under `cls.name`."""
    return TASKS.register(cls)


def list_tasks() -> list[str]:
    """Names of all registered tasks and declared document tasks (tasks.documents), sorted."""
    # local: tasks.documents imports this registry (a module-level import would be a cycle)
    from tasks.documents import declared_names

    return sorted(set(TASKS.names()) | set(declared_names()))


def get_task(name: str) -> ProceduralTask:
    """A fresh instance of the task registered (or declared as a document task) as `name`."""
    # local: tasks.documents imports this registry (a module-level import would be a cycle)
    from tasks.documents import document_task

    TASKS.load()
    cls = TASKS.registered(name)
    if cls is not None:
        return cls()
    documents = document_task(name)
    if documents is not None:
        return documents()
    raise KeyError(TASKS.unknown(name))
