"""The command line of `lockbench submit --attack`."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.commands.submit import (
    NAME_PATTERN,
    SubmissionError,
)
from bench.commands.submit.place import Placement, place
from bench.commands.submit_attack.load import ATTACKS_ENV, AttackSubmission, prepare_attack
from bench.commands.submit_attack.report import AttackResult, run_attack_submission
from bench.commands.submit_attack.runs import attack_preset, none_verdicts, refusal, run_preset, validation_preset
from bench.presets import Preset, PresetError, load_preset
from bench.runtime.runlog import library_output
from bench.runtime.storage import storage_root

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
    leaderboard_dir: Path | None = None  # default: the checkout's leaderboard/ (bench.commands.submit.place)
    validate: bool = True  # run the preset's grid on `none` first (the attack's dry run)
    check_only: bool = False
    allow_invalid: bool = False
    allow_weak: bool = False
    fresh: bool = False


class _Output:
    """The command's two consoles: results on stdout, `error:` lines on stderr (one line each)."""

    def __init__(self) -> None:
        # local: a heavy library that only this code path uses
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
            f"LOCKBENCH_PLUGINS=bench.commands.submit_attack {ATTACKS_ENV}={submission.spec} lockbench run --preset PRESET")


def _report(output: _Output, result: AttackResult, placement: Placement) -> int:
    for problem in result.report.problems:
        output.err.print(f"[red]VALIDITY:[/red] {problem}", highlight=False, soft_wrap=True)
    if result.refused:
        return output.fail([result.refused], 1)
    if result.target is None:
        return output.fail([f"the run broke the validity rule, so nothing was filed under "
                            f"{placement.leaderboard_dir / 'submissions'} "
                            "(numbers of an invalid zoo are noise); --allow-invalid files it marked NOT VALID"], 1)
    output.say(f"breaks: {', '.join(result.breaks)}" if result.breaks else "breaks no defense of the preset")
    output.say(f"filed {result.target}" + (" (marked NOT VALID)" if result.report.problems else ""))
    note = placement.filed_note(result.target)
    if note:
        output.say(note)
    output.say(_usage_hint(result.report.submission))
    failed = result.report.failed
    return output.fail([f"{len(failed)} of the attack's cells failed; see {result.target / 'cells.csv'}"], 1) \
        if len(failed) else 0


def submit_attack_command(request: AttackRequest) -> int:
    """`lockbench submit --attack` (docs/SUBMITTING.md's table): 0 checked, or filed (with --allow-invalid or
    --allow-weak also when marked so); 1 the run finished but is not filed (weak on none, validity rule) or
    lost cells; 2 the submission or its options are wrong (each problem one `error:` line)."""

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
    placement = place(request.leaderboard_dir, request.out, folder)
    run_dir = placement.run_dir
    try:
        with library_output(run_dir):  # library warnings: run_dir/lockbench.log
            return _run(request, output, submission, preset, folder, placement, root, salt)
    except SubmissionError as error:
        return output.fail(error.problems)


def _run(request: AttackRequest, output: _Output, submission: AttackSubmission, preset: Preset, folder: str,
         placement: Placement, root: Path, salt: str) -> int:
    """Validation on none, then the run against the defenses; SubmissionError propagates to the caller."""
    run_dir = placement.run_dir
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
    result = run_attack_submission(submission, preset, root, run_dir, placement.leaderboard_dir, folder,
                                   request.executor, request.allow_invalid, request.allow_weak, salt)
    return _report(output, result, placement)
