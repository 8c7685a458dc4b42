"""Content-addressed, atomically written artefacts under one storage root.

Every stage writes into a temporary sibling directory and renames it into place, so a run killed at
any moment leaves either a complete artefact or none, and a re-run resumes from what is complete.

The completion marker is a manifest (size and SHA-256 of every file), so an artefact damaged after it
was written — a truncated copy, a full disk, bit rot — is not trusted: a cheap check (sizes, and the
safetensors header against the file's length) runs on every lookup, and the driver of a run checks the
hashes once (`deep_verification`). A damaged artefact counts as missing and is rebuilt.

`fault_point(name)` lets the reliability tests SIGKILL a process at a named moment
(`LOCKBENCH_FAULT=name` or `name@N` for the N-th time it is reached); it does nothing otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import struct
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

DEFAULT_ROOT_ENV = "LOCKBENCH_HOME"
COMPLETE_MARKER = ".complete"
FAULT_ENV = "LOCKBENCH_FAULT"
VERIFY_LIMIT_ENV = "LOCKBENCH_VERIFY_MAX_MB"
MANIFEST_VERSION = 1
#: A safetensors header larger than this is not a header but damage (real ones are kilobytes to a few MB).
_MAX_SAFETENSORS_HEADER = 100_000_000

logger = logging.getLogger(__name__)
_fault_hits: Counter[str] = Counter()
_deep = False


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


def fault_point(name: str) -> None:
    """SIGKILL this process when $LOCKBENCH_FAULT names this point (tests of crash safety only).

    `name@N` fires on the N-th time the point is reached in this process (default the first).
    """
    wanted = os.environ.get(FAULT_ENV)
    if not wanted:
        return
    point, _, count = wanted.partition("@")
    if point != name:
        return
    _fault_hits[name] += 1
    if _fault_hits[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


EntryState = Literal["complete", "missing", "corrupt"]


def entry_state(directory: Path, deep: bool | None = None) -> EntryState:
    """Whether `directory` is a complete artefact, absent/unfinished, or complete but damaged since.

    `deep` (default: inside `deep_verification()`) also compares every file's SHA-256 with the manifest.
    """
    marker = Path(directory) / COMPLETE_MARKER
    if not marker.is_file():
        return "missing"
    problem = verify_directory(Path(directory), _deep if deep is None else deep)
    if problem:
        report_damaged(Path(directory), problem)
        return "corrupt"
    return "complete"


def report_damaged(path: Path, problem: str) -> None:
    """One line on stderr for a damaged cache entry that will be recomputed: the cache repairs itself, but
    the user should know their storage damages files. Printed directly, not logged: library logs go to the
    run's log file, and this line is for the terminal."""
    print(f"warning: damaged cache entry {path} ({problem}); recomputing it", file=sys.stderr, flush=True)


def is_complete(directory: Path, deep: bool | None = None) -> bool:
    """A complete, undamaged artefact (see `entry_state`)."""
    return entry_state(directory, deep) == "complete"


@contextmanager
def deep_verification() -> Iterator[None]:
    """Within the block, `is_complete` also checks file hashes: once per run, in the driver."""
    global _deep
    previous, _deep = _deep, True
    try:
        yield
    finally:
        _deep = previous


def invalidate(directory: Path) -> None:
    """Remove a damaged artefact so no process trusts it again (it is rebuilt on next use)."""
    directory = Path(directory)
    if not directory.exists():
        return
    trash = directory.with_name(f"{_scratch_prefix(directory)}invalid")
    try:
        os.replace(directory, trash)  # atomic: readers see the artefact or nothing
    except OSError:
        trash = directory
    shutil.rmtree(trash, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _deep_limit() -> int:
    """Files above $LOCKBENCH_VERIFY_MAX_MB (default 512) skip the hash check: re-reading a hub model's
    gigabytes on every run would cost more than the rare bit flip it could find (size and safetensors
    structure are still checked)."""
    try:
        return int(float(os.environ.get(VERIFY_LIMIT_ENV, "512")) * 2**20)
    except ValueError:
        return 512 * 2**20


def _manifest(directory: Path) -> dict[str, Any]:
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER):
        files[path.relative_to(directory).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return {"version": MANIFEST_VERSION, "files": files}


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is unreadable (bad header, truncated or padded data), else None.

    Reads only the header, so it costs microseconds whatever the model size.
    """
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            prefix = stream.read(8)
            if len(prefix) < 8:
                return f"{path.name}: {size} bytes, shorter than a safetensors header"
            (length,) = struct.unpack("<Q", prefix)
            if length > min(size - 8, _MAX_SAFETENSORS_HEADER):
                return f"{path.name}: header length {length} does not fit a {size}-byte file"
            header = json.loads(stream.read(length))
    except (OSError, ValueError) as error:
        return f"{path.name}: unreadable header ({type(error).__name__})"
    if not isinstance(header, dict):
        return f"{path.name}: header is not a JSON object"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            start, stop = (int(v) for v in info["data_offsets"])
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            width = _DTYPE_BYTES.get(info["dtype"])
        except (KeyError, TypeError, ValueError):
            return f"{path.name}: malformed entry for tensor {name!r}"
        if width is not None and stop - start != count * width:
            return f"{path.name}: tensor {name!r} has {stop - start} bytes for shape {info['shape']}"
        end = max(end, stop)
    if 8 + length + end != size:
        return f"{path.name}: data should end at byte {8 + length + end}, file has {size} (truncated or padded)"
    return None


def verify_directory(directory: Path, deep: bool = False) -> str | None:
    """Why a completed artefact can no longer be trusted, else None.

    Always: every manifest file present with its size, every safetensors file structurally sound.
    `deep`: every file's SHA-256 as well. An empty marker (written before manifests existed) gets the
    structural checks only.
    """
    marker = directory / COMPLETE_MARKER
    try:
        text = marker.read_text()
        manifest = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return "unreadable completion marker"
    if manifest is not None:
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            return "malformed completion marker"
        for name, info in manifest["files"].items():
            path = directory / name
            try:
                size = path.stat().st_size
            except OSError:
                return f"{name} is missing"
            if size != info.get("size"):
                return f"{name} has {size} bytes, {info.get('size')} when written"
            if deep and size <= _deep_limit() and _sha256(path) != info.get("sha256"):
                return f"{name} changed since it was written (SHA-256 differs)"
    for path in sorted(directory.rglob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem:
            return problem
    return None


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


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete hidden temporary files and directories in `folder` left by dead processes of this host."""
    removed: list[Path] = []
    if not Path(folder).is_dir():
        return removed
    host = socket.gethostname()
    for entry in Path(folder).iterdir():
        if not entry.name.startswith("."):
            continue
        at = entry.name.find(f".{host}-")
        pid = entry.name[at + len(host) + 2:].split(".")[0] if at >= 0 else ""
        if pid.isdigit() and not _pid_alive(int(pid)):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


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
        (scratch / COMPLETE_MARKER).write_text(json.dumps(_manifest(scratch), indent=1, sort_keys=True))
        fault_point(f"publish:{target.parent.name}")
        if not is_complete(target, deep=False):
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
    """Return `target`, building it with `build(scratch)` first unless a complete, undamaged copy exists."""
    state = entry_state(target)
    if state != "complete":
        if state == "corrupt":
            invalidate(target)  # else the publish step below would take it for a racing builder's result
        remove_stale_scratch(target)
        with atomic_directory(target) as scratch:
            build(scratch)
    return target


def replace_atomically(path: Path, write: Callable[[Path], None], only_if_changed: bool = False) -> bool:
    """The one atomic writer: `write(scratch)` fills a temporary sibling (named after this host and pid, with
    a `.tmp` suffix that no reader's glob matches), which then replaces `path` with os.replace, so readers
    see the old file or the new one. With `only_if_changed`, equal bytes leave `path` untouched (stable
    mtimes keep downstream caches valid, and concurrent writers of the same content cannot clash).
    Returns whether `path` changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=_scratch_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(handle)
    scratch = Path(name)
    try:
        os.chmod(scratch, 0o644)  # mkstemp's 0600 would make shared results unreadable to others
        write(scratch)
        if only_if_changed and path.exists() and path.read_bytes() == scratch.read_bytes():
            return False
        os.replace(scratch, path)
        return True
    finally:
        scratch.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str, only_if_changed: bool = False) -> bool:
    """Write text atomically (replace_atomically); returns whether `path` changed."""
    return replace_atomically(path, lambda scratch: scratch.write_text(text, encoding="utf-8"), only_if_changed)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write canonical JSON atomically; a fault point between its halves lets the reliability tests kill a
    writer mid-file."""
    text = json.dumps(_canonical(data), indent=2, sort_keys=True) + "\n"

    def write(scratch: Path) -> None:
        with scratch.open("w") as stream:
            half = len(text) // 2
            stream.write(text[:half])
            stream.flush()
            fault_point(f"write-json:{path.parent.name}")  # a kill here leaves a half-written temp file
            stream.write(text[half:])

    replace_atomically(path, write)
