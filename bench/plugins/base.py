"""The `Defense` and `Attack` base classes, typed by their config: `class Trap2(Defense[Trap2Config])` makes
`self.config` a `Trap2Config` and sets `Trap2.Config`. Plugin authors import them from `bench.plugins`."""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Generic, TypeVar, cast, get_args, get_origin

from bench.config import StrictModel
from bench.plugins.threat_model import (
    FORMATS,
    AttackFamily,
    AttackOutput,
    OwnerView,
    PublicView,
    Release,
    ReleaseFormat,
    Track,
)


class EmptyConfig(StrictModel):
    """For plugins without knobs."""


C = TypeVar("C", bound=StrictModel)


def config_class_of(cls: type) -> type[StrictModel] | None:
    """The config class a class names as its own type parameter (`class Trap2(Defense[Trap2Config])`); None
    when it names none or sets `Config` itself (a generated class)."""
    if "Config" in cls.__dict__:
        return None
    for base in cls.__dict__.get("__orig_bases__", ()):
        origin = get_origin(base)
        if isinstance(origin, type) and issubclass(origin, Plugin):
            (argument,) = get_args(base)
            return argument if isinstance(argument, type) else None
    return None


class Plugin(abc.ABC, Generic[C]):
    """What defenses and attacks share: a name, a one-line description and a validated config."""

    name: ClassVar[str]
    description: ClassVar[str]
    Config: ClassVar[type[StrictModel]] = EmptyConfig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.Config = config_class_of(cls) or cls.Config

    def __init__(self, config: C | None = None):
        self.config: C = cast(C, config if config is not None else self.Config())


class Defense(Plugin[C]):
    """Turns what an owner would publish into a protected release."""

    paper: ClassVar[str] = ""  # the method's source, as the leaderboard cites it
    tracks: ClassVar[frozenset[Track]]
    formats: ClassVar[frozenset[ReleaseFormat]] = frozenset(FORMATS)
    families: ClassVar[frozenset[str] | None] = None  # None: architecture-agnostic

    def supports(self, track: Track, release_format: ReleaseFormat, family: str) -> bool:
        return (track in self.tracks and release_format in self.formats
                and (self.families is None or family in self.families))

    @classmethod
    def budget_control(cls, config: StrictModel) -> StrictModel | None:
        """The config of this defense that is `config`'s negative control at the same training budget, when
        `config` trains at another budget than the zoo's experts (then its utility and trap diagnostics are
        judged against that release, not `none`'s: DESIGN §5). None: `none` is the right reference."""
        return None

    @abc.abstractmethod
    def protect(self, owner: OwnerView) -> Release:
        """Produce the release for `owner.track` (merge: an update for `owner.task`; finetune: a base)."""


class Attack(Plugin[C]):
    track: ClassVar[Track]
    #: The attack's family (DESIGN §4); `attack_family()` may refine it from the configuration.
    family: ClassVar[AttackFamily]

    @classmethod
    def attack_family(cls, config: StrictModel) -> AttackFamily:
        """The family of this attack under `config` (a fixed merge at weight 1 is pinned, a normalised
        one rescaling); by default the class's declared family."""
        return cls.family

    @classmethod
    def seed_free(cls, config: StrictModel) -> bool:
        """Whether this attack's result under `config` cannot depend on the seed: it draws no random number
        and reads nothing seeded from the view. The harness then computes its release-free control once for
        every seed (the control release is the public base or a zero update, which no seed changes).
        False unless an attack declares otherwise."""
        return False

    @abc.abstractmethod
    def run(self, view: PublicView) -> AttackOutput:
        """Attack using the public view only."""
