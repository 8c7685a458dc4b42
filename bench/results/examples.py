"""Per-example test values, stored compactly in a cell record so that a bootstrap can resample test examples.

A cell's `examples` column is JSON `{role: {task: code}}`: the roles a merge cell records are `merged` (the
attacked model), `base` (the public base), `release` (the release itself, on T_p) and `experts` (the public
experts of the other members); a fine-tuning cell records `before` and one role per budget tag (`b0125`,
`b025`, `b05`, `b1`). A code is `"<n>:<hex>"`, the n 0/1 values packed eight to a byte; only binary values
are stored (a metric with other values gets no code, and a bootstrap holds that accuracy fixed).

Written here rather than with a library: the format is a dozen lines over `numpy.packbits`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bench.results.columns import json_cell


def encode(values: Sequence[float]) -> str:
    """`"<n>:<hex>"` for 0/1 values; "" when there are none or any is not 0 or 1."""
    array = np.asarray(values, dtype="float64")
    if array.size == 0 or not np.isin(array, (0.0, 1.0)).all():
        return ""
    return f"{array.size}:{np.packbits(array.astype(bool)).tobytes().hex()}"


def decode(code: str) -> np.ndarray | None:
    """The 0/1 values of a code as float64, or None for an empty code."""
    if not code:
        return None
    size, _, text = code.partition(":")
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[: int(size)]
    return bits.astype("float64")


def vector(examples: object, role: str, task: str) -> np.ndarray | None:
    """The decoded values of `role` on `task` from a cell's `examples` JSON, or None when not recorded."""
    return decode(json_cell(examples).get(role, {}).get(task, ""))
