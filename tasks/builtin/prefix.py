"""The first two letters of a short lowercase string."""

from __future__ import annotations

import random

from tasks.base import Example, ProceduralTask
from tasks.builtin._util import word
from tasks.registry import register_task


@register_task
class Prefix(ProceduralTask):
    name = "prefix"
    description = "first two letters of a 3-8 letter lowercase string: 'prefix xyz=' -> 'xy'"

    def sample(self, rng: random.Random) -> Example:
        text = word(rng, 3, 8)
        return Example(f"prefix {text}=", text[:2])
