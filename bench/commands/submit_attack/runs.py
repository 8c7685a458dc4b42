"""The submitted attack's grids and runs: validation on `none`, then against the preset's defenses."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.commands.submit import (
    SubmissionError,
    init_ray_for,
)
from bench.commands.submit_attack.load import INPUT_KEY, REFERENCE, WORKER_ENV, AttackSubmission, register_attack_submission
from bench.config import ConfigError
from bench.harness.cluster import stop_local_ray
from bench.plugins import DEFENSES, TRACKS
from bench.presets import Preset
from bench.presets.grid import PluginSpec
from bench.report.leaderboard import run_and_write
from bench.results import valid_mask

# ----------------------------------------------------------------------------- grids


def _spec(submission: AttackSubmission):

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


def run_preset(preset: Preset, submission: AttackSubmission, root: Path, run_dir: Path, executor: str,
               salt: str = "") -> pd.DataFrame:
    """Run `preset` with the submission registered here (and in Ray workers); returns the scored cells."""

    register_attack_submission(submission)
    if executor == "ray":
        init_ray_for(submission, salt, WORKER_ENV, "bench.commands.submit_attack.worker_setup")
    try:
        summary = run_and_write(preset, root, run_dir, executor)  # type: ignore[arg-type]
    except ConfigError as error:
        raise SubmissionError(str(error)) from error
    finally:
        _stop_local_ray(executor)
    assert summary.frame is not None
    return summary.frame


def _stop_local_ray(executor: str) -> None:
    """A fully cached run starts no executor, so our own local cluster would outlive it."""
    if executor == "ray":
        stop_local_ray()


def none_verdicts(cells: pd.DataFrame, name: str) -> pd.DataFrame:
    """Per input of the attack `name` on `none`: `verdict` (valid, weak, unmatched, failed, n/a) and `why`."""

    mine = cells[(cells["defense"] == REFERENCE) & (cells["attack"] == name)]
    rows = []
    for key, group in mine.groupby(INPUT_KEY, sort=True):
        ok = group[group["status"] == "ok"]
        if ok.empty:
            failed = group[group["status"] == "failed"]
            verdict, why = ("failed", failed["error"].iloc[0]) if len(failed) else ("n/a", "not applicable")
        elif (valid_mask(ok) & ~ok["weak"]).any():
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
