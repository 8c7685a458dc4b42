"""Reversal of a short lowercase string."""

from __future__ import annotations

import random

from tasks.base import Example, ProceduralTask
from tasks.builtin._util import word
from tasks.registry import register_task


@register_task
class Reverse(ProceduralTask):
    name = "reverse"
    description = "reverse a 3-8 letter lowercase string: 'rev abc=' -> 'cba'"

    def sample(self, rng: random.Random) -> Example:
        text = word(rng, 3, 8)
        return Example(f"rev {text}=", text[::-1])
