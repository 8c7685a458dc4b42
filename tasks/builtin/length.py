"""Length of a lowercase string of 1-20 characters."""

from __future__ import annotations

import random

from tasks.base import Example, ProceduralTask
from tasks.builtin._util import word
from tasks.registry import register_task


@register_task
class Length(ProceduralTask):
    name = "length"
    description = "number of characters of a 1-20 letter lowercase string: 'len abcde=' -> '5'"

    def sample(self, rng: random.Random) -> Example:
        text = word(rng, 1, 20)
        return Example(f"len {text}=", str(len(text)))
