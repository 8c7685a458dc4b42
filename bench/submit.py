"""`lockbench submit`: load a third-party defense, check it cheaply, run a preset for it, file the result.

A submission is checked in three steps before any benchmark compute is spent: the class itself (a
`Defense` subclass with `protect`, name, description, tracks, formats and a `StrictModel` Config), its
config, and a dry run of `protect` on the tiny `micro` zoo whose output must pass the same release check
the harness applies (`bench.harness.stages.check_release`). Each problem is one line.

The defense is then registered under `NAME@<hash of its source and config>`, so the content-addressed
cache of its releases and cells is keyed by its code: editing the defense re-runs it, re-submitting
unchanged code reuses it, and the reference defenses' cells (keyed by theirs) are never recomputed.
The CSVs and README show the plain `NAME`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
from pydantic import BaseModel, ValidationError

from bench.config import StrictModel
from bench.plugins import DEFENSES, TRACKS, Defense, Release, load_builtin_plugins
from bench.presets import Preset

GROUP = "lockbench.defenses"
FORMATS = ("adapter", "full")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
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
    plugins = DEFENSES._plugins  # the registry has no public unregister; only our own modules are dropped
    for key in [key for key, cls in plugins.items() if cls.__module__ == name]:
        del plugins[key]


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


def _entry_point(name: str) -> EntryPoint | None:
    for entry in entry_points(group=GROUP):
        if entry.name == name:
            return entry
    return None


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and name.startswith(error.name):
            known = sorted({entry.name for entry in entry_points(group=GROUP)})
            hint = f"; installed '{GROUP}' entry points: {', '.join(known)}" if known else ""
            raise SubmissionError(f"'{name}' is neither a file, an installed '{GROUP}' entry point nor an "
                                  f"importable module{hint}") from error
        raise SubmissionError(f"importing module {name} failed: {one_line(error)}") from error
    except Exception as error:
        raise SubmissionError(f"importing module {name} failed: {one_line(error)}") from error


def _candidates(module: ModuleType) -> tuple[list[type], list[type]]:
    """(Defense subclasses defined in the module, other classes defined there that have a `protect`)."""
    defined = [obj for obj in vars(module).values()
               if isinstance(obj, type) and obj.__module__ == module.__name__]
    defenses = [obj for obj in defined if issubclass(obj, Defense) and obj is not Defense]
    lookalikes = [obj for obj in defined if not issubclass(obj, Defense) and hasattr(obj, "protect")]
    return defenses, lookalikes


def _pick(module: ModuleType, where: str) -> type:
    defenses, lookalikes = _candidates(module)
    if not defenses:
        if lookalikes:
            names = ", ".join(cls.__name__ for cls in lookalikes)
            raise SubmissionError(f"{names} in {where} is not a Defense subclass: write "
                                  f"`class {lookalikes[0].__name__}(bench.plugins.Defense)`")
        raise SubmissionError(f"no Defense subclass found in {where}")
    concrete = [cls for cls in defenses if not inspect.isabstract(cls)]
    if len(defenses) == 1:
        return defenses[0]
    if len(concrete) == 1:
        return concrete[0]
    names = ", ".join(cls.__name__ for cls in (concrete or defenses))
    raise SubmissionError(f"{where} defines several Defense subclasses ({names}); pick one as {where}:ClassName")


def attribute_of(module: ModuleType, attribute: str, where: str) -> Any:
    if not hasattr(module, attribute):
        raise SubmissionError(f"{where} has no attribute '{attribute}'")
    return getattr(module, attribute)


def load_defense(spec: str) -> tuple[type, str, str]:
    """Resolve PATH[.py][:Class], an entry-point name of `lockbench.defenses`, or MODULE[:Class].

    Returns (class, source description, kind). The class is not yet checked: see :func:`check_class`.
    """
    target, _, attribute = spec.partition(":")
    path = Path(target)
    if path.suffix == ".py" or path.is_file():
        module = load_file(path)
        where = str(path.resolve())
        cls = attribute_of(module, attribute, where) if attribute else _pick(module, where)
        return cls, f"file {where}", "file"
    entry = None if attribute else _entry_point(target)
    if entry is not None:
        try:
            loaded = entry.load()
        except Exception as error:
            raise SubmissionError(f"loading entry point '{entry.name}' ({entry.value}) failed: "
                                  f"{one_line(error)}") from error
        dist = f" from {entry.dist.name} {entry.dist.version}" if entry.dist is not None else ""
        source = f"entry point '{entry.name}' = {entry.value}{dist}"
        cls = _pick(loaded, entry.value) if isinstance(loaded, ModuleType) else loaded
        return cls, source, "entry point"
    module = _import_module(target)
    cls = attribute_of(module, attribute, target) if attribute else _pick(module, target)
    return cls, f"module {target}", "module"


# ----------------------------------------------------------------------------- static checks


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:400]


def _label_set(cls: type, attribute: str, allowed: tuple[str, ...], example: str) -> tuple[set[str], list[str]]:
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


def check_class(cls: Any) -> list[str]:
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
    for attribute in ("name", "description"):
        value = getattr(cls, attribute, None)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{cls.__name__} is missing the class attribute {attribute} (a non-empty string)")
    name = getattr(cls, "name", None)
    if isinstance(name, str) and name.strip() and not NAME_PATTERN.match(name):
        problems.append(f"{cls.__name__}.name {name!r} must be 1-64 letters, digits, '_', '.' or '-' "
                        "(it names folders)")
    tracks, track_problems = _label_set(cls, "tracks", TRACKS, "frozenset({'merge'})")
    formats, format_problems = _label_set(cls, "formats", FORMATS, "frozenset({'adapter', 'full'})")
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
    load_builtin_plugins()
    cls, source, kind = load_defense(spec)
    problems = check_class(cls)
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
    if name in DEFENSES._plugins:  # same code, same config: already registered in this process
        return name
    DEFENSES.register(renamed(submission.cls, name))
    return name


def worker_setup() -> None:
    """Ray workers' start-up hook: register the submission named in $LOCKBENCH_SUBMISSION."""
    payload = os.environ.get(WORKER_ENV)
    if payload:
        data = json.loads(payload)
        register(prepare(data["spec"], data["config"], data["salt"]))


# ----------------------------------------------------------------------------- dry run


def dry_run(submission: Submission, root: Path) -> list[str]:
    """Call `protect` once per declared track and format on the micro zoo and check each release as the
    harness will. Returns one note per call; raises SubmissionError on the first bad release."""
    import torch

    from bench.harness.context import get_context
    from bench.harness.grid import DefenseJob
    from bench.harness.stages import DefenseOutputError, check_release, owner_view
    from bench.presets import load_preset

    ctx = get_context(load_preset(DRY_RUN_PRESET), root)
    cls, notes = submission.cls, []
    families = {model: ctx.zoo.family(model) for model in ctx.zoo.model_names}
    for track in TRACKS:
        if track not in cls.tracks:
            continue
        for release_format in (FORMATS if track == "merge" else ("full",)):
            if release_format not in cls.formats:
                continue
            defense = cls(submission.config)
            model = next((m for m, family in families.items() if defense.supports(track, release_format, family)),
                         None)
            where = f"{track} track, format {release_format}"
            if model is None:
                notes.append(f"{where}: skipped, the micro zoo has no {'/'.join(sorted(cls.families or []))} model")
                continue
            task = ctx.preset.zoo.expert_tasks[0] if track == "merge" else None
            job = DefenseJob(cls.name, cls.name, submission.config_json, track, release_format, model, task, 0)
            torch.manual_seed(0)
            started = time.perf_counter()
            try:
                release = defense.protect(owner_view(ctx, job))
            except Exception as error:
                raise SubmissionError(f"dry run ({where}, micro zoo model {model}): protect raised "
                                      f"{one_line(error)}") from error
            try:
                check_release(release, job)
            except DefenseOutputError as error:
                raise SubmissionError(f"dry run ({where}, micro zoo model {model}): {error}") from error
            _check_release_extras(release, f"dry run ({where}, micro zoo model {model})")
            notes.append(f"{where}: protect returned a valid Release on micro/{model} "
                         f"in {time.perf_counter() - started:.1f}s")
    return notes


def _check_release_extras(release: Release, prefix: str) -> None:
    """What the harness stores besides the model must be storable: private tensors and JSON notes."""
    import torch

    if not isinstance(release.private, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in release.private.items()):
        raise SubmissionError(f"{prefix}: Release.private must map names to torch tensors")
    try:
        json.dumps(release.notes)
    except (TypeError, ValueError) as error:
        raise SubmissionError(f"{prefix}: Release.notes must be JSON-serialisable ({one_line(error)})") from error


# ----------------------------------------------------------------------------- running


def with_submission(preset: Preset, submission: Submission) -> Preset:
    """The preset's grid with the submission appended to its reference defenses."""
    from bench.harness.grid import PluginSpec

    if preset.grid is None:
        raise SubmissionError(f"preset '{preset.name}' has no grid section to run")
    taken = {spec.display for spec in preset.grid.defenses}
    if submission.name in taken:
        raise SubmissionError(f"defense name '{submission.name}' is already used by preset '{preset.name}' "
                              f"({', '.join(sorted(taken))}): rename the submission's `name`")
    DEFENSES.names()  # loads installed entry points, whose names are taken too
    existing = DEFENSES._plugins.get(submission.name)
    if existing is not None and existing is not submission.cls:
        raise SubmissionError(f"defense name '{submission.name}' is taken by {existing.__module__}."
                              f"{existing.__qualname__}: rename the submission's `name`")
    spec = PluginSpec(name=submission.registered_name, label=submission.name, config=json.loads(submission.config_json))
    grid = preset.grid.model_copy(update={"defenses": [*preset.grid.defenses, spec]})
    return preset.model_copy(update={"grid": grid})


def init_ray_for(submission: Submission, salt: str, worker_env: str = WORKER_ENV,
                 setup_hook: str = "bench.submit.worker_setup") -> None:
    """Start Ray with a hook that registers the submission in every worker (workers import only lockbench).
    Joining a remote cluster through RAY_ADDRESS needs the submission at the same path on every node."""
    import ray

    from bench.harness.executors import project_pythonpath
    from bench.offline import offline_env

    extra = [str(Path(submission.spec.partition(":")[0]).parent)] if submission.kind == "file" else []
    payload = json.dumps({"spec": submission.spec, "config": json.loads(submission.config_json), "salt": salt})
    env = {**offline_env(), "PYTHONPATH": os.pathsep.join([project_pythonpath(), *extra, os.getcwd()]),
           worker_env: payload}
    ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True,
             runtime_env={"env_vars": env, "worker_process_setup_hook": setup_hook})


# ----------------------------------------------------------------------------- ranking and README


def published_boards(leaderboard_dir: Path) -> list[tuple[str, pd.DataFrame]]:
    """Readable leaderboard.csv of each published run (submissions/ excluded)."""
    from bench.leaderboard import LEADERBOARD_FILE
    from bench.results import SchemaError, read_csv

    boards = []
    if leaderboard_dir.is_dir():
        for folder in sorted(leaderboard_dir.iterdir()):
            if folder.is_dir() and not folder.name.startswith(".") and (folder / LEADERBOARD_FILE).is_file():
                try:
                    boards.append((folder.name, read_csv(folder / LEADERBOARD_FILE, "leaderboard")))
                except SchemaError:
                    continue
    return boards


def rank_rows(board: pd.DataFrame, name: str, published: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """The submission's rank by worst-case protection in each (track, model, format) it was scored on.

    The pool is this run's defenses plus the published runs' defenses measured on the same zoo (same
    zoo hash), each defense once: this run's numbers win over published ones. Unscored rows rank last.
    """
    columns = ["track", "model", "release_format", "protection_worst", "worst_attack_success",
               "utility_retention", "rank", "ranked", "pool", "best_other", "best_other_protection"]
    rows = []
    mine = board[(board["defense"] == name) & (board["status"] == "ok")]
    for _, row in mine.iterrows():
        key = (row["track"], row["model"], row["release_format"])
        pool: dict[str, tuple[float, str]] = {}
        for source, frame in [("this run", board), *published]:
            same = frame[(frame["track"] == key[0]) & (frame["model"] == key[1]) & (frame["release_format"] == key[2])
                         & (frame["status"] == "ok") & (frame["zoo_hash"] == row["zoo_hash"])]
            for _, other in same.iterrows():
                pool.setdefault(other["defense"], (float(other["protection_worst"]), source))
        scored = {defense: value for defense, (value, _) in pool.items() if not math.isnan(value)}
        value = float(row["protection_worst"])
        rank = 1 + sum(other > value for other in scored.values()) if not math.isnan(value) else None
        others = {d: v for d, v in scored.items() if d != name}
        best = max(others, key=lambda d: others[d]) if others else ""
        rows.append([*key, value, float(row["worst_attack_success"]), float(row["utility_retention"]), rank,
                     len(scored), ", ".join(f"{d} ({src})" for d, (_, src) in sorted(pool.items())),
                     best, others.get(best, math.nan)])
    return pd.DataFrame(rows, columns=columns)


def fmt(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def class_name(submission: Submission) -> str:
    """`module.Class`; a file's module name is synthetic, so name the file instead."""
    if submission.kind == "file":
        return f"{submission.cls.__qualname__} in {submission.spec.partition(':')[0]}"
    return f"{submission.cls.__module__}.{submission.cls.__qualname__}"


def render_submission_readme(submission: Submission, preset: Preset, ranks: pd.DataFrame, run_readme: str,
                             problems: list[str], failed: pd.DataFrame) -> str:
    from bench.readme import markdown_table

    lines = [f"# Submission: {submission.name}", "",
             f"- source: {submission.source}",
             f"- class: `{class_name(submission)}` — {submission.cls.description}",
             f"- tracks: {', '.join(sorted(submission.cls.tracks))}; formats: {', '.join(sorted(submission.cls.formats))}",
             f"- config: `{submission.config_json}`",
             f"- code hash: `{submission.code_hash}` (cache key of its releases and cells)",
             f"- preset: `{preset.name}` — {preset.description}", ""]
    if problems:
        lines += ["**NOT VALID — not ranked.** The run broke DESIGN §6's validity rule, so its numbers are",
                  "noise and must not be compared:", "", *(f"- {p}" for p in problems), ""]
    if not failed.empty:
        lines += [f"**{len(failed)} of the submission's cells failed**; first error: `{failed['error'].iloc[0]}`", ""]
    lines += ["## Rank", "",
              "Rank by worst-case protection (`protection_worst`, higher is better) among the defenses of this",
              "run and the published defenses measured on the same zoo; unscored defenses are not ranked.", ""]
    if ranks.empty:
        lines.append("The submission has no scored row.")
    else:
        header = ["track", "model", "format", "protection (worst case)", "worst-case attack success",
                  "utility retention", "rank", "best other defense", "pool"]
        rows = [[r["track"], r["model"], r["release_format"], fmt(r["protection_worst"]),
                 fmt(r["worst_attack_success"]), fmt(r["utility_retention"]),
                 "not ranked" if problems or pd.isna(r["rank"]) else f"{int(r['rank'])} of {r['ranked']}",
                 f"{r['best_other']} ({fmt(r['best_other_protection'])})" if r["best_other"] else "–", r["pool"]]
                for _, r in ranks.iterrows()]
        lines += markdown_table(header, rows)
    body = run_readme.split("\n", 1)[1] if "\n" in run_readme else ""
    return "\n".join([*lines, "", "## Results of the run", "", body.lstrip("\n")])


def write_submission(target: Path, run_dir: Path, readme: str, metadata: dict[str, Any]) -> Path:
    """Copy the run's CSVs and plot into `target` with the submission README, atomically."""
    from bench.leaderboard import CELLS_FILE, LEADERBOARD_FILE, PLOT_FILE, README_FILE, publish_directory

    def fill(scratch: Path) -> None:
        for name in (CELLS_FILE, LEADERBOARD_FILE, PLOT_FILE):
            shutil.copy2(run_dir / name, scratch / name)
        (scratch / SUBMISSION_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        (scratch / README_FILE).write_text(readme)

    return publish_directory(target, fill)


@dataclass
class SubmitResult:
    """What `lockbench submit` reports."""

    submission: Submission
    run_dir: Path
    target: Path | None
    cells: int
    failed: int
    problems: list[str]
    ranks: pd.DataFrame

    @property
    def ok(self) -> bool:
        return self.failed == 0 and not self.problems and self.target is not None


def run_submission(submission: Submission, preset: Preset, root: Path, run_dir: Path, leaderboard_dir: Path,
                   folder_name: str, executor: str = "serial", allow_invalid: bool = False,
                   salt: str = "") -> SubmitResult:
    """Run the preset with the submission beside its references and file `leaderboard/submissions/NAME/`.

    A run that breaks the validity rule is filed only with `allow_invalid` (its README then says so
    loudly and ranks nothing): an invalid zoo's numbers are noise (DESIGN §6).
    """
    from bench.harness.run import run_benchmark
    from bench.leaderboard import CELLS_FILE, LEADERBOARD_FILE, README_FILE
    from bench.results import read_csv
    from bench.versions import versions

    full = with_submission(preset, submission)
    register(submission)
    if executor == "ray":
        init_ray_for(submission, salt)
    summary = run_benchmark(full, root, run_dir, executor)  # type: ignore[arg-type]
    cells = read_csv(run_dir / CELLS_FILE, "cells")
    board = read_csv(run_dir / LEADERBOARD_FILE, "leaderboard")
    mine = cells[cells["defense"] == submission.name]
    if mine.empty:
        raise SubmissionError(f"preset '{preset.name}' has no cell for {submission.name}: it declares tracks "
                              f"{sorted(submission.cls.tracks)}, formats {sorted(submission.cls.formats)}, "
                              f"families {sorted(submission.cls.families or ['any'])}")
    failed = mine[mine["status"] == "failed"]
    ranks = rank_rows(board, submission.name, published_boards(leaderboard_dir))
    target = None
    if not summary.problems or allow_invalid:
        readme = render_submission_readme(submission, preset, ranks, (run_dir / README_FILE).read_text(),
                                          summary.problems, failed)
        metadata = {"name": submission.name, "source": submission.source, "kind": submission.kind,
                    "class": class_name(submission),
                    "config": json.loads(submission.config_json), "code_hash": submission.code_hash,
                    "preset": preset.name, "valid": not summary.problems, "validity_problems": summary.problems,
                    "cells": len(mine), "failed_cells": len(failed), "versions": versions(),
                    "rank": json.loads(ranks.to_json(orient="records"))}
        target = write_submission(leaderboard_dir / "submissions" / folder_name, run_dir, readme, metadata)
        from bench.html_report import write_html_index

        write_html_index(leaderboard_dir)
    return SubmitResult(submission, run_dir, target, summary.cells, len(failed), summary.problems, ranks)


# ----------------------------------------------------------------------------- command line


def _print_ranks(console: Any, ranks: pd.DataFrame, valid: bool) -> None:
    from rich.table import Table

    table = Table(title="rank by worst-case protection (higher is better)")
    for column in ("track", "model", "format", "protection", "worst attack success", "utility retention", "rank"):
        table.add_column(column)
    for _, r in ranks.iterrows():
        rank = "not ranked" if not valid or pd.isna(r["rank"]) else f"{int(r['rank'])} of {r['ranked']}"
        table.add_row(r["track"], r["model"], r["release_format"], fmt(r["protection_worst"]),
                      fmt(r["worst_attack_success"]), fmt(r["utility_retention"]), rank)
    console.print(table)


def submit_command(defense: str, name: str | None, preset_name: str, config_json: str | None, executor: str,
                   root: Path | None, out: Path | None, leaderboard_dir: Path, dry: bool, check_only: bool,
                   allow_invalid: bool, fresh: bool) -> int:
    """`lockbench submit`: 0 filed, 1 run failed or invalid, 2 the submission or its options are wrong
    (each problem printed as one `error:` line)."""
    from rich.console import Console

    from bench.presets import PresetError, load_preset
    from bench.storage import storage_root

    console, errors = Console(), Console(stderr=True)

    def fail(problems: list[str], code: int = 2) -> int:
        for problem in problems:
            errors.print(f"[red]error:[/red] {problem}", markup=True, highlight=False, soft_wrap=True)
        return code

    if executor not in ("serial", "ray"):
        return fail([f"unknown executor '{executor}'; choose serial or ray"])
    try:
        config = json.loads(config_json) if config_json else {}
    except json.JSONDecodeError as error:
        return fail([f"--config is not JSON: {error}"])
    if not isinstance(config, dict):
        return fail([f"--config must be a JSON object, got {config_json}"])
    try:
        preset = load_preset(preset_name)
    except PresetError as error:
        return fail([str(error)])
    salt = str(time.time_ns()) if fresh else ""
    try:
        submission = prepare(defense, config, salt)
        folder = name or submission.name
        if not NAME_PATTERN.match(folder):
            return fail([f"--name {folder!r} must be 1-64 letters, digits, '_', '.' or '-'"])
        with_submission(preset, submission)  # name clashes, before any compute
        console.print(f"[green]ok[/green] {submission.cls.__qualname__} '{submission.name}' from {submission.source}: "
                      f"tracks {', '.join(sorted(submission.cls.tracks))}, config {submission.config_json}",
                      highlight=False, soft_wrap=True)
        base = storage_root(root)
        if dry:
            for note in dry_run(submission, base):
                console.print(f"[green]ok[/green] dry run, {note}", highlight=False, soft_wrap=True)
    except SubmissionError as error:
        return fail(error.problems)
    if check_only:
        return 0
    run_dir = (out or Path("runs") / "submissions" / folder).resolve()
    try:
        result = run_submission(submission, preset, base, run_dir, Path(leaderboard_dir), folder, executor,
                                allow_invalid, salt)
    except SubmissionError as error:
        return fail(error.problems)
    console.print(f"{result.cells} cells in {run_dir} ({result.failed} of the submission's failed)")
    _print_ranks(console, result.ranks, not result.problems)
    for problem in result.problems:
        errors.print(f"[red]VALIDITY:[/red] {problem}", highlight=False, soft_wrap=True)
    if result.target is None:
        return fail([f"the run broke the validity rule, so nothing was filed under {leaderboard_dir}/submissions "
                     "(numbers of an invalid zoo are noise); --allow-invalid files it marked NOT VALID"], 1)
    console.print(f"filed {result.target}" + (" (marked NOT VALID)" if result.problems else ""))
    if result.failed:
        return fail([f"{result.failed} of the submission's cells failed; see {result.target / 'cells.csv'}"], 1)
    return 0 if result.failed == 0 else 1
