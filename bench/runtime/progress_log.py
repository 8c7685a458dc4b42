"""Progress that reaches a log: plain lines from the run's progress display when stdout is no terminal.

Why: rich draws its bars only on a terminal; sent to a file or a CI log it prints their final state alone,
so a long run showed nothing between its start and its summary. When stdout is not a terminal, one plain
line per stage (done / total, cached, failed, ETA) is printed about once a minute.
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import timedelta
from types import TracebackType
from typing import TextIO

from rich.progress import Progress

#: Seconds between two plain lines.
INTERVAL = 60.0


def _clock(seconds: float | None) -> str:
    return "?" if seconds is None else str(timedelta(seconds=round(seconds)))


class PlainProgress:
    """Prints `progress`'s state as plain lines to `stream` every `interval` seconds, from a daemon thread,
    when `stream` is not a terminal (on a terminal the bars say it already)."""

    def __init__(self, progress: Progress, stream: TextIO | None = None, interval: float = INTERVAL) -> None:
        self.progress, self.stream, self.interval = progress, stream or sys.stdout, interval
        self.enabled = not (hasattr(self.stream, "isatty") and self.stream.isatty())
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def line(self) -> str:
        """`progress 0:01:00: releases 12/20 (cached 3, failed 0, ETA 0:00:40); cells 5/40 (…)`."""
        stages = []
        for task in self.progress.tasks:
            total = int(task.total) if task.total is not None else "?"
            fields = ", ".join(f"{key} {value}" for key, value in task.fields.items())
            eta = "done" if task.finished else f"ETA {_clock(task.time_remaining)}"
            stages.append(f"{task.description.split(' (')[0]} {int(task.completed)}/{total} "
                          f"({fields + ', ' if fields else ''}{eta})")
        return f"progress {_clock(time.monotonic() - self.started)}: " + "; ".join(stages)

    def _say(self) -> None:
        try:
            print(self.line(), file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed log must not fail the run
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._say()

    def __enter__(self) -> PlainProgress:
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="lockbench-plain-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._thread is not None:  # no closing line: the command prints its own summary
            self._stop.set()
            self._thread.join()
