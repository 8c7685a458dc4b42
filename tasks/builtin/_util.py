"""Small samplers shared by the built-in tasks."""

from __future__ import annotations

import random
import string

LOWER = string.ascii_lowercase


def word(rng: random.Random, min_len: int, max_len: int, alphabet: str = LOWER) -> str:
    """A random string whose length is uniform in [min_len, max_len] (so short and long cases are
    equally common, rather than dominated by the longest length)."""
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(min_len, max_len)))


def number(rng: random.Random, max_digits: int) -> int:
    """A random integer with a uniformly chosen number of digits (1..max_digits), so small numbers
    and carry edge cases are not vanishingly rare."""
    digits = rng.randint(1, max_digits)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)
