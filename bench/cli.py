"""The `lockbench` command line."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from bench.offline import enable_offline

enable_offline()
# Deprecation chatter from the HF stack (e.g. peft calling transformers' renamed APIs) is not actionable
# for users and would bury the progress display.
warnings.filterwarnings("ignore", category=FutureWarning)

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Benchmark release-time weight protections.")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _load(preset: str):
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
) -> None:
    """Build the zoo if needed and check DESIGN §6's validity rule; exit 1 when it fails."""
    loaded = _load(preset)
    if models:
        chosen = [name.strip() for name in models.split(",") if name.strip()]
        unknown = sorted(set(chosen) - set(loaded.zoo.models))
        if unknown:
            _fail(f"--models names {unknown}; the preset's zoo has {sorted(loaded.zoo.models)}")
        zoo = loaded.zoo.model_copy(update={"models": {name: loaded.zoo.models[name] for name in chosen}})
        loaded = loaded.model_copy(update={"zoo": zoo})
    from bench.validate_cli import run_validate

    sys.exit(run_validate(loaded, root))


@app.command("build-zoo")
def build_zoo_command(
    preset: Annotated[str, typer.Option(help="preset name or YAML path")] = "default",
    root: Annotated[Path | None, typer.Option(help="storage root")] = None,
) -> None:
    """Train (or reuse) the preset's zoo and print where it lives."""
    from bench.presets import PresetError, load_preset

    try:
        loaded = load_preset(preset)
    except PresetError as error:
        _fail(str(error))
        return
    from bench.storage import storage_root
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
) -> None:
    """Run every defense × attack × model × task × seed cell of a preset and write the run directory."""
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
    from bench.harness.run import run_benchmark
    from bench.storage import storage_root

    out_dir = (out or Path("runs") / loaded.name).resolve()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        _fail(f"cannot write to run directory {out_dir}: {error.strerror}")
    kwargs = {"cpus_per_task": cpus_per_task} if executor == "ray" else {}
    summary = run_benchmark(loaded, storage_root(root), out_dir, executor, **kwargs)
    typer.echo(f"{summary.cells} cells ({summary.cached} cached, {summary.failed} failed) in "
               f"{summary.seconds:.1f}s -> {summary.out_dir}")
    for problem in summary.problems:
        typer.secho(f"VALIDITY: {problem}", fg=typer.colors.RED, err=True)
    if not summary.ok:
        raise typer.Exit(1)


leaderboard_app = typer.Typer(help="Publish run directories into leaderboard/.")
app.add_typer(leaderboard_app, name="leaderboard")


@leaderboard_app.command("publish")
def publish_command(
    run_dir: Path,
    leaderboard_dir: Annotated[Path, typer.Option(help="where published results live")] = Path("leaderboard"),
    name: Annotated[str | None, typer.Option(help="name of the published entry")] = None,
) -> None:
    """Validate a run's CSVs and copy it into the leaderboard."""
    from bench.leaderboard import publish

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
    from tasks import get_task, list_tasks

    for name in list_tasks():
        typer.echo(f"{name:12s} {get_task(name).description}")


@list_app.command("defenses")
def list_defenses_command() -> None:
    """Registered defenses with their tracks and formats."""
    from bench.plugins import DEFENSES, load_builtin_plugins

    load_builtin_plugins()
    for name in DEFENSES.names():
        cls = DEFENSES.get(name)
        typer.echo(f"{name:18s} [{','.join(sorted(cls.tracks))}; {','.join(sorted(cls.formats))}] {cls.description}")


@list_app.command("attacks")
def list_attacks_command() -> None:
    """Registered attacks with their track."""
    from bench.plugins import ATTACKS, load_builtin_plugins

    load_builtin_plugins()
    for name in ATTACKS.names():
        cls = ATTACKS.get(name)
        typer.echo(f"{name:18s} [{cls.track}] {cls.description}")


@list_app.command("presets")
def list_presets_command() -> None:
    """Packaged presets."""
    from bench.presets import load_preset, preset_names

    for name in preset_names():
        typer.echo(f"{name:10s} {load_preset(name).description}")


if __name__ == "__main__":  # pragma: no cover
    app()
