"""The `lockbench` command line."""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from bench.commands.errors import DEBUG_ENV, describe_error, one_line, unwritable, usage_error_type, usage_exit
from bench.runtime.offline import enable_offline

enable_offline()
# Deprecation chatter from the HF stack (e.g. peft calling transformers' renamed APIs) is not actionable
# for users and would bury the progress display.
warnings.filterwarnings("ignore", category=FutureWarning)



def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


class _Commands(TyperGroup):
    """Top-level error handler: an exception becomes one `error: …` line on stderr and exit code 2 or 1
    (see `describe_error`), not a traceback; `--debug` or LOCKBENCH_DEBUG=1 re-raises it instead. Usage
    errors (unknown options, missing arguments) of the top level and of every subcommand are one line and
    exit code 2 alike, instead of a usage box at the top and a traceback below."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except usage_error_type() as error:
            if type(error).__name__ == "NoArgsIsHelpError":
                raise  # `lockbench` alone prints its help
            raise usage_exit(error) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except usage_error_type() as error:
            if type(error).__name__ == "NoArgsIsHelpError":
                raise
            raise usage_exit(error) from None
        except Exception as error:
            if _debug():
                raise
            code, message = describe_error(error)
            typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code) from None


app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmark release-time weight protections.",
                  cls=_Commands)


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help=f"show tracebacks (same as {DEBUG_ENV}=1)")] = False,
) -> None:
    """Benchmark release-time weight protections."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _load(preset: str):
    # local: start-up — `lockbench --help` and a bad-input error load no torch
    from bench.presets import PresetError, load_preset

    try:
        return load_preset(preset)
    except PresetError as error:
        _fail(str(error))


@app.command()
def validate(
    preset: Annotated[str, typer.Option(help="preset name or YAML path")] = "default",
    root: Annotated[Path | None, typer.Option(help="storage root (default $LOCKBENCH_HOME or .lockbench)")] = None,
    models: Annotated[str | None, typer.Option(help="only these zoo models, e.g. llama,gpt2")] = None,
    executor: Annotated[str, typer.Option(help="serial or ray, for the grid's attacks against none")] = "serial",
) -> None:
    """Build the zoo if needed and check DESIGN §6's validity rule; exit 1 when it fails."""
    if executor not in ("serial", "ray"):
        _fail(f"unknown executor '{executor}'; use serial or ray")
    loaded = _load(preset)
    if models:
        chosen = [name.strip() for name in models.split(",") if name.strip()]
        unknown = sorted(set(chosen) - set(loaded.zoo.models))
        if unknown:
            _fail(f"--models names {unknown}; the preset's zoo has {sorted(loaded.zoo.models)}")
        zoo = loaded.zoo.model_copy(update={"models": {name: loaded.zoo.models[name] for name in chosen}})
        loaded = loaded.model_copy(update={"zoo": zoo})
    # local: start-up — `lockbench --help` and a bad-input error load no torch
    from bench.commands.validate_cli import run_validate
    from bench.runtime.runlog import library_output
    from bench.runtime.storage import storage_root

    with library_output(storage_root(root) / "validate"):  # library chatter -> <root>/validate/lockbench.log
        code = run_validate(loaded, root, executor)
    sys.exit(code)


@app.command("build-zoo")
def build_zoo_command(
    preset: Annotated[str, typer.Option(help="preset name or YAML path")] = "default",
    root: Annotated[Path | None, typer.Option(help="storage root")] = None,
) -> None:
    """Train (or reuse) the preset's zoo and print where it lives."""
    # local: start-up — `lockbench --help` and a bad-input error load no torch
    from bench.presets import PresetError, load_preset

    try:
        loaded = load_preset(preset)
    except PresetError as error:
        _fail(str(error))
        return
    from bench.runtime.storage import storage_root
    from bench.zoo.build import build_zoo

    zoo = build_zoo(loaded.zoo, storage_root(root))
    for name, paths in zoo.paths.items():
        typer.echo(f"{name}: base {paths.base}")


@app.command()
def run(
    preset: Annotated[str, typer.Option(help="preset name or YAML path")] = "default",
    executor: Annotated[str, typer.Option(help="serial or ray")] = "serial",
    out: Annotated[Path | None, typer.Option(help="run directory (default runs/<preset>)")] = None,
    root: Annotated[Path | None, typer.Option(help="storage root")] = None,
    seeds: Annotated[str | None, typer.Option(help="override the grid's seeds, e.g. 0,1")] = None,
    cpus_per_task: Annotated[int, typer.Option(help="ray: CPUs per cell")] = 1,
    gpus_per_task: Annotated[float, typer.Option(help="ray: GPUs per cell (with LOCKBENCH_DEVICE=cuda)")] = 0.0,
    strict: Annotated[bool, typer.Option("--strict/--no-strict", help="exit 1 when the run breaks the validity rule "
                                         "(DESIGN §6); --no-strict only reports it (plumbing presets such as micro, "
                                         "which always break it)")] = True,
    validate_first: Annotated[bool, typer.Option("--validate", help="first `lockbench validate` the preset in this "
                                                 "process (on Ray: the same cluster), and run nothing when it "
                                                 "fails (exit 1)")] = False,
) -> None:
    """Run every defense × attack × model × task × seed cell of a preset and write the run directory.

    Exit 0: every cell ran and the validity rule holds (or --no-strict); 1: cells failed, or the rule broke
    under --strict, or --validate's validation failed (then nothing runs); 2: bad input (nothing is written
    then)."""
    loaded = _load(preset)
    if executor not in ("serial", "ray"):
        _fail(f"unknown executor '{executor}'; choose serial or ray")
    if loaded.grid is None:
        _fail(f"preset '{loaded.name}' has no grid section")
    if seeds:
        try:
            seed_list = [int(part) for part in seeds.split(",")]
        except ValueError:
            _fail(f"--seeds takes comma-separated integers, got '{seeds}'")
        loaded = loaded.model_copy(update={"grid": loaded.grid.model_copy(update={"seeds": seed_list})})
    # local: start-up — `lockbench --help` and a bad-input error load no torch
    from bench.report.leaderboard import run_and_write
    from bench.runtime.runlog import library_output
    from bench.runtime.storage import storage_root

    out_dir = (out or Path("runs") / loaded.name).resolve()
    problem = unwritable(out_dir)
    if problem:
        _fail(f"cannot write to run directory {out_dir}: {problem}")
    kwargs = {"cpus_per_task": cpus_per_task, "gpus_per_task": gpus_per_task} if executor == "ray" else {}

    from bench.harness.cluster import ray_session

    # one cluster for validation and the run; library chatter of both goes to the run's log
    with ray_session() if executor == "ray" else nullcontext(), library_output(out_dir):
        if validate_first:
            from bench.commands.validate_cli import run_validate

            code = run_validate(loaded, root, executor)
            if code:
                typer.secho("error: validation failed (above); nothing was run", fg=typer.colors.RED, err=True)
                raise typer.Exit(code)
        summary = run_and_write(loaded, storage_root(root), out_dir, executor, **kwargs)
    typer.echo(f"{summary.cells} cells ({summary.cached} cached, {summary.failed} failed) in "
               f"{summary.seconds:.1f}s -> {summary.out_dir}")
    label = "VALIDITY" if strict else "VALIDITY (not enforced: --no-strict)"
    for problem in summary.problems:
        typer.secho(f"{label}: {problem}", fg=typer.colors.RED if strict else typer.colors.YELLOW, err=True)
    if summary.failed:
        typer.secho(f"error: {summary.failed} of {summary.cells} cells failed (first: "
                    f"{one_line(summary.first_error, 300)}); details in {summary.out_dir / 'cells.csv'}",
                    fg=typer.colors.RED, err=True)
    elif summary.problems and strict:
        typer.secho("error: the run broke the validity rule (above); --no-strict reports it without failing",
                    fg=typer.colors.RED, err=True)
    if summary.failed or (summary.problems and strict):
        raise typer.Exit(1)


@app.command()
def submit(
    defense: Annotated[str, typer.Argument(metavar="PLUGIN", help="a .py file, an installed 'lockbench.defenses' "
                                                "(with --attack: 'lockbench.attacks') entry point, or MODULE; "
                                                "append :ClassName to pick one class")],
    name: Annotated[str | None, typer.Option(help="folder under leaderboard/submissions (default: its name)")] = None,
    preset: Annotated[str, typer.Option(help="preset name or YAML path")] = "default",
    config: Annotated[str | None, typer.Option(help="the plugin's Config as a JSON object")] = None,
    executor: Annotated[str, typer.Option(help="serial or ray")] = "serial",
    root: Annotated[Path | None, typer.Option(help="storage root")] = None,
    out: Annotated[Path | None, typer.Option(help="run directory (default runs/submissions/NAME beside the "
                                                  "leaderboard's checkout, else in ./)")] = None,
    leaderboard_dir: Annotated[Path | None, typer.Option(help="where results are filed (default: leaderboard/ of "
                                                         "the lockbench checkout that runs, else ./leaderboard)")] = None,
    dry_run: Annotated[bool, typer.Option(help="call protect once per track on the micro zoo first (--attack: "
                                               "run the preset on none first)")] = True,
    check: Annotated[bool, typer.Option("--check", help="only validate (and dry-run); run nothing")] = False,
    allow_invalid: Annotated[bool, typer.Option(help="file results of a run that breaks the validity rule, "
                                                     "marked NOT VALID (plumbing presets such as micro)")] = False,
    fresh: Annotated[bool, typer.Option(help="recompute the submission's cells even if its code is unchanged")] = False,
    attack: Annotated[bool, typer.Option("--attack", help="PLUGIN is an attack: validate it on none (its dry run), "
                                                          "run it against the preset's defenses, file whether it "
                                                          "breaks them")] = False,
    allow_weak: Annotated[bool, typer.Option(help="--attack: run and file an attack that is weak on none on every "
                                                  "input (plumbing presets such as micro)")] = False,
) -> None:
    """Validate a defense (or, with --attack, an attack), run a preset for it, file leaderboard/submissions/NAME."""
    if attack:
        # local: start-up — `lockbench --help` and a bad-input error load no torch
        from bench.commands.submit_attack import AttackRequest, submit_attack_command

        code = submit_attack_command(AttackRequest(defense, name, preset, config, executor, root, out, leaderboard_dir,
                                                   dry_run, check, allow_invalid, allow_weak, fresh))
        if code:
            raise typer.Exit(code)
        return
    if allow_weak:
        typer.echo("error: --allow-weak applies only to attack submissions (--attack)", err=True)
        raise typer.Exit(2)
    from bench.commands.submit import submit_command

    code = submit_command(defense, name, preset, config, executor, root, out, leaderboard_dir, dry_run, check,
                          allow_invalid, fresh)
    if code:
        raise typer.Exit(code)


@app.command()
def regress(
    baseline: Annotated[Path | None, typer.Option(help="baseline cells CSV to compare with")] = None,
    preset: Annotated[str, typer.Option(help="preset name or YAML path")] = "smoke",
    tolerance: Annotated[float, typer.Option(help="allowed rise of attack success / fall of utility")] = 0.05,
    out: Annotated[Path | None, typer.Option(help="run directory (default runs/regress-PRESET)")] = None,
    root: Annotated[Path | None, typer.Option(help="storage root")] = None,
    executor: Annotated[str, typer.Option(help="serial or ray")] = "serial",
    run_dir: Annotated[Path | None, typer.Option(help="compare this finished run instead of running")] = None,
    write_baseline: Annotated[Path | None, typer.Option(help="write the run's cells as a new baseline")] = None,
    allow_invalid: Annotated[bool, typer.Option(help="report validity failures without failing")] = False,
) -> None:
    """CI gate: re-run a preset; exit 1 with a table when attacks got stronger or utility fell vs a baseline."""
    # local: start-up — `lockbench --help` and a bad-input error load no torch
    from bench.commands.regress import regress_command

    code = regress_command(baseline, preset, tolerance, out, root, executor, run_dir, write_baseline, allow_invalid)
    if code:
        raise typer.Exit(code)


leaderboard_app = typer.Typer(help="Publish run directories into leaderboard/.")
app.add_typer(leaderboard_app, name="leaderboard")


@leaderboard_app.command("publish")
def publish_command(
    run_dir: Path,
    leaderboard_dir: Annotated[Path, typer.Option(help="where published results live")] = Path("leaderboard"),
    name: Annotated[str | None, typer.Option(help="name of the published entry")] = None,
) -> None:
    """Validate a run's CSVs and copy it into the leaderboard."""
    # local: start-up — `lockbench --help` and a bad-input error load no torch
    from bench.report.leaderboard import publish

    try:
        target = publish(run_dir, leaderboard_dir, name)
    except Exception as error:
        _fail(str(error))
    typer.echo(f"published {run_dir} -> {target}")


list_app = typer.Typer(help="List registered plugins, tasks and presets.")
app.add_typer(list_app, name="list")


@list_app.command("tasks")
def list_tasks_command() -> None:
    """Registered procedural tasks."""
    # local: start-up — `lockbench --help` and a bad-input error load no torch
    from tasks import get_task, list_tasks

    for name in list_tasks():
        typer.echo(f"{name:12s} {get_task(name).description}")


@list_app.command("defenses")
def list_defenses_command() -> None:
    """Registered defenses with their tracks and formats."""
    # local: start-up — `lockbench --help` and a bad-input error load no torch
    from bench.plugins import DEFENSES

    for name in DEFENSES.names():
        cls = DEFENSES.get(name)
        typer.echo(f"{name:18s} [{','.join(sorted(cls.tracks))}; {','.join(sorted(cls.formats))}] {cls.description}")


@list_app.command("architectures")
def list_architectures_command() -> None:
    """Zoo architecture families, their LoRA targets and the defenses that apply to each."""
    # local: start-up — `lockbench --help` and a bad-input error load no torch
    from bench.plugins import DEFENSES
    from bench.zoo.architectures import FAMILIES, LORA_TARGETS, TRANSFORMER_FAMILIES

    for family in FAMILIES:
        kind = "transformer" if family in TRANSFORMER_FAMILIES else "state-space model"
        applies = [name for name in DEFENSES.names()
                   if any(DEFENSES.get(name)().supports(track, fmt, family)
                          for track in DEFENSES.get(name).tracks for fmt in DEFENSES.get(name).formats)]
        missing = sorted(set(DEFENSES.names()) - set(applies))
        typer.echo(f"{family:8s} [{kind}] LoRA on {', '.join(LORA_TARGETS[family])}; defenses: {', '.join(applies)}"
                   + (f"; N/A: {', '.join(missing)}" if missing else ""))


@list_app.command("attacks")
def list_attacks_command() -> None:
    """Registered attacks with their track and family (DESIGN §4; a fixed merge may refine it per config)."""
    # local: start-up — `lockbench --help` and a bad-input error load no torch
    from bench.plugins import ATTACKS

    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        typer.echo(f"{name:22s} [{cls.track}; {cls.family}] {cls.description}")


@list_app.command("presets")
def list_presets_command() -> None:
    """Packaged presets."""
    # local: start-up — `lockbench --help` and a bad-input error load no torch
    from bench.presets import load_preset, preset_names

    for name in preset_names():
        typer.echo(f"{name:10s} {load_preset(name).description}")


def main() -> None:
    """Console entry point: `app` with its top-level error handler (`_Commands`)."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
