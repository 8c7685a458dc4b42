"""Loading a submitted defense, its static checks and its registration under NAME@<code hash>."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import ValidationError

from bench.commands.submit.place import published_source
from bench.config import StrictModel
from bench.plugins import DEFENSES, Defense
from bench.plugins.checks import defense_problems, one_line

GROUP = "lockbench.defenses"
#: Set for Ray workers: JSON {"spec", "config", "salt"} of the submission to register on start-up.
WORKER_ENV = "LOCKBENCH_SUBMISSION"
SUBMISSION_FILE = "submission.json"
DRY_RUN_PRESET = "micro"


class SubmissionError(ValueError):
    """A submission that cannot be benchmarked as it is; each message is one line for the user."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


@dataclass
class Submission:
    """A loaded, checked defense class and where it came from."""

    cls: type[Defense]
    source: str  # human description: file path, module or entry point (with its distribution)
    kind: str  # "file", "module" or "entry point"
    spec: str  # what the user typed, enough to load it again (Ray workers do)
    config: StrictModel
    config_json: str  # canonical JSON, as the grid stores it
    code_hash: str
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.cls.name

    @property
    def published_source(self) -> str:
        """`source` for published files: a file's name and sha256, never its path (bench.commands.submit.place)."""

        return published_source(self.kind, self.spec, self.source)

    @property
    def registered_name(self) -> str:
        """The registry name: the code hash keeps cached cells of older versions of the code apart."""
        return f"{self.cls.name}@{self.code_hash}"


# ----------------------------------------------------------------------------- loading


def module_name_for(path: Path) -> str:
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    stem = re.sub(r"\W", "_", path.stem)
    return f"lockbench_submission_{stem}_{digest}"


def _forget_module(name: str) -> None:
    """Drop a previously loaded copy of a submission file and its registrations (a re-load in the same
    process, e.g. after the file changed, must not clash with the old class in the registry)."""
    sys.modules.pop(name, None)
    for key in [key for key in DEFENSES.names() if DEFENSES.get(key).__module__ == name]:
        DEFENSES.unregister(key)


def load_file(path: Path) -> ModuleType:
    path = path.resolve()
    if not path.is_file():
        raise SubmissionError(f"no such file: {path}")
    name = module_name_for(path)
    source = path.read_bytes()
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__lockbench_source__", None) == source:
        return loaded
    _forget_module(name)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SubmissionError(f"{path} cannot be imported as a Python module (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    module.__lockbench_source__ = source  # type: ignore[attr-defined]
    sys.modules[name] = module
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))  # sibling helper modules of the submission
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        _forget_module(name)
        raise SubmissionError(f"importing {path} failed: {one_line(error)}") from error
    return module


def _entry_point(group: str, name: str) -> EntryPoint | None:
    return next((entry for entry in entry_points(group=group) if entry.name == name), None)


def _import_module(name: str, group: str) -> ModuleType:
    """Import a module, saying what `name` could have been when it is none of them."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and name.startswith(error.name):
            known = sorted({entry.name for entry in entry_points(group=group)})
            hint = f"; installed '{group}' entry points: {', '.join(known)}" if known else ""
            raise SubmissionError(f"'{name}' is neither a file, an installed '{group}' entry point nor an "
                                  f"importable module{hint}") from error
        raise SubmissionError(f"importing module {name} failed: {one_line(error)}") from error
    except Exception as error:
        raise SubmissionError(f"importing module {name} failed: {one_line(error)}") from error


def _pick(module: ModuleType, where: str, base: type, method: str) -> type:
    """The one `base` subclass defined in `module` (imported classes do not count), else the one concrete one."""
    defined = [obj for obj in vars(module).values() if isinstance(obj, type) and obj.__module__ == module.__name__]
    found = [obj for obj in defined if issubclass(obj, base) and obj is not base]
    kind = base.__name__
    article = "an" if kind[0] in "AEIOU" else "a"
    if not found:
        lookalikes = [obj for obj in defined if hasattr(obj, method)]
        if lookalikes:
            names = ", ".join(cls.__name__ for cls in lookalikes)
            raise SubmissionError(f"{names} in {where} is not {article} {kind} subclass: write "
                                  f"`class {lookalikes[0].__name__}(bench.plugins.{kind})`")
        raise SubmissionError(f"no {kind} subclass found in {where}")
    concrete = [cls for cls in found if not inspect.isabstract(cls)]
    for candidates in (found, concrete):  # one class, else one concrete class (beside abstract bases)
        if len(candidates) == 1:
            return candidates[0]
    names = ", ".join(cls.__name__ for cls in (concrete or found))
    raise SubmissionError(f"{where} defines several {kind} subclasses ({names}); pick one as {where}:ClassName")


def resolve_plugin(spec: str, base: type, group: str, method: str) -> tuple[type, str, str]:
    """Resolve PATH[.py][:Class], an entry-point name of `group`, or MODULE[:Class] to a `base` subclass
    (the one defined there, when no Class is named; `method` names the lookalikes a mistake would define).

    Returns (class, source description, kind); the class is not yet checked (bench.plugins.checks).
    """
    target, _, attribute = spec.partition(":")
    path = Path(target)
    if path.suffix == ".py" or path.is_file():
        module, where = load_file(path), str(path.resolve())
        cls = attribute_of(module, attribute, where) if attribute else _pick(module, where, base, method)
        return cls, f"file {where}", "file"
    entry = None if attribute else _entry_point(group, target)
    if entry is not None:
        try:
            loaded = entry.load()
        except Exception as error:
            raise SubmissionError(f"loading entry point '{entry.name}' ({entry.value}) failed: "
                                  f"{one_line(error)}") from error
        dist = f" from {entry.dist.name} {entry.dist.version}" if entry.dist is not None else ""
        cls = _pick(loaded, entry.value, base, method) if isinstance(loaded, ModuleType) else loaded
        return cls, f"entry point '{entry.name}' = {entry.value}{dist}", "entry point"
    module = _import_module(target, group)
    cls = attribute_of(module, attribute, target) if attribute else _pick(module, target, base, method)
    return cls, f"module {target}", "module"


def attribute_of(module: ModuleType, attribute: str, where: str) -> Any:
    if not hasattr(module, attribute):
        raise SubmissionError(f"{where} has no attribute '{attribute}'")
    return getattr(module, attribute)


def load_defense(spec: str) -> tuple[type, str, str]:
    """A defense file, `lockbench.defenses` entry point or module (resolve_plugin)."""
    return resolve_plugin(spec, Defense, GROUP, "protect")


# ----------------------------------------------------------------------------- static checks


def check_config(cls: type[Defense], data: dict[str, Any]) -> tuple[StrictModel, str]:
    """Validate the config the grid will pass; returns it with its canonical JSON."""
    try:
        config = cls.Config.model_validate(data)
    except ValidationError as error:
        details = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in error.errors())
        given = "the default config {}" if not data else f"config {json.dumps(data)}"
        raise SubmissionError(f"{cls.__name__}.Config rejects {given}: {details}") from error
    try:
        canonical = json.dumps(config.model_dump(mode="json", by_alias=True), sort_keys=True)
    except (TypeError, ValueError) as error:
        raise SubmissionError(f"{cls.__name__}.Config is not JSON-serialisable: {one_line(error)}") from error
    try:
        cls(config)
    except Exception as error:
        raise SubmissionError(f"{cls.__name__}(config) raised {one_line(error)}") from error
    return config, canonical


def _source_files(cls: type) -> list[Path]:
    """The files whose content keys the submission's cache: its module, or its whole top-level package."""
    top = sys.modules.get(cls.__module__.split(".")[0])
    paths = [Path(p) for p in getattr(top, "__path__", [])]
    if paths:
        return sorted(file for folder in paths for file in folder.rglob("*.py"))
    module = sys.modules.get(cls.__module__)
    file = getattr(module, "__file__", None)
    return [Path(file)] if file else []


def code_hash(cls: type, config_json: str, salt: str = "") -> str:
    digest = hashlib.sha256(f"{cls.__module__}:{cls.__qualname__}\n{config_json}\n{salt}\n".encode())
    for path in _source_files(cls):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:10]


def prepare(spec: str, config: dict[str, Any] | None = None, salt: str = "") -> Submission:
    """Load and statically check a submission (no compute); raises SubmissionError listing every problem."""
    cls, source, kind = load_defense(spec)
    problems = defense_problems(cls)
    if problems:
        raise SubmissionError(problems)
    checked, canonical = check_config(cls, config or {})
    if kind == "file":  # an absolute path, so Ray workers in another directory can load it again
        target, _, attribute = spec.partition(":")
        spec = str(Path(target).resolve()) + (f":{attribute}" if attribute else "")
    return Submission(cls, source, kind, spec, checked, canonical, code_hash(cls, canonical, salt))


def renamed(cls: type, name: str) -> type:
    """A subclass of `cls` registered as `name` (a submission's `NAME@hash`), otherwise the same class."""
    return type(cls.__name__, (cls,), {"name": name, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                       "__doc__": cls.__doc__})


def register(submission: Submission) -> str:
    """Register the submission under its hashed name (idempotent) and return that name."""
    name = submission.registered_name
    if DEFENSES.registered(name) is not None:  # same code, same config: already registered in this process
        return name
    DEFENSES.register(renamed(submission.cls, name))
    return name


def register_from_env(variable: str, prepare_one: Any, register_one: Any) -> None:
    """A Ray worker's start-up: prepare and register the submission described in $variable (JSON: spec,
    config, salt), if set; the defense and the attack submissions share it."""
    payload = os.environ.get(variable)
    if payload:
        data = json.loads(payload)
        register_one(prepare_one(data["spec"], data["config"], data["salt"]))


def worker_setup() -> None:
    """Ray workers' start-up hook: register the submission named in $LOCKBENCH_SUBMISSION."""
    register_from_env(WORKER_ENV, prepare, register)


