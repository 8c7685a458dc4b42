"""Loading, checking and registering a submitted attack (`lockbench submit --attack`, step 1)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.commands.submit import (
    Submission,
    SubmissionError,
    check_config,
    code_hash,
    one_line,
    register_from_env,
    renamed,
    resolve_plugin,
)
from bench.plugins import ATTACKS, Attack
from bench.plugins.checks import attack_problems, family_problems
from bench.plugins.threat_model import REFERENCE_DEFENSE

ATTACK_GROUP = "lockbench.attacks"
#: Comma-separated attack specs (file[:Class], module[:Class]) to register under their own names in every
#: process that imports this module (name it in $LOCKBENCH_PLUGINS).
ATTACKS_ENV = "LOCKBENCH_ATTACKS"
#: Set for Ray workers of a submission run: JSON {"spec", "config", "salt"} of the attack to register.
WORKER_ENV = "LOCKBENCH_ATTACK_SUBMISSION"
#: A submitted attack *breaks* a defense when it raises the defense's attack success by more than this.
BREAK_MARGIN = 0.05
#: One input of an attack: what its `none` verdict is decided on (bench.results VALIDITY_KEY less the attack).
INPUT_KEY = ["track", "model", "release_format", "task", "members"]
REFERENCE = REFERENCE_DEFENSE  # the defense a submitted attack must be valid against



@dataclass
class AttackSubmission(Submission):
    """A loaded, checked attack class and where it came from (the defense fields, with an Attack class)."""

    cls: type[Attack]  # type: ignore[assignment]

    @property
    def track(self) -> str:
        return str(self.cls.track)

    @property
    def family(self) -> str:
        """The family under the submitted config (an attack may refine its declared family)."""
        return str(self.cls.attack_family(self.config))



# ----------------------------------------------------------------------------- loading


def load_attack(spec: str) -> tuple[type, str, str]:
    """An attack file, `lockbench.attacks` entry point or module (bench.commands.submit.resolve_plugin); the class is
    checked by bench.plugins.checks.attack_problems."""
    return resolve_plugin(spec, Attack, ATTACK_GROUP, "run")


def _same_origin(one: type, other: type) -> bool:
    """Two versions of the same submitted class (a file re-loaded after an edit)."""
    return one.__module__ == other.__module__ and one.__qualname__ == other.__qualname__


def _check_name_free(cls: type) -> None:
    """The plain name must not belong to another attack (built-in or installed)."""
    ATTACKS.names()  # loads installed entry points, whose names are taken too
    existing = ATTACKS.registered(cls.name)
    if existing is not None and existing is not cls and not _same_origin(existing, cls):
        raise SubmissionError(f"attack name '{cls.name}' is taken by {existing.__module__}.{existing.__qualname__}: "
                              "rename the submission's `name`")


def load_checked(spec: str) -> tuple[type[Attack], str, str]:
    """Load and statically check an attack class (no config yet); raises SubmissionError listing every problem."""
    cls, source, kind = load_attack(spec)
    problems = attack_problems(cls)
    if problems:
        raise SubmissionError(problems)
    _check_name_free(cls)
    return cls, source, kind


def prepare_attack(spec: str, config: dict[str, Any] | None = None, salt: str = "") -> AttackSubmission:
    """Load, check and configure an attack submission (no compute)."""
    cls, source, kind = load_checked(spec)
    checked, canonical = check_config(cls, config or {})
    try:
        family = cls.attack_family(checked)
    except Exception as error:
        raise SubmissionError(f"{cls.__name__}.attack_family(config) raised {one_line(error)}") from error
    problems = family_problems(f"{cls.__name__}.attack_family(config) returned", cls.track, family)
    if problems:
        raise SubmissionError(problems)
    return AttackSubmission(cls, source, kind, _absolute(spec, kind), checked, canonical,
                            code_hash(cls, canonical, salt))


def _absolute(spec: str, kind: str) -> str:
    """A file spec with an absolute path, so processes in another directory (Ray workers) load it again."""
    if kind != "file":
        return spec
    target, _, attribute = spec.partition(":")
    return str(Path(target).resolve()) + (f":{attribute}" if attribute else "")


# ----------------------------------------------------------------------------- registration


def register_plain(cls: type[Attack]) -> str:
    """Register the class under its own name (what presets use); an older version of it is replaced."""
    existing = ATTACKS.registered(cls.name)
    if existing is not None and existing is not cls and _same_origin(existing, cls):
        ATTACKS.unregister(cls.name)
    ATTACKS.register(cls)
    return cls.name


def register_attack_submission(submission: AttackSubmission) -> str:
    """Register under the plain name and under `NAME@hash` (the run's cache key); returns the hashed name."""
    cls, name = submission.cls, submission.registered_name
    register_plain(cls)
    if ATTACKS.registered(name) is None:
        ATTACKS.register(renamed(cls, name))
    return name


def worker_setup() -> None:
    """Ray workers' start-up hook: register the attack named in $LOCKBENCH_ATTACK_SUBMISSION."""
    register_from_env(WORKER_ENV, prepare_attack, register_attack_submission)


def register_listed_attacks() -> list[str]:
    """Register the attacks of $LOCKBENCH_ATTACKS under their own names; relative paths are made absolute
    in the environment, so Ray workers started later (in another directory) find the same files."""
    specs = [spec.strip() for spec in os.environ.get(ATTACKS_ENV, "").split(",") if spec.strip()]
    names, resolved = [], []
    for spec in specs:
        cls, _, kind = load_checked(spec)
        names.append(register_plain(cls))
        resolved.append(_absolute(spec, kind))
    if specs:
        os.environ[ATTACKS_ENV] = ",".join(resolved)
    return names


def register_listed_on_import() -> None:
    """Importing this module through $LOCKBENCH_PLUGINS registers $LOCKBENCH_ATTACKS; a bad entry surfaces as
    that import's one-line error."""
    try:
        register_listed_attacks()
    except SubmissionError as error:
        raise ImportError(f"{ATTACKS_ENV}: {error}") from error
