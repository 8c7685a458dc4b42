"""One registry for every kind of plugin (defenses, attacks, tasks): name → class.

Plugins register by decorator when their module is imported. Modules are found through entry points:
the project declares its own built-ins in `pyproject.toml` under the same groups a third-party package
uses (`lockbench.defenses`, `lockbench.attacks`, `lockbench.tasks`), so there is no hand-written import
list and the harness never imports a plugin package. A built-in that fails to load is an error; a broken
third-party plugin is logged and skipped, so it cannot take the suite down.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

#: The distribution whose entry points are the built-ins (their failures are errors, not warnings).
PROJECT_DISTRIBUTION = "lockbench"

P = TypeVar("P", bound=type)


class Registry(Generic[P]):
    """Name → plugin class of one kind, filled by decorator and, on first lookup, by an entry-point group.

    `check(cls)` raises TypeError/ValueError when a class lacks the kind's required metadata; it runs for
    built-ins and third-party plugins alike.
    """

    def __init__(self, kind: str, base: type, group: str, check: Callable[[type], None] | None = None):
        self.kind, self.base, self.group = kind, base, group
        self.check = check
        self._classes: dict[str, P] = {}
        self._loaded = False

    def register(self, cls: P) -> P:
        """Add `cls` under `cls.name`; the same class twice is a no-op, another class under a taken name an error."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"a registered {self.kind} must be a {self.base.__name__} subclass, got {cls!r}")
        for attribute in ("name", "description"):
            if not isinstance(getattr(cls, attribute, None), str):
                raise TypeError(f"{self.kind} {cls.__qualname__} must set a string class attribute '{attribute}'")
        if self.check is not None:
            self.check(cls)
        existing = self._classes.get(cls.name)
        if existing is not None and existing is not cls:
            raise ValueError(f"{self.kind} '{cls.name}' is registered twice ({existing.__module__}."
                             f"{existing.__qualname__}, {cls.__module__}.{cls.__qualname__})")
        self._classes[cls.name] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Drop `name` (a submission re-loaded from new code in the same process); unknown names are ignored."""
        self._classes.pop(name, None)

    def registered(self, name: str) -> P | None:
        """The class registered as `name` so far, without loading entry points (None when absent)."""
        return self._classes.get(name)

    def load(self) -> None:
        """Import every module the entry-point group names (once); their decorators register the classes."""
        if self._loaded:
            return
        entries = sorted(entry_points(group=self.group), key=lambda e: (not is_builtin(e), e.name))
        if not any(is_builtin(entry) for entry in entries):
            raise RuntimeError(f"no built-in {self.kind}s are declared under the '{self.group}' entry points: the "
                               f"installed {PROJECT_DISTRIBUTION} metadata is older than pyproject.toml; reinstall "
                               "it (`make setup`, or `pip install -e .`)")
        self._loaded = True
        for entry in entries:
            try:
                loaded = entry.load()
                if isinstance(loaded, type) and issubclass(loaded, self.base):
                    self.register(loaded)  # type: ignore[arg-type]
            except Exception as error:
                if is_builtin(entry):
                    self._loaded = False  # the next lookup tries again and raises again, never a partial list
                    raise
                logger.warning("could not load %s plugin %r (%s): %s", self.kind, entry.name, entry.value, error)

    def reload(self) -> None:
        """Scan the entry points again (a plugin distribution installed since the first lookup)."""
        self._loaded = False
        self.load()

    def names(self) -> list[str]:
        self.load()
        return sorted(self._classes)

    def get(self, name: str) -> P:
        self.load()
        if name not in self._classes:
            raise KeyError(self.unknown(name))
        return self._classes[name]

    def unknown(self, name: str) -> str:
        """The error text for an unknown name, with the closest known one."""
        close = difflib.get_close_matches(name, self._classes, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown {self.kind} '{name}'{hint}; known: {', '.join(sorted(self._classes))}"

    @contextmanager
    def scoped(self) -> Iterator[None]:
        """Registrations made inside the block are forgotten after it (tests' own plugins stay in their test)."""
        self.load()
        before = dict(self._classes)
        try:
            yield
        finally:
            self._classes.clear()
            self._classes.update(before)


def is_builtin(entry: EntryPoint) -> bool:
    return entry.dist is not None and entry.dist.name == PROJECT_DISTRIBUTION
