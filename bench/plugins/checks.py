"""Static checks of a plugin class, one line per problem: what `lockbench submit` reports for a submission
and what the registries enforce for every plugin, built-in or third-party, when it registers."""

from __future__ import annotations

import inspect
import re
from typing import Any

from pydantic import BaseModel

from bench.config import StrictModel
from bench.plugins.base import FORMATS, Attack, Defense
from bench.plugins.threat_model import ATTACK_FAMILIES, TRACKS

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: A submission registers a second time as NAME@<code hash> (bench.commands.submit); the part before "@" is checked.
HASH_SEPARATOR = "@"


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:400]


def label_set(cls: type, attribute: str, allowed: tuple[str, ...], example: str) -> tuple[set[str], list[str]]:
    """A declared set of names (tracks or formats): present, a collection, non-empty, known."""
    value = getattr(cls, attribute, None)
    where = f"{cls.__name__}.{attribute}"
    if value is None:
        return set(), [f"{where} is not declared: set {attribute} = {example}"]
    if isinstance(value, str) or not isinstance(value, set | frozenset | list | tuple):
        return set(), [f"{where} must be a set of names such as {example}, got {type(value).__name__} {value!r}"]
    names = set(value)
    if not names:
        return set(), [f"{where} is empty: declare at least one of {', '.join(allowed)}"]
    unknown = sorted(str(name) for name in names if name not in allowed)
    if unknown:
        return set(), [f"{where} has unknown {attribute} {unknown}; choose from {', '.join(allowed)}"]
    return names, []


def defense_problems(cls: Any) -> list[str]:
    """Every static problem of a would-be defense class, one line each (empty: fine)."""
    if not isinstance(cls, type):
        return [f"{cls!r} is not a class: a submission is a bench.plugins.Defense subclass"]
    if not issubclass(cls, Defense) or cls is Defense:
        return [f"{cls.__name__} is not a Defense subclass: write `class {cls.__name__}(bench.plugins.Defense)`"]
    problems = []
    if "protect" in getattr(cls, "__abstractmethods__", ()):
        problems.append(f"{cls.__name__} is missing the method protect(self, owner: OwnerView) -> Release")
    elif not callable(getattr(cls, "protect", None)):
        problems.append(f"{cls.__name__}.protect is not a method")
    else:
        try:
            inspect.signature(cls.protect).bind(object(), object())
        except TypeError:
            problems.append(f"{cls.__name__}.protect{inspect.signature(cls.protect)} must accept exactly one "
                            "argument besides self: the OwnerView")
    problems += label_problems(cls)
    tracks, track_problems = label_set(cls, "tracks", TRACKS, "frozenset({'merge'})")
    formats, format_problems = label_set(cls, "formats", FORMATS, "frozenset({'adapter', 'full'})")
    problems += track_problems + format_problems
    if "finetune" in tracks and formats and "full" not in formats:
        problems.append(f"{cls.__name__} declares the finetune track but not the format 'full' (finetune "
                        "releases are full base models)")
    families = getattr(cls, "families", None)
    if families is not None and (isinstance(families, str) or not isinstance(families, set | frozenset | list | tuple)
                                 or not families or not all(isinstance(f, str) for f in families)):
        problems.append(f"{cls.__name__}.families must be None (any architecture) or a non-empty set of "
                        f"transformers model types such as frozenset({{'llama'}}), got {families!r}")
    config_cls = getattr(cls, "Config", None)
    if not (isinstance(config_cls, type) and issubclass(config_cls, StrictModel)):
        kind = ("a plain pydantic model (unknown keys would pass silently)"
                if isinstance(config_cls, type) and issubclass(config_cls, BaseModel) else repr(config_cls))
        problems.append(f"{cls.__name__}.Config must subclass bench.config.StrictModel, got {kind}")
    return problems


def kind_problems(cls: Any) -> list[str]:
    """A class, an Attack subclass, with a `run(self, view)`; empty when fine."""
    if not isinstance(cls, type):
        return [f"{cls!r} is not a class: an attack submission is a bench.plugins.Attack subclass"]
    if not issubclass(cls, Attack) or cls is Attack:
        return [f"{cls.__name__} is not an Attack subclass: write `class {cls.__name__}(bench.plugins.Attack)`"]
    if "run" in getattr(cls, "__abstractmethods__", ()):
        return [f"{cls.__name__} is missing the method run(self, view: PublicView) -> AttackOutput"]
    try:
        inspect.signature(cls.run).bind(object(), object())
    except TypeError:
        return [f"{cls.__name__}.run{inspect.signature(cls.run)} must accept exactly one argument besides self: "
                "the PublicView"]
    return []


def label_problems(cls: type) -> list[str]:
    problems = []
    for attribute in ("name", "description"):
        value = getattr(cls, attribute, None)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{cls.__name__} is missing the class attribute {attribute} (a non-empty string)")
    name = getattr(cls, "name", None)
    if isinstance(name, str) and name.strip() and not NAME_PATTERN.match(name.partition(HASH_SEPARATOR)[0]):
        problems.append(f"{cls.__name__}.name {name!r} must be 1-64 letters, digits, '_', '.' or '-' (it names folders)")
    return problems


def family_problems(where: str, track: Any, family: Any) -> list[str]:
    """A family of DESIGN §4 that fits the track: `finetune` for the finetune track, another for merge."""
    choices = ", ".join(ATTACK_FAMILIES)
    if family is None:
        return [f"{where} is not declared: set family = one of {choices} (DESIGN §4)"]
    if family not in ATTACK_FAMILIES:
        return [f"{where} {family!r} is not an attack family; choose from {choices}"]
    if track == "finetune" and family != "finetune":
        return [f"{where} {family!r} is a merge-track family, but track is 'finetune': use family 'finetune'"]
    if track == "merge" and family == "finetune":
        return [f"{where} 'finetune' is for finetune-track attacks, but track is 'merge'"]
    return []


def track_problems(cls: type) -> list[str]:
    track = getattr(cls, "track", None)
    if track is None:
        hint = " (an attack has one `track`, not a set of `tracks`)" if hasattr(cls, "tracks") else ""
        return [f"{cls.__name__}.track is not declared: set track = 'merge' or 'finetune'{hint}"]
    if not isinstance(track, str) or track not in TRACKS:
        return [f"{cls.__name__}.track must be 'merge' or 'finetune', got {track!r}"]
    return []


def attack_problems(cls: Any) -> list[str]:
    """Every static problem of a would-be attack class, one line each (empty: fine)."""
    problems = kind_problems(cls)
    if problems and not (isinstance(cls, type) and issubclass(cls, Attack) and cls is not Attack):
        return problems
    wrong_track = track_problems(cls)
    problems += label_problems(cls) + wrong_track
    problems += family_problems(f"{cls.__name__}.family", None if wrong_track else cls.track,
                                getattr(cls, "family", None))
    config_cls = getattr(cls, "Config", None)
    if not (isinstance(config_cls, type) and issubclass(config_cls, StrictModel)):
        problems.append(f"{cls.__name__}.Config must subclass bench.config.StrictModel (a typo'd key must be an "
                        f"error), got {getattr(config_cls, '__name__', repr(config_cls))}")
    return problems
