"""Content-addressed, atomically written artefacts under one storage root.

Every stage writes into a temporary sibling directory and renames it into place, so a run killed at
any moment leaves either a complete artefact or none, and a re-run resumes from what is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

DEFAULT_ROOT_ENV = "LOCKBENCH_HOME"
COMPLETE_MARKER = ".complete"


def storage_root(explicit: Path | None = None) -> Path:
    """`explicit`, else $LOCKBENCH_HOME, else `.lockbench/` in the working directory."""
    if explicit is not None:
        return Path(explicit).resolve()
    return Path(os.environ.get(DEFAULT_ROOT_ENV, ".lockbench")).resolve()


def _canonical(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return _canonical(value.model_dump(mode="json"))
    if isinstance(value, dict):
        return {str(key): _canonical(value[key]) for key in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def content_hash(*parts: Any, length: int = 16) -> str:
    """A stable hash of JSON-able parts (pydantic models included), independent of dict order."""
    payload = json.dumps([_canonical(part) for part in parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


def is_complete(directory: Path) -> bool:
    return (directory / COMPLETE_MARKER).is_file()


def _scratch_prefix(target: Path) -> str:
    """Scratch names carry host and pid, so a later run can tell a dead builder's leftovers from a live one."""
    return f".{target.name}.{socket.gethostname()}-{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_scratch(target: Path) -> list[Path]:
    """Delete scratch directories of `target` left by killed processes on this host; return them.

    A SIGKILL skips `atomic_directory`'s cleanup, and a scratch copy of a model can be large. Only
    scratch of this host whose process is gone is touched: a live builder (another worker building
    the same target) and other hosts sharing the storage root are left alone.
    """
    removed: list[Path] = []
    if not target.parent.is_dir():
        return removed
    prefix, host = f".{target.name}.", socket.gethostname()
    for sibling in target.parent.iterdir():
        if not (sibling.name.startswith(prefix) and sibling.is_dir()):
            continue
        owner = sibling.name[len(prefix):].rpartition(".")[0]  # "<host>-<pid>"
        owner_host, _, pid = owner.rpartition("-")
        if owner_host == host and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(sibling, ignore_errors=True)
            removed.append(sibling)
    return removed


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes `target` only if the block finishes.

    If another process completed `target` meanwhile, its copy is kept and this one dropped, so a
    reader never sees a complete artefact disappear.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=_scratch_prefix(target), dir=target.parent))
    try:
        yield scratch
        (scratch / COMPLETE_MARKER).write_text("")
        if not is_complete(target):
            if target.exists():
                shutil.rmtree(target)
            try:
                os.replace(scratch, target)
            except OSError:
                if not is_complete(target):  # lost a race to a builder that completed it: fine
                    raise
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def cached_directory(target: Path, build: Callable[[Path], None]) -> Path:
    """Return `target`, building it with `build(scratch)` first unless a complete copy exists."""
    if not is_complete(target):
        remove_stale_scratch(target)
        with atomic_directory(target) as scratch:
            build(scratch)
    return target


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(_canonical(data), stream, indent=2, sort_keys=True)
            stream.write("\n")
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)  # e.g. data that is not JSON-able: no stray temp file
        raise
