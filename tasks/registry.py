"""Name → task class registry, open to third-party tasks through the `lockbench.tasks` entry points.

Configs name tasks by string; keeping the mapping in one place gives a helpful error (with a
"did you mean") for a typo instead of a late failure inside training or lm-eval.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import re

from tasks.base import ProceduralTask

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "lockbench.tasks"
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# Suffixes that lm-eval task names derived from a task use (see tasks.lmeval); a task named like
# that would collide with another task's derived names.
_RESERVED_SUFFIXES = ("_val", "_gen")

_REGISTRY: dict[str, type[ProceduralTask]] = {}
_entry_points_loaded = False


def register_task(cls: type[ProceduralTask]) -> type[ProceduralTask]:
    """Class decorator: make `cls` available under `cls.name`."""
    if not (isinstance(cls, type) and issubclass(cls, ProceduralTask)):
        raise TypeError(f"register_task expects a ProceduralTask subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith(_RESERVED_SUFFIXES):
        raise ValueError(
            f"task name {name!r} of {cls.__qualname__} must match {_NAME_RE.pattern} "
            f"and not end with {' or '.join(_RESERVED_SUFFIXES)}"
        )
    if not isinstance(getattr(cls, "description", None), str):
        raise ValueError(f"task {name!r} needs a one-line `description` string")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ValueError(
            f"task {name!r} is already registered by {existing.__module__}.{existing.__qualname__}; "
            f"cannot register {cls.__module__}.{cls.__qualname__} under the same name"
        )
    _REGISTRY[name] = cls
    return cls


def _load_entry_points() -> None:
    """Import third-party tasks once; a broken plugin is logged, not fatal to the built-ins."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as err:  # noqa: BLE001 - any plugin failure must not break the suite
            log.warning("could not load task plugin %r (%s): %s", ep.name, ep.value, err)
            continue
        # The entry point may name a module (whose decorators registered tasks) or a task class.
        if isinstance(obj, type) and issubclass(obj, ProceduralTask) and obj.name not in _REGISTRY:
            register_task(obj)


def list_tasks() -> list[str]:
    """Names of all registered tasks and declared document tasks (tasks.documents), sorted."""
    from tasks.documents import declared_names

    _load_entry_points()
    return sorted(set(_REGISTRY) | set(declared_names()))


def get_task(name: str) -> ProceduralTask:
    """A fresh instance of the task registered as `name`."""
    from tasks.documents import document_task

    _load_entry_points()
    try:
        cls = _REGISTRY[name]
    except KeyError:
        documents = document_task(name)
        if documents is not None:
            return documents()
        known = sorted(_REGISTRY)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise KeyError(f"unknown task {name!r}.{hint} Known tasks: {', '.join(known)}") from None
    return cls()
