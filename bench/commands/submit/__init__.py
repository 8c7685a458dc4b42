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

from bench.commands.submit.loading import (
    DRY_RUN_PRESET,
    SUBMISSION_FILE,
    WORKER_ENV,
    Submission,
    SubmissionError,
    attribute_of,
    check_config,
    code_hash,
    load_defense,
    load_file,
    one_line,
    prepare,
    register,
    register_from_env,
    renamed,
    resolve_plugin,
    worker_setup,
)
from bench.commands.submit.running import (
    SubmitResult,
    class_name,
    dry_run,
    fmt,
    init_ray_for,
    published_boards,
    rank_rows,
    render_submission_readme,
    run_submission,
    submit_command,
    with_submission,
    write_submission,
)
from bench.plugins.checks import NAME_PATTERN

__all__ = [
    "DRY_RUN_PRESET", "NAME_PATTERN", "SUBMISSION_FILE", "WORKER_ENV", "Submission", "SubmissionError",
    "SubmitResult", "attribute_of", "check_config", "class_name", "code_hash", "dry_run", "fmt", "init_ray_for",
    "load_defense", "load_file", "one_line", "prepare", "published_boards", "rank_rows", "register",
    "register_from_env", "render_submission_readme", "renamed", "resolve_plugin", "run_submission", "submit_command",
    "with_submission", "worker_setup", "write_submission",
]
