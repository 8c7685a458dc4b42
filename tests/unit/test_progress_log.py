"""Progress reaches a log: plain lines about once a minute when stdout is not a terminal."""

from __future__ import annotations

import io
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from bench.runtime.progress_log import PlainProgress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _bars() -> Progress:
    progress = Progress(console=Console(file=io.StringIO()))
    progress.add_task("releases (4)", total=4, completed=1, cached=1, failed=0)
    progress.add_task("cells (8)", total=8, completed=0, cached=0, failed=0)
    return progress


def test_plain_lines_name_each_stage_with_done_total_and_eta() -> None:
    progress = _bars()
    stream = io.StringIO()
    with progress, PlainProgress(progress, stream, interval=0.05) as plain:
        releases, cells = progress.task_ids
        progress.update(releases, advance=3, failed=1)
        progress.update(cells, advance=2)
        time.sleep(0.3)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2, lines  # one per interval
    last = lines[-1]
    assert last.startswith("progress 0:00:00: releases 4/4 (cached 1, failed 1, done); cells 2/8 (cached 0, "
                           "failed 0, ETA "), last
    assert plain.enabled


def test_no_plain_lines_on_a_terminal() -> None:
    progress = _bars()
    stream = _Terminal()
    with progress, PlainProgress(progress, stream, interval=0.01) as plain:
        time.sleep(0.1)
    assert not plain.enabled and stream.getvalue() == ""


def test_about_once_a_minute_by_default() -> None:
    plain = PlainProgress(_bars(), io.StringIO())
    assert plain.interval == 60.0
    assert plain.line().startswith("progress 0:00:00: releases 1/4 (cached 1, failed 0, ETA ?); cells 0/8")


def test_a_damaged_cache_entry_that_is_recomputed_is_reported_in_one_line(tmp_path, capsys) -> None:
    from bench.runtime.storage import cached_directory

    target = tmp_path / "cells" / "entry"
    builds: list[int] = []

    def build(scratch) -> None:
        builds.append(1)
        (scratch / "record.json").write_text('{"status": "ok", "value": 1}')

    cached_directory(target, build)
    (target / "record.json").write_text('{"status": "ok"')  # truncated
    cached_directory(target, build)
    assert len(builds) == 2, "the damaged entry was recomputed"
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"warning: damaged cache entry {target} (record.json has 15 bytes, 28 when written); "
                     "recomputing it"]
    cached_directory(target, build)
    assert len(builds) == 2 and capsys.readouterr().err == "", "an intact entry is neither rebuilt nor reported"


def test_a_damaged_cell_record_is_reported_in_one_line_and_recomputed(tmp_path: Path, capsys) -> None:
    from bench.harness.score_cache import read_json_record

    path = tmp_path / "cell.json"
    path.write_text('{"status": "ok", "merged_')  # cut short, as a kill mid-write on a non-atomic store would
    assert read_json_record(path) is None and not path.exists()
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("warning: damaged cache entry") and str(path) in lines[0]
    assert read_json_record(path) is None and capsys.readouterr().err == ""  # absent is not damaged
