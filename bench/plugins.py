"""Plugin protocol: defenses and attacks register by decorator, third-party ones by entry point.

Adding a defense is one file with a `Defense` subclass decorated by `@register_defense`; a package
outside the repository exposes it through the `lockbench.defenses` entry-point group. The harness only
ever talks to these base classes.
"""

from __future__ import annotations

import abc
import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar, Literal

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from bench.config import StrictModel

Track = Literal["merge", "finetune"]
ReleaseFormat = Literal["adapter", "full"]
TRACKS: tuple[Track, ...] = ("merge", "finetune")
#: DESIGN §4's attack families: `pinned` keeps the release at scale 1; `rescaling` re-scales it (shared
#: coefficients, normalised or sparsifying merges: what Trap² claims to stop); `aligning` undoes a
#: re-parameterisation against the public base; `data` spends attacker data on the protected task (heal,
#: distillation, RegMean); `finetune` adapts a released base.
AttackFamily = Literal["pinned", "rescaling", "aligning", "data", "finetune"]
ATTACK_FAMILIES: tuple[AttackFamily, ...] = ("pinned", "rescaling", "aligning", "data", "finetune")

logger = logging.getLogger(__name__)


class EmptyConfig(StrictModel):
    """For plugins without knobs."""


@dataclass
class TaskData:
    """Prompts and answers of one split of one task."""

    prompts: list[str]
    answers: list[str]


@dataclass
class OwnerView:
    """What a model owner has when producing a release (DESIGN §2): never the attacker or test split.

    Merge track: `owner_train` / `owner_val` are the protected task's owner split (the last tenth held
    out for checkpoint selection), `replay` the public-mixture sample the zoo's experts replay, and
    `reference_release` the plain expert. Finetune track: `capability_data` / `capability_val` are the
    base's skill mixture exactly as the zoo pre-trained on it. `recipe` is the zoo's training recipe for
    this model (a `bench.zoo.config.ZooConfig`), so a defense can match the reference's budget.

    `seed` is the job's seed, which attacks see too (`PublicView.seed`): fine for training randomness,
    never for a key. `secret` is the owner's secret for this job (63 bits, `bench.harness.owner_secret`),
    which no attack receives: a defense draws keys (permutations, transforms) from it and writes nothing
    of it into the release.
    """

    track: Track
    release_format: ReleaseFormat
    model_name: str
    base: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    seed: int
    secret: int
    task: str | None = None
    owner_train: TaskData | None = None
    owner_val: TaskData | None = None
    replay: TaskData | None = None
    reference_release: PreTrainedModel | PeftModel | None = None
    capability_data: dict[str, TaskData] = field(default_factory=dict)
    capability_val: dict[str, TaskData] = field(default_factory=dict)
    recipe: Any = None

    def unprotected(self) -> PreTrainedModel | PeftModel:
        """What the owner would publish without protection: the plain expert (merge) or the base (finetune)."""
        if self.track == "merge":
            assert self.reference_release is not None
            return self.reference_release
        return self.base


@dataclass
class Release:
    """A defense's output: the public model (full weights or a LoRA adapter) and private material.

    `private` is written to a separate directory that no attack is ever given.
    """

    model: PreTrainedModel | PeftModel
    private: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


class Defense(abc.ABC):
    """Turns what an owner would publish into a protected release."""

    name: ClassVar[str]
    description: ClassVar[str]
    paper: ClassVar[str] = ""  # the method's source, as the leaderboard cites it
    tracks: ClassVar[frozenset[Track]]
    formats: ClassVar[frozenset[ReleaseFormat]] = frozenset({"adapter", "full"})
    families: ClassVar[frozenset[str] | None] = None  # None: architecture-agnostic
    Config: ClassVar[type[StrictModel]] = EmptyConfig

    def __init__(self, config: StrictModel | None = None):
        self.config = config if config is not None else self.Config()

    def supports(self, track: Track, release_format: ReleaseFormat, family: str) -> bool:
        return (track in self.tracks and release_format in self.formats
                and (self.families is None or family in self.families))

    @abc.abstractmethod
    def protect(self, owner: OwnerView) -> Release:
        """Produce the release for `owner.track` (merge: an update for `owner.task`; finetune: a base)."""


@dataclass
class PublicView:
    """Everything an attacker may use (DESIGN §2): the release, the public base and experts, and its own
    split. There is deliberately no field for private defense material, the owner's secret or the test
    split, and nothing here holds a path to them (tests/test_harness.py walks every reachable attribute)."""

    track: Track
    release_format: ReleaseFormat
    model_name: str
    release: PreTrainedModel | PeftModel
    base: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    task: str
    attacker_train: TaskData
    attacker_val: TaskData
    public_experts: dict[str, PreTrainedModel | PeftModel]
    public_experts_val: dict[str, TaskData]
    seed: int
    budget_fractions: list[float] = field(default_factory=lambda: [1.0])
    score_val: Callable[[PreTrainedModel | PeftModel, list[str]], dict[str, float]] | None = None
    """lm-eval accuracy on the attacker's validation split (never test), for adaptive attacks' searches: the
    harness passes a `bench.harness.scorer.AttackerValScorer` holding only the attacker_val rows of the
    view's tasks (no file path); `score_val(model, task_names) -> {task: accuracy}`, with a `calls` count."""


@dataclass
class AttackOutput:
    """The attacked model(s). Fine-tuning attacks report a checkpoint per budget fraction.

    `stages` are intermediate models the harness also scores on the protected task (merge-then-heal's
    merge before the heal, as `pre_heal`), so a reader sees what each step of the attack contributed.
    """

    models: dict[float, PreTrainedModel]
    knobs: dict[str, Any]
    steps: int = 0
    examples: int = 0
    stages: dict[str, PreTrainedModel] = field(default_factory=dict)


class AttackNotApplicable(RuntimeError):
    """Raised by an attack whose preconditions the cell does not meet (an adapter-space merge of a full
    release, a two-input method given four members): the harness records the cell as `n/a`, not `failed`."""


class Attack(abc.ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    track: ClassVar[Track]
    #: The attack's family (DESIGN §4); `attack_family()` may refine it from the configuration.
    family: ClassVar[AttackFamily]
    Config: ClassVar[type[StrictModel]] = EmptyConfig

    def __init__(self, config: StrictModel | None = None):
        self.config = config if config is not None else self.Config()

    @classmethod
    def attack_family(cls, config: StrictModel) -> AttackFamily:
        """The family of this attack under `config` (a fixed merge at weight 1 is pinned, a normalised
        one rescaling); by default the class's declared family."""
        return cls.family

    @abc.abstractmethod
    def run(self, view: PublicView) -> AttackOutput:
        """Attack using the public view only."""


class Registry:
    """Name → plugin class, filled by decorator and, lazily, by an entry-point group."""

    def __init__(self, kind: str, base: type, group: str):
        self.kind, self.base, self.group = kind, base, group
        self._plugins: dict[str, type] = {}
        self._loaded_entry_points = False

    def register(self, cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"@register_{self.kind} expects a {self.base.__name__} subclass, got {cls!r}")
        for attribute in ("name", "description"):
            if not isinstance(getattr(cls, attribute, None), str):
                raise TypeError(f"{self.kind} {cls.__name__} must set a string class attribute '{attribute}'")
        if self.base is Attack and getattr(cls, "family", None) not in ATTACK_FAMILIES:
            raise TypeError(f"attack {cls.__name__} must declare its family (class attribute 'family', one of "
                            f"{', '.join(ATTACK_FAMILIES)}; DESIGN §4)")
        existing = self._plugins.get(cls.name)
        if existing is not None and existing is not cls:
            raise ValueError(f"{self.kind} '{cls.name}' is registered twice ({existing.__module__}, {cls.__module__})")
        self._plugins[cls.name] = cls
        return cls

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for entry in entry_points(group=self.group):
            try:
                loaded = entry.load()
                if isinstance(loaded, type) and issubclass(loaded, self.base):
                    self.register(loaded)
            except Exception as error:  # a broken third-party plugin must not break the suite
                logger.warning("could not load %s plugin %r: %s", self.kind, entry.name, error)

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._plugins)

    def get(self, name: str) -> type:
        self._load_entry_points()
        if name not in self._plugins:
            close = difflib.get_close_matches(name, self._plugins, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise KeyError(f"unknown {self.kind} '{name}'{hint}; known: {', '.join(sorted(self._plugins))}")
        return self._plugins[name]


DEFENSES = Registry("defense", Defense, "lockbench.defenses")
ATTACKS = Registry("attack", Attack, "lockbench.attacks")


def register_defense(cls: type[Defense]) -> type[Defense]:
    return DEFENSES.register(cls)


def register_attack(cls: type[Attack]) -> type[Attack]:
    return ATTACKS.register(cls)


def load_builtin_plugins() -> None:
    """Import the built-in plugin packages so their decorators run."""
    import attacks  # noqa: F401
    import defenses  # noqa: F401
