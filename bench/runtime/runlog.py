"""Library chatter goes to the run's log file, not the terminal.

Why: a run's terminal output is the progress display, the summary and one line per problem. Warnings of
the libraries underneath (transformers, lm-eval, datasets, peft, …, and Python `warnings`) are rarely
actionable for a user and buried that output, but they can matter when a number looks wrong, so they are
kept in `<run directory>/lockbench.log` instead of being dropped.

The run directory is created only after the input is checked (nothing is written for bad input), so
records that arrive earlier wait in memory and are written once the folder exists.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG_FILE = "lockbench.log"
#: The run log's line format (Ray's `ray.init` re-formats the handlers of its logger with the format it is
#: given: `start_ray` gives it this one).
LOG_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"
#: Loggers of the libraries lockbench drives; `py.warnings` receives Python warnings (logging.captureWarnings).
LIBRARY_LOGGERS = ("py.warnings", "transformers", "datasets", "lm_eval", "lm-eval", "peft", "accelerate",
                   "huggingface_hub", "mergekit", "torch", "urllib3", "filelock", "fsspec", "optuna", "ray")


#: The handler of the innermost open `library_output` block (empty outside any block).
_active: list[RunLogHandler] = []


class RunLogHandler(logging.Handler):
    """Appends records to `path`; holds them in memory while `path`'s folder does not exist yet."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.WARNING)
        self.path = path
        self.pending: list[str] = []
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.pending.append(self.format(record))
            self.flush()
        except Exception:  # a log that cannot be written must never fail the run
            self.handleError(record)

    def flush(self) -> None:
        if self.pending and self.path.parent.is_dir():
            with self.path.open("a", encoding="utf-8") as log:
                log.write("\n".join(self.pending) + "\n")
            self.pending.clear()


def reclaim(name: str) -> None:
    """Inside a `library_output` block, send logger `name` to the run's log again. Why: a library that
    installs its own terminal handler when it is first imported or started (Ray, at `import ray` and
    `ray.init`) would otherwise print past the block."""
    if _active:
        logger = logging.getLogger(name)
        logger.handlers = [_active[-1]]
        logger.propagate = False


@contextmanager
def library_output(run_dir: Path) -> Iterator[RunLogHandler]:
    """Within the block, library log records and Python warnings go to `run_dir/lockbench.log` only."""
    handler = RunLogHandler(Path(run_dir) / LOG_FILE)
    saved = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        logger.handlers = [handler]
        logger.propagate = False
    logging.captureWarnings(True)
    _active.append(handler)
    try:
        yield handler
    finally:
        _active.remove(handler)
        logging.captureWarnings(False)
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate
        handler.flush()
        handler.close()
