"""Content-addressed, atomically written artefacts under one storage root.

Every stage writes into a temporary sibling directory and renames it into place, so a run killed at
any moment leaves either a complete artefact or none, and a re-run resumes from what is complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary directory that becomes `target` only if the block finishes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield scratch
        (scratch / COMPLETE_MARKER).write_text("")
        if target.exists():
            shutil.rmtree(target)
        os.replace(scratch, target)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)


def cached_directory(target: Path, build: Callable[[Path], None]) -> Path:
    """Return `target`, building it with `build(scratch)` first unless a complete copy exists."""
    if not is_complete(target):
        with atomic_directory(target) as scratch:
            build(scratch)
    return target


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        json.dump(_canonical(data), stream, indent=2, sort_keys=True)
        stream.write("\n")
    os.replace(scratch, path)
