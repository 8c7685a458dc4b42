"""The owner's secret (DESIGN §2): what re-parameterisation defenses draw their keys from.

A key drawn from the job seed would be no key at all: attacks see the seed (`PublicView.seed`) and the
defense's code, so they could redraw it. Instead each storage root holds one random 64-bit secret, created
once with `secrets.randbits(64)` in `<root>/owner.secret` (mode 0600) and never named by anything an attack
is handed; each job's secret is a hash of it and the job's key, so a root reproduces its own releases
while two roots draw different keys.

The file sits at the root rather than under `private/`: `private/` is a cache stage that tests and
`bench.perf` delete between runs whose cells they compare, and a regenerated secret would change every
keyed release between them. Deleting `owner.secret` changes the keys of releases built afterwards.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from pathlib import Path

SECRET_FILE = "owner.secret"


def root_secret(root: Path) -> int:
    """The storage root's secret, created on first use (atomically: concurrent workers agree on one)."""
    path = Path(root) / SECRET_FILE
    value = _read(path)
    if value is not None:
        return value
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=f"{SECRET_FILE}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w") as stream:
            stream.write(f"{secrets.randbits(64)}\n")
            stream.flush()
            os.fsync(stream.fileno())
        try:
            os.link(scratch, path)  # fails if another process created it first: then theirs is the secret
        except FileExistsError:
            pass
    finally:
        Path(scratch).unlink(missing_ok=True)
    value = _read(path)
    if value is None:
        raise RuntimeError(f"{path} is not a secret written by lockbench; delete it to draw a new one")
    return value


def owner_secret(root: Path, job_key: str) -> int:
    """One job's secret: 63 bits of SHA-256 over the root's secret and the job's key."""
    digest = hashlib.sha256(f"lockbench-owner-secret:{root_secret(root)}:{job_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _read(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None
