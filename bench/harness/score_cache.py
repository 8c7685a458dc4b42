"""Cached JSON records under the storage root: the stage code version, damaged-file handling and score caches.

A lower layer of `bench.harness.stages` and `bench.harness.cell_scores`: both key their entries with
`CODE_VERSION`, and both read records through `read_json_record`, which recomputes a damaged file
rather than trusting it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness.context import HarnessContext
from bench.runtime.storage import content_hash, report_damaged, write_json_atomic

CODE_VERSION = 4  # bump when a stage's semantics change, so caches are not reused across it


def read_json_record(path: Path) -> Any | None:
    """A cached JSON record, or None when it is absent or damaged (then it is recomputed, not trusted)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        report_damaged(path, "not valid JSON")
        path.unlink(missing_ok=True)
        return None


def cached_scores(ctx: HarnessContext, name: str, key: str, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`compute()`'s JSON-able dict, cached under `scores/` by name and a content hash of key and zoo."""
    path = ctx.root / "scores" / f"{name}-{content_hash(key, ctx.zoo.hash, CODE_VERSION, *ctx.cache_salt)}.json"
    cached = read_json_record(path)
    if isinstance(cached, dict):
        return cached
    value = compute()
    write_json_atomic(path, value)
    return value
