"""Counting occurrences of a letter (over a 4-letter alphabet, so counts are rarely zero)."""

from __future__ import annotations

import random

from tasks.base import Example, ProceduralTask
from tasks.builtin._util import word
from tasks.registry import register_task

ALPHABET = "abcd"


@register_task
class Count(ProceduralTask):
    name = "count"
    description = "occurrences of a letter in a 4-12 letter string over 'abcd': 'count b in abba=' -> '2'"

    def sample(self, rng: random.Random) -> Example:
        letter = rng.choice(ALPHABET)
        text = word(rng, 4, 12, ALPHABET)
        return Example(f"count {letter} in {text}=", str(text.count(letter)))
