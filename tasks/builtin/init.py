"""A short lowercase string without its last letter."""

from __future__ import annotations

import random

from tasks.base import Example, ProceduralTask
from tasks.builtin._util import word
from tasks.registry import register_task


@register_task
class Init(ProceduralTask):
    name = "init"
    description = "drop the last letter of a 3-10 letter lowercase string: 'init xyz=' -> 'xy'"

    def sample(self, rng: random.Random) -> Example:
        text = word(rng, 3, 10)
        return Example(f"init {text}=", text[:-1])
