"""What a plugin author writes against: the `Defense` and `Attack` base classes and their decorators.

Adding a defense is one file: a `Defense[MyConfig]` subclass with `protect`, decorated by
`@register_defense(tracks=..., formats=..., paper=...)`, and one entry point in the `lockbench.defenses`
group (the project's own built-ins are declared the same way in `pyproject.toml`). The decorator carries
the plugin's metadata and checks it; the config class is the type parameter, so `self.config` is typed.
The threat-model types plugins read (`OwnerView`, `PublicView`, `Release`, ...) are re-exported here from
`bench.plugins.threat_model`, so a plugin imports from one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bench.plugins.base import FORMATS, Attack, Defense, EmptyConfig
from bench.plugins.checks import attack_problems, defense_problems
from bench.plugins.registry import Registry
from bench.plugins.threat_model import (
    ATTACK_FAMILIES,
    TRACKS,
    AttackFamily,
    AttackNotApplicable,
    AttackOutput,
    OwnerView,
    PublicView,
    Release,
    ReleaseFormat,
    TaskData,
    Track,
)

__all__ = [
    "ATTACKS", "ATTACK_FAMILIES", "DEFENSES", "FORMATS", "TRACKS", "Attack", "AttackFamily", "AttackNotApplicable",
    "AttackOutput", "Defense", "EmptyConfig", "OwnerView", "PublicView", "Release", "ReleaseFormat", "TaskData",
    "Track", "register_attack", "register_defense",
]


def check_defense(cls: type) -> None:
    """The registry's check: the same static problems `lockbench submit` reports, as one TypeError."""
    problems = defense_problems(cls)
    if problems:
        raise TypeError("; ".join(problems))


def check_attack(cls: type) -> None:
    problems = attack_problems(cls)
    if problems:
        raise TypeError("; ".join(problems))


DEFENSES: Registry[type[Defense]] = Registry("defense", Defense, "lockbench.defenses", check_defense)
ATTACKS: Registry[type[Attack]] = Registry("attack", Attack, "lockbench.attacks", check_attack)


def with_metadata(cls: type, metadata: dict[str, Any]) -> type:
    """Set the decorator's keyword metadata as class attributes (sets become frozensets)."""
    for key, value in metadata.items():
        if value is None:
            continue
        if key in ("tracks", "formats", "families") and isinstance(value, Iterable) and not isinstance(value, str):
            value = frozenset(value)
        setattr(cls, key, value)
    return cls


def register_defense(cls: type[Defense] | None = None, *, tracks: Iterable[Track] | None = None,
                     formats: Iterable[ReleaseFormat] | None = None, families: Iterable[str] | None = None,
                     paper: str | None = None) -> Any:
    """`@register_defense(tracks={"merge"}, formats={"full"}, families=TRANSFORMER_FAMILIES, paper="...")`;
    a bare `@register_defense` reads the same metadata from class attributes."""
    metadata = {"tracks": tracks, "formats": formats, "families": families, "paper": paper}

    def decorate(target: type[Defense]) -> type[Defense]:
        return DEFENSES.register(with_metadata(target, metadata))

    return decorate(cls) if cls is not None else decorate


def register_attack(cls: type[Attack] | None = None, *, track: Track | None = None,
                    family: AttackFamily | None = None, formats: Iterable[ReleaseFormat] | None = None) -> Any:
    """`@register_attack(track="merge", family="data")` (`formats={"adapter"}` for an attack that reads one
    release format only); a bare `@register_attack` reads the same metadata from class attributes."""
    metadata = {"track": track, "family": family, "formats": formats}

    def decorate(target: type[Attack]) -> type[Attack]:
        return ATTACKS.register(with_metadata(target, metadata))

    return decorate(cls) if cls is not None else decorate

