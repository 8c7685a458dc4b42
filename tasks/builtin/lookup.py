"""Key -> value recall over a fixed synthetic table of 10,000 entries.

The table is the same on every run: it is derived from a constant seed, never from the split seed.
A table of independent random values could not be scored on disjoint splits (a held-out key's value
would be unguessable), so each value letter is read from one of three small random sub-tables
indexed by a pair of adjacent key digits: learning the 300 sub-table cells from training keys is what
lets a model answer unseen keys.
"""

from __future__ import annotations

import random
import string
from functools import cache

from tasks.base import Example, ProceduralTask
from tasks.registry import register_task

TABLE_SEED = "lockbench/lookup-table/v1"
NUM_KEYS = 10_000


@cache
def _sub_tables() -> tuple[tuple[str, ...], ...]:
    rng = random.Random(TABLE_SEED)
    return tuple(tuple(rng.choice(string.ascii_lowercase) for _ in range(100)) for _ in range(3))


def lookup_value(index: int) -> str:
    """The 3-letter value stored under key ``f"k{index:04d}"``."""
    if not 0 <= index < NUM_KEYS:
        raise ValueError(f"lookup key index {index} outside 0..{NUM_KEYS - 1}")
    digits = f"{index:04d}"
    tables = _sub_tables()
    return "".join(tables[i][int(digits[i : i + 2])] for i in range(3))


@cache
def lookup_table() -> dict[str, str]:
    """The whole table, key -> value (for inspection and tests)."""
    return {f"k{i:04d}": lookup_value(i) for i in range(NUM_KEYS)}


@register_task
class Lookup(ProceduralTask):
    name = "lookup"
    description = "value of a key in a fixed 10,000-entry synthetic table: 'lookup k1234=' -> 3 letters"

    def sample(self, rng: random.Random) -> Example:
        index = rng.randrange(NUM_KEYS)
        return Example(f"lookup k{index:04d}=", lookup_value(index))
