"""Doubling every letter of a short lowercase string."""

from __future__ import annotations

import random

from tasks.base import Example, ProceduralTask
from tasks.builtin._util import word
from tasks.registry import register_task


@register_task
class Dup(ProceduralTask):
    name = "dup"
    description = "double each letter of a 3-8 letter lowercase string: 'dup abc=' -> 'aabbcc'"

    def sample(self, rng: random.Random) -> Example:
        text = word(rng, 3, 8)
        return Example(f"dup {text}=", "".join(c + c for c in text))
