"""The command line's one-line errors and their exit codes (README, "Exit codes and output").

Why a module of its own: every command maps what went wrong to one `error:` line and one code of the
contract (2 bad input, 1 a failure inside the run), so the mapping is written once here and tested.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import typer

DEBUG_ENV = "LOCKBENCH_DEBUG"


def describe_error(error: BaseException) -> tuple[int, str]:
    """(exit code, one-line message) for an exception that reached the command line.

    2: the input or the environment is wrong (config, plugin names, paths, damaged user files), so the
    message alone must say what to fix. 1: anything else, i.e. a bug or a failure inside the run,
    named by its type; the traceback is one `--debug` away.
    """
    # local: start-up — `lockbench --help` and a bad-input error load no torch
    from pydantic import ValidationError

    from bench.config import ConfigError
    from bench.presets import PresetError, yaml_error_in, yaml_error_line

    if isinstance(error, KeyError) and error.args and str(error.args[0]).startswith("unknown "):
        return 2, str(error.args[0])  # a registry lookup (unknown defense or attack)
    if isinstance(error, PresetError | ConfigError):
        return 2, one_line(str(error))
    if isinstance(error, ValidationError):
        problems = [f"{'.'.join(map(str, item['loc'])) or item['type']}: {item['msg']}" for item in error.errors()]
        return 2, one_line(f"invalid {error.title}: " + "; ".join(problems))
    if isinstance(error, OSError) and error.strerror:
        where = f" {error.filename}" if error.filename else ""
        return 2, one_line(f"{error.strerror}:{where}" if where else error.strerror)
    syntax = yaml_error_in(error)
    if syntax is not None:  # a task YAML (or any YAML the input names) that does not parse
        return 2, one_line(yaml_error_line(syntax))
    detail = one_line(str(error)) or "(no message)"
    return 1, f"{type(error).__name__}: {detail} (run with --debug or {DEBUG_ENV}=1 for the traceback)"


def one_line(text: str, limit: int = 600) -> str:
    line = " | ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def usage_error_type() -> type[Exception]:
    """typer vendors click privately; its UsageError is the base class of the public `typer.BadParameter`."""
    return next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "UsageError")


def describe_usage_error(error: Exception) -> str:
    """One line for a command-line usage error, with a "did you mean" drawn from the options of the command
    that rejected it (a subcommand's own options, not the top level's)."""
    ctx = getattr(error, "ctx", None)
    where = ctx.command_path if ctx is not None else "lockbench"
    option = getattr(error, "option_name", None)
    if option and ctx is not None:
        known = sorted({name for param in ctx.command.params for name in getattr(param, "opts", [])
                        if name.startswith("-")} | {"--help"})
        close = difflib.get_close_matches(option, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f"; its options: {', '.join(known)}"
        return f"{where}: no such option {option}{hint}"
    message = error.format_message() if hasattr(error, "format_message") else str(error)
    return one_line(f"{where}: {message}")


def usage_exit(error: Exception) -> typer.Exit:
    typer.secho(f"error: {describe_usage_error(error)}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def unwritable(folder: Path) -> str | None:
    """Why `folder` could not be created or written, checked without creating it (input is checked before
    anything is written), or None."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None
