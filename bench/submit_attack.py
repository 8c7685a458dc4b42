"""`lockbench submit --attack`: check a third-party attack, validate it on `none`, run it against the preset's
defenses and file whether it breaks them.

Why three steps. A benchmark of defenses is only as strong as its strongest attack (DESIGN §4), so a new
attack is worth filing when it raises some defense's worst case. It is worth *comparing* only where it
works against the unprotected release: an attack that is weak on `none` (DESIGN §6) has a normalised
success that is noise, so it is validated on `none` first, before any defense spends compute on it.

Registration. For its own run the attack is registered as `NAME@<hash of its source and config>` (labelled
`NAME` in the CSVs), so its cached cells are keyed by its code, exactly as defense submissions are; Ray
workers register it through :func:`worker_setup`. It is also registered under its plain `NAME`, so a
preset can name it: in other processes, `LOCKBENCH_PLUGINS=bench.submit_attack` with
`LOCKBENCH_ATTACKS=path/to/attack.py[,more]` registers it in the driver and every worker (importing this
module registers the attacks listed there), after which it joins every defense's worst case.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from bench.config import StrictModel
from bench.plugins import ATTACK_FAMILIES, ATTACKS, DEFENSES, TRACKS, Attack, load_builtin_plugins
from bench.presets import Preset
from bench.submit import (
    NAME_PATTERN,
    Submission,
    SubmissionError,
    check_config,
    class_name,
    code_hash,
    fmt,
    load_file,
    one_line,
    published_boards,
    write_submission,
)

ATTACK_GROUP = "lockbench.attacks"
#: Comma-separated attack specs (file[:Class], module[:Class]) to register under their own names in every
#: process that imports this module (name it in $LOCKBENCH_PLUGINS).
ATTACKS_ENV = "LOCKBENCH_ATTACKS"
#: Set for Ray workers of a submission run: JSON {"spec", "config", "salt"} of the attack to register.
WORKER_ENV = "LOCKBENCH_ATTACK_SUBMISSION"
#: A submitted attack *breaks* a defense when it raises the defense's worst case by more than this.
BREAK_MARGIN = 0.05
#: One input of an attack: what its `none` verdict is decided on (bench.results VALIDITY_KEY less the attack).
INPUT_KEY = ["track", "model", "release_format", "task", "members"]
REFERENCE = "none"


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


def _entry_point(name: str) -> EntryPoint | None:
    return next((entry for entry in entry_points(group=ATTACK_GROUP) if entry.name == name), None)


def _import(name: str) -> ModuleType:
    """Import a module, saying what `name` could have been when it is none of them."""
    import importlib

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name and name.startswith(error.name):
            raise SubmissionError(f"'{name}' is neither a file, an installed '{ATTACK_GROUP}' entry point nor an "
                                  "importable module") from error
        raise SubmissionError(f"importing module {name} failed: {one_line(error)}") from error
    except Exception as error:
        raise SubmissionError(f"importing module {name} failed: {one_line(error)}") from error


def _pick(module: ModuleType, where: str) -> type:
    """The one Attack subclass defined in `module` (imported classes do not count)."""
    defined = [obj for obj in vars(module).values() if isinstance(obj, type) and obj.__module__ == module.__name__]
    found = [obj for obj in defined if issubclass(obj, Attack) and obj is not Attack]
    if not found:
        lookalikes = [obj.__name__ for obj in defined if hasattr(obj, "run")]
        if lookalikes:
            raise SubmissionError(f"{', '.join(lookalikes)} in {where} is not an Attack subclass: write "
                                  f"`class {lookalikes[0]}(bench.plugins.Attack)`")
        raise SubmissionError(f"no Attack subclass found in {where}")
    concrete = [cls for cls in found if "run" not in getattr(cls, "__abstractmethods__", ())]
    for candidates in (found, concrete):  # one class, else one concrete class (beside abstract bases)
        if len(candidates) == 1:
            return candidates[0]
    names = ", ".join(cls.__name__ for cls in (concrete or found))
    raise SubmissionError(f"{where} defines several Attack subclasses ({names}); pick one as {where}:ClassName")


def _attribute(module: ModuleType, name: str, where: str) -> Any:
    if not hasattr(module, name):
        raise SubmissionError(f"{where} has no attribute '{name}'")
    return getattr(module, name)


def load_attack(spec: str) -> tuple[type, str, str]:
    """Resolve PATH[.py][:Class], an entry point of `lockbench.attacks`, or MODULE[:Class].

    Returns (class, source description, kind); the class is checked by :func:`check_attack_class`.
    """
    target, _, attribute = spec.partition(":")
    path = Path(target)
    if path.suffix == ".py" or path.is_file():
        module, where = load_file(path), str(path.resolve())
        return (_attribute(module, attribute, where) if attribute else _pick(module, where)), f"file {where}", "file"
    entry = None if attribute else _entry_point(target)
    if entry is not None:
        try:
            loaded = entry.load()
        except Exception as error:
            raise SubmissionError(f"loading entry point '{entry.name}' ({entry.value}) failed: "
                                  f"{one_line(error)}") from error
        dist = f" from {entry.dist.name} {entry.dist.version}" if entry.dist is not None else ""
        cls = _pick(loaded, entry.value) if isinstance(loaded, ModuleType) else loaded
        return cls, f"entry point '{entry.name}' = {entry.value}{dist}", "entry point"
    module = _import(target)
    return (_attribute(module, attribute, target) if attribute else _pick(module, target)), f"module {target}", "module"


# ----------------------------------------------------------------------------- static checks


def _kind_problems(cls: Any) -> list[str]:
    """A class, an Attack subclass, with a `run(self, view)`; empty when fine."""
    import inspect

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


def _label_problems(cls: type) -> list[str]:
    problems = []
    for attribute in ("name", "description"):
        value = getattr(cls, attribute, None)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{cls.__name__} is missing the class attribute {attribute} (a non-empty string)")
    name = getattr(cls, "name", None)
    if isinstance(name, str) and name.strip() and not NAME_PATTERN.match(name):
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


def _track_problems(cls: type) -> list[str]:
    track = getattr(cls, "track", None)
    if track is None:
        hint = " (an attack has one `track`, not a set of `tracks`)" if hasattr(cls, "tracks") else ""
        return [f"{cls.__name__}.track is not declared: set track = 'merge' or 'finetune'{hint}"]
    if not isinstance(track, str) or track not in TRACKS:
        return [f"{cls.__name__}.track must be 'merge' or 'finetune', got {track!r}"]
    return []


def check_attack_class(cls: Any) -> list[str]:
    """Every static problem of a would-be attack class, one line each (empty: fine)."""
    problems = _kind_problems(cls)
    if problems and not (isinstance(cls, type) and issubclass(cls, Attack) and cls is not Attack):
        return problems
    track_problems = _track_problems(cls)
    problems += _label_problems(cls) + track_problems
    problems += family_problems(f"{cls.__name__}.family", None if track_problems else cls.track,
                                getattr(cls, "family", None))
    config_cls = getattr(cls, "Config", None)
    if not (isinstance(config_cls, type) and issubclass(config_cls, StrictModel)):
        problems.append(f"{cls.__name__}.Config must subclass bench.config.StrictModel (a typo'd key must be an "
                        f"error), got {getattr(config_cls, '__name__', repr(config_cls))}")
    return problems


def _same_origin(one: type, other: type) -> bool:
    """Two versions of the same submitted class (a file re-loaded after an edit)."""
    return one.__module__ == other.__module__ and one.__qualname__ == other.__qualname__


def _check_name_free(cls: type) -> None:
    """The plain name must not belong to another attack (built-in or installed)."""
    ATTACKS.names()  # loads installed entry points, whose names are taken too
    existing = ATTACKS._plugins.get(cls.name)  # the registry has no public lookup without loading
    if existing is not None and existing is not cls and not _same_origin(existing, cls):
        raise SubmissionError(f"attack name '{cls.name}' is taken by {existing.__module__}.{existing.__qualname__}: "
                              "rename the submission's `name`")


def load_checked(spec: str) -> tuple[type[Attack], str, str]:
    """Load and statically check an attack class (no config yet); raises SubmissionError listing every problem."""
    load_builtin_plugins()
    cls, source, kind = load_attack(spec)
    problems = check_attack_class(cls)
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
    existing = ATTACKS._plugins.get(cls.name)
    if existing is not None and existing is not cls and _same_origin(existing, cls):
        del ATTACKS._plugins[cls.name]
    ATTACKS.register(cls)
    return cls.name


def register_attack_submission(submission: AttackSubmission) -> str:
    """Register under the plain name and under `NAME@hash` (the run's cache key); returns the hashed name."""
    cls, name = submission.cls, submission.registered_name
    register_plain(cls)
    if name not in ATTACKS._plugins:
        ATTACKS.register(type(cls.__name__, (cls,), {"name": name, "__module__": cls.__module__,
                                                     "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}))
    return name


def worker_setup() -> None:
    """Ray workers' start-up hook: register the attack named in $LOCKBENCH_ATTACK_SUBMISSION."""
    payload = os.environ.get(WORKER_ENV)
    if payload:
        data = json.loads(payload)
        register_attack_submission(prepare_attack(data["spec"], data["config"], data["salt"]))


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


def _register_listed_on_import() -> None:
    """Importing this module through $LOCKBENCH_PLUGINS registers $LOCKBENCH_ATTACKS; a bad entry surfaces as
    that import's one-line error."""
    try:
        register_listed_attacks()
    except SubmissionError as error:
        raise ImportError(f"{ATTACKS_ENV}: {error}") from error


# ----------------------------------------------------------------------------- grids


def _spec(submission: AttackSubmission):
    from bench.harness.grid import PluginSpec

    return PluginSpec(name=submission.registered_name, label=submission.name, config=json.loads(submission.config_json))


def _grid_of(preset: Preset):
    if preset.grid is None:
        raise SubmissionError(f"preset '{preset.name}' has no grid section to run")
    return preset.grid


def _with_grid(preset: Preset, submission: AttackSubmission, defenses: list, others: list) -> Preset:
    """The preset with these defenses, and the submission after `others` as its track's attacks (the other
    track gets none: a merge attack adds nothing to finetune cells)."""
    track = submission.track
    update = {"defenses": defenses, f"{track}_attacks": [*others, _spec(submission)],
              **{f"{other}_attacks": [] for other in TRACKS if other != track}}
    return preset.model_copy(update={"grid": _grid_of(preset).model_copy(update=update)})


def validation_preset(preset: Preset, submission: AttackSubmission) -> Preset:
    """The preset's grid reduced to `none` with the submission as its track's only attack (controls are added
    by `expand`)."""
    from bench.harness.grid import PluginSpec

    grid = _grid_of(preset)
    reference = next((spec for spec in grid.defenses if spec.name == REFERENCE), PluginSpec(name=REFERENCE))
    return _with_grid(preset, submission, [reference], [])


def _defenses_for(preset: Preset, track: str) -> list:
    """The preset's defenses that support `track` (`none` among them)."""
    chosen = []
    for spec in _grid_of(preset).defenses:
        try:
            cls = DEFENSES.get(spec.name)
        except KeyError as error:
            raise SubmissionError(str(error.args[0])) from error
        if track in cls.tracks:
            chosen.append(spec)
    return chosen


def attack_preset(preset: Preset, submission: AttackSubmission) -> Preset:
    """The preset's defenses of the attack's track against its attacks of that track plus the submission."""
    others = list(getattr(_grid_of(preset), f"{submission.track}_attacks"))
    taken = sorted(spec.display for spec in others)
    if submission.name in taken:
        raise SubmissionError(f"attack name '{submission.name}' is already used by preset '{preset.name}' "
                              f"({', '.join(taken)}): submit against a preset without it, or rename `name`")
    return _with_grid(preset, submission, _defenses_for(preset, submission.track), others)


# ----------------------------------------------------------------------------- running


def _init_ray_for(submission: AttackSubmission, salt: str) -> None:
    """Start Ray with a hook that registers the attack in every worker (workers import only lockbench)."""
    import ray

    from bench.harness.executors import _project_pythonpath
    from bench.offline import offline_env

    extra = [str(Path(submission.spec.partition(":")[0]).parent)] if submission.kind == "file" else []
    payload = json.dumps({"spec": submission.spec, "config": json.loads(submission.config_json), "salt": salt})
    env = {**offline_env(), "PYTHONPATH": os.pathsep.join([_project_pythonpath(), *extra, os.getcwd()]),
           WORKER_ENV: payload}
    ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False, log_to_driver=False,
             ignore_reinit_error=True,
             runtime_env={"env_vars": env, "worker_process_setup_hook": "bench.submit_attack.worker_setup"})


def run_preset(preset: Preset, submission: AttackSubmission, root: Path, run_dir: Path, executor: str,
               salt: str = "") -> pd.DataFrame:
    """Run `preset` with the submission registered here (and in Ray workers); returns the scored cells."""
    from bench.harness.grid import ConfigError
    from bench.harness.run import run_benchmark
    from bench.leaderboard import CELLS_FILE
    from bench.results import read_csv

    register_attack_submission(submission)
    if executor == "ray":
        _init_ray_for(submission, salt)
    try:
        run_benchmark(preset, root, run_dir, executor)  # type: ignore[arg-type]
    except ConfigError as error:
        raise SubmissionError(str(error)) from error
    finally:
        _stop_local_ray(executor)
    return read_csv(run_dir / CELLS_FILE, "cells")


def _stop_local_ray(executor: str) -> None:
    """A fully cached run starts no executor, so our own local cluster would outlive it."""
    if executor == "ray" and not os.environ.get("RAY_ADDRESS"):
        import ray

        if ray.is_initialized():
            ray.shutdown()


def none_verdicts(cells: pd.DataFrame, name: str) -> pd.DataFrame:
    """Per input of the attack `name` on `none`: `verdict` (valid, weak, unmatched, failed, n/a) and `why`."""
    from bench.results import valid_mask

    mine = cells[(cells["defense"] == REFERENCE) & (cells["attack"] == name)]
    rows = []
    for key, group in mine.groupby(INPUT_KEY, sort=True):
        ok = group[group["status"] == "ok"]
        if ok.empty:
            failed = group[group["status"] == "failed"]
            verdict, why = ("failed", failed["error"].iloc[0]) if len(failed) else ("n/a", "not applicable")
        elif valid_mask(ok).any():
            verdict, why = "valid", ""
        elif ok["weak"].any():
            verdict, why = "weak", ok.loc[ok["weak"], "weak_reason"].iloc[0]
        else:
            verdict, why = "unmatched", "no control or none row to normalise by"
        rows.append([*key, verdict, why])
    return pd.DataFrame(rows, columns=[*INPUT_KEY, "verdict", "why"])


def refusal(verdicts: pd.DataFrame, name: str, preset_name: str, allow_weak: bool) -> str | None:
    """Why the attack may not be run against the defenses, or None. Weakness can be waived, failure cannot."""
    if (verdicts["verdict"] == "valid").any():
        return None
    if verdicts.empty or verdicts["verdict"].isin(["failed", "n/a"]).all():
        first = verdicts["why"].iloc[0] if len(verdicts) else "no input"
        return f"{name} did not run on any input of preset '{preset_name}' against '{REFERENCE}' ({first})"
    if allow_weak:
        return None
    reasons = sorted(set(verdicts.loc[verdicts["verdict"] == "weak", "why"])) or ["unmatched"]
    return (f"refused: {name} is weak against '{REFERENCE}' on every input of preset '{preset_name}' "
            f"(DESIGN §6: {'; '.join(reasons)}), so its success against a defense would be noise; "
            "--allow-weak runs and files it anyway")


# ----------------------------------------------------------------------------- comparison


def published_board(leaderboard_dir: Path, preset_name: str) -> tuple[str, pd.DataFrame | None]:
    """The preset's published leaderboard (folder named after the preset) and a note saying where it is
    or why there is none."""
    for folder, board in published_boards(Path(leaderboard_dir)):
        if folder == preset_name:
            return f"published run {Path(leaderboard_dir) / folder}", board
    if (Path(leaderboard_dir) / preset_name).is_dir():
        return (f"{Path(leaderboard_dir) / preset_name} exists but its leaderboard.csv is missing or does not pass "
                "the current schema"), None
    return f"no published run of preset '{preset_name}' under {leaderboard_dir}", None


def _board_of(cells: pd.DataFrame) -> pd.DataFrame:
    from bench.results import LEADERBOARD_COLUMNS, aggregate

    return aggregate(cells) if not cells.empty else pd.DataFrame(columns=list(LEADERBOARD_COLUMNS))


def _rows_by_key(board: pd.DataFrame | None) -> dict[tuple[str, ...], pd.Series]:
    if board is None:
        return {}
    return {(r["defense"], r["track"], r["model"], r["release_format"]): r for _, r in board.iterrows()}


def _reference_worst(key: tuple[str, ...], zoo: str, published: dict, others: dict, family: str
                     ) -> tuple[float, float, str, str]:
    """(worst case, worst case of `family`, its attack, where from): the published row of the same zoo, else
    this run's other attacks."""
    row, source = published.get(key), "published"
    if row is None or row["zoo_hash"] != zoo:
        row, source = others.get(key), "this run's other attacks"
    if row is None:
        return math.nan, math.nan, "", "no other attack"
    return (float(row["worst_attack_success"]), float(row.get(f"worst_{family}", math.nan)),
            str(row["worst_attack"]), source)


def _nanmax(one: float, other: float) -> float:
    values = [value for value in (one, other) if not math.isnan(value)]
    return max(values) if values else math.nan


def compare(cells: pd.DataFrame, name: str, family: str, published: pd.DataFrame | None) -> pd.DataFrame:
    """Per defense × track × model × format (not `none`, not n/a): the published (or this run's) worst case,
    this attack's success, and whether it breaks the defense (raises the worst case by > BREAK_MARGIN)."""
    mine = _board_of(cells[cells["attack"] == name])
    others = _rows_by_key(_board_of(cells[cells["attack"] != name]))
    known = _rows_by_key(published)
    rows = []
    for _, row in mine.iterrows():
        if row["defense"] == REFERENCE or row["status"] == "n/a":
            continue
        key = (row["defense"], row["track"], row["model"], row["release_format"])
        worst, family_worst, attack, source = _reference_worst(key, row["zoo_hash"], known, others, family)
        success = float(row["worst_attack_success"])
        status = "weak" if row["status"] == "invalid" else "ok"
        rows.append([*key, worst, family_worst, attack, source, success, status, _nanmax(worst, success),
                     bool(success - worst > BREAK_MARGIN)])
    columns = ["defense", "track", "model", "release_format", "reference_worst", "reference_family_worst",
               "reference_attack", "reference_source", "success", "status", "new_worst", "breaks"]
    return pd.DataFrame(rows, columns=columns)


def broken(comparison: pd.DataFrame) -> list[str]:
    """'defense (model/format: before → after)' for each broken row."""
    return [f"{r['defense']} ({r['model']}/{r['release_format']}: {fmt(r['reference_worst'])} → {fmt(r['success'])})"
            for _, r in comparison[comparison["breaks"]].iterrows()]


# ----------------------------------------------------------------------------- README and filing


def _verdict_table(verdicts: pd.DataFrame) -> list[str]:
    from bench.readme import markdown_table

    rows = [[r["model"], r["release_format"], r["task"], r["members"] or "–", r["verdict"], r["why"] or "–"]
            for _, r in verdicts.iterrows()]
    return markdown_table(["model", "format", "task", "other members", "on none", "why (DESIGN §6)"], rows)


def _comparison_table(comparison: pd.DataFrame, family: str) -> list[str]:
    from bench.readme import markdown_table

    rows = [[r["defense"], r["model"], r["release_format"], fmt(r["reference_worst"]),
             fmt(r["reference_family_worst"]), f"{r['reference_attack'] or '–'} ({r['reference_source']})",
             fmt(r["success"]) if r["status"] == "ok" else "weak on none", fmt(r["new_worst"]),
             "**yes**" if r["breaks"] else "no"] for _, r in comparison.iterrows()]
    header = ["defense", "model", "format", "worst case before", f"before, {family} family", "worst attack (from)",
              "this attack's success", "worst case now", "breaks"]
    return markdown_table(header, rows)


@dataclass
class AttackReport:
    """What the README and submission.json say about one filed attack run."""

    submission: AttackSubmission
    preset: Preset
    verdicts: pd.DataFrame
    comparison: pd.DataFrame
    published_note: str
    problems: list[str]
    failed: pd.DataFrame


def _header(report: AttackReport) -> list[str]:
    sub = report.submission
    return [f"# Attack submission: {sub.name}", "",
            f"- source: {sub.source}",
            f"- class: `{class_name(sub)}` — {sub.cls.description}",
            f"- track: {sub.track}; family: {sub.family} (declared {sub.cls.family})",
            f"- config: `{sub.config_json}`",
            f"- code hash: `{sub.code_hash}` (cache key of its cells)",
            f"- preset: `{report.preset.name}` — {report.preset.description}",
            f"- worst cases before this attack: {report.published_note} (the table's 'from' column says which "
            "source each row uses: the published run of the same zoo, else this run's other attacks)",
            ""]


def _warnings(report: AttackReport) -> list[str]:
    lines = []
    if report.problems:
        lines += ["**NOT VALID.** The run broke DESIGN §6's validity rule, so its numbers are noise:", "",
                  *(f"- {p}" for p in report.problems), ""]
    if not (report.verdicts["verdict"] == "valid").any():
        lines += ["**Weak on every input against `none`** (filed with --allow-weak): its successes are not numbers.", ""]
    if not report.failed.empty:
        lines += [f"**{len(report.failed)} of the attack's cells failed**; first error: "
                  f"`{report.failed['error'].iloc[0]}`", ""]
    return lines


def render_attack_readme(report: AttackReport, run_readme: str) -> str:
    breaks = broken(report.comparison)
    lines = [*_header(report), *_warnings(report), "## Validation on `none`", "",
             "Per input, whether the attack works against the unprotected release (DESIGN §6); only valid inputs",
             "count in any worst case.", "", *_verdict_table(report.verdicts), "", "## Against the defenses", "",
             f"A defense is *broken* when this attack's success exceeds its worst case before it by more than "
             f"{BREAK_MARGIN}. `none` is the reference and is not listed.", "",
             f"**Breaks:** {', '.join(breaks)}." if breaks else "**Breaks no defense** of the preset.", ""]
    lines += (_comparison_table(report.comparison, report.submission.family) if not report.comparison.empty
              else ["No defense of the preset other than `none` supports this attack's track."])
    body = run_readme.split("\n", 1)[1] if "\n" in run_readme else ""
    return "\n".join([*lines, "", "## Results of the run (every attack, this one included)", "", body.lstrip("\n")])


def attack_metadata(report: AttackReport, cells: int) -> dict[str, Any]:
    from bench.versions import versions

    sub = report.submission
    return {"kind": "attack", "name": sub.name, "class": class_name(sub), "source": sub.source,
            "source_kind": sub.kind, "track": sub.track, "family": sub.family, "declared_family": sub.cls.family,
            "config": json.loads(sub.config_json), "code_hash": sub.code_hash, "preset": report.preset.name,
            "valid": not report.problems, "validity_problems": report.problems,
            "valid_on_none": bool((report.verdicts["verdict"] == "valid").any()),
            "on_none": json.loads(report.verdicts.to_json(orient="records")),
            "breaks": sorted(set(report.comparison.loc[report.comparison["breaks"], "defense"])),
            "comparison": json.loads(report.comparison.to_json(orient="records")),
            "worst_cases_from": report.published_note, "cells": cells, "failed_cells": len(report.failed),
            "versions": versions()}


@dataclass
class AttackResult:
    """What `lockbench submit --attack` reports."""

    report: AttackReport
    run_dir: Path
    target: Path | None
    refused: str | None = None

    @property
    def breaks(self) -> list[str]:
        return broken(self.report.comparison)


def run_attack_submission(submission: AttackSubmission, preset: Preset, root: Path, run_dir: Path,
                          leaderboard_dir: Path, folder: str, executor: str = "serial", allow_invalid: bool = False,
                          allow_weak: bool = False, salt: str = "") -> AttackResult:
    """Run the attack against the preset's defenses of its track and file `leaderboard/submissions/FOLDER/`.

    Nothing is filed when the attack is weak on every input (unless `allow_weak`) or the run breaks the
    validity rule (unless `allow_invalid`): those numbers are noise (DESIGN §6).
    """
    from bench.html_report import write_html_index
    from bench.leaderboard import README_FILE
    from bench.results import validity_failures

    cells = run_preset(attack_preset(preset, submission), submission, root, run_dir, executor, salt)
    mine = cells[cells["attack"] == submission.name]
    verdicts = none_verdicts(cells, submission.name)
    note, board = published_board(leaderboard_dir, preset.name)
    problems = validity_failures(cells)
    report = AttackReport(submission, preset, verdicts, compare(cells, submission.name, submission.family, board),
                          note, problems, mine[mine["status"] == "failed"])
    refused = refusal(verdicts, submission.name, preset.name, allow_weak)
    if refused or (problems and not allow_invalid):
        return AttackResult(report, run_dir, None, refused)
    readme = render_attack_readme(report, (run_dir / README_FILE).read_text())
    target = write_submission(Path(leaderboard_dir) / "submissions" / folder, run_dir, readme,
                              attack_metadata(report, len(mine)))
    write_html_index(Path(leaderboard_dir))
    return AttackResult(report, run_dir, target)


# ----------------------------------------------------------------------------- command line


@dataclass
class AttackRequest:
    """The options of `lockbench submit --attack`."""

    spec: str
    name: str | None = None
    preset: str = "default"
    config_json: str | None = None
    executor: str = "serial"
    root: Path | None = None
    out: Path | None = None
    leaderboard_dir: Path = Path("leaderboard")
    validate: bool = True  # run the preset's grid on `none` first (the attack's dry run)
    check_only: bool = False
    allow_invalid: bool = False
    allow_weak: bool = False
    fresh: bool = False


class _Output:
    """The command's two consoles: results on stdout, `error:` lines on stderr (one line each)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.out, self.err = Console(), Console(stderr=True)

    def say(self, text: str) -> None:
        self.out.print(text, highlight=False, soft_wrap=True)

    def fail(self, problems: list[str], code: int = 2) -> int:
        for problem in problems:
            self.err.print(f"[red]error:[/red] {problem}", markup=True, highlight=False, soft_wrap=True)
        return code


def _parse_config(config_json: str | None) -> dict[str, Any]:
    try:
        config = json.loads(config_json) if config_json else {}
    except json.JSONDecodeError as error:
        raise SubmissionError(f"--config is not JSON: {error}") from error
    if not isinstance(config, dict):
        raise SubmissionError(f"--config must be a JSON object, got {config_json}")
    return config


def _prepare(request: AttackRequest, salt: str) -> tuple[AttackSubmission, Preset, str]:
    """Everything that needs no compute: options, preset, the class, its config, its grid."""
    from bench.presets import PresetError, load_preset

    if request.executor not in ("serial", "ray"):
        raise SubmissionError(f"unknown executor '{request.executor}'; choose serial or ray")
    config = _parse_config(request.config_json)
    try:
        preset = load_preset(request.preset)
    except PresetError as error:
        raise SubmissionError(str(error)) from error
    submission = prepare_attack(request.spec, config, salt)
    folder = request.name or submission.name
    if not NAME_PATTERN.match(folder):
        raise SubmissionError(f"--name {folder!r} must be 1-64 letters, digits, '_', '.' or '-'")
    attack_preset(preset, submission)  # name clashes and unknown defenses, before any compute
    return submission, preset, folder


def _print_verdicts(output: _Output, verdicts: pd.DataFrame) -> None:
    for _, r in verdicts.iterrows():
        members = f" with {r['members']}" if r["members"] else ""
        where = f"{r['track']} {r['model']}/{r['release_format']} task {r['task']}{members}"
        colour = "green" if r["verdict"] == "valid" else "yellow"
        output.out.print(f"[{colour}]{r['verdict']}[/{colour}] on none, {where}" + (f": {r['why']}" if r["why"] else ""),
                         highlight=False, soft_wrap=True)


def _usage_hint(submission: AttackSubmission) -> str:
    if submission.kind == "entry point":
        return f"presets can name '{submission.name}' as it is (installed entry point)"
    return (f"to name '{submission.name}' in a preset's {submission.track}_attacks: "
            f"LOCKBENCH_PLUGINS=bench.submit_attack {ATTACKS_ENV}={submission.spec} lockbench run --preset PRESET")


def _report(output: _Output, result: AttackResult, leaderboard_dir: Path) -> int:
    for problem in result.report.problems:
        output.err.print(f"[red]VALIDITY:[/red] {problem}", highlight=False, soft_wrap=True)
    if result.refused:
        return output.fail([result.refused], 1)
    if result.target is None:
        return output.fail([f"the run broke the validity rule, so nothing was filed under {leaderboard_dir}/submissions "
                            "(numbers of an invalid zoo are noise); --allow-invalid files it marked NOT VALID"], 1)
    output.say(f"breaks: {', '.join(result.breaks)}" if result.breaks else "breaks no defense of the preset")
    output.say(f"filed {result.target}" + (" (marked NOT VALID)" if result.report.problems else ""))
    output.say(_usage_hint(result.report.submission))
    failed = result.report.failed
    return output.fail([f"{len(failed)} of the attack's cells failed; see {result.target / 'cells.csv'}"], 1) \
        if len(failed) else 0


def submit_attack_command(request: AttackRequest) -> int:
    """`lockbench submit --attack`: 0 filed (or checked), 1 refused, failed or invalid, 2 the submission or
    its options are wrong (each problem one `error:` line)."""
    from bench.storage import storage_root

    output = _Output()
    salt = str(time.time_ns()) if request.fresh else ""
    try:
        submission, preset, folder = _prepare(request, salt)
    except SubmissionError as error:
        return output.fail(error.problems)
    output.say(f"[green]ok[/green] {submission.cls.__qualname__} '{submission.name}' from {submission.source}: "
               f"track {submission.track}, family {submission.family}, config {submission.config_json}")
    if request.check_only and not request.validate:
        return 0
    root = storage_root(request.root)
    run_dir = (request.out or Path("runs") / "submissions" / folder).resolve()
    try:
        if request.validate:
            cells = run_preset(validation_preset(preset, submission), submission, root,
                               run_dir.with_name(f"{run_dir.name}-none"), request.executor, salt)
            verdicts = none_verdicts(cells, submission.name)
            _print_verdicts(output, verdicts)
            refused = refusal(verdicts, submission.name, preset.name, request.allow_weak)
            if refused:
                return output.fail([refused], 1)
        if request.check_only:
            return 0
        result = run_attack_submission(submission, preset, root, run_dir, request.leaderboard_dir, folder,
                                       request.executor, request.allow_invalid, request.allow_weak, salt)
    except SubmissionError as error:
        return output.fail(error.problems)
    return _report(output, result, request.leaderboard_dir)


_register_listed_on_import()
