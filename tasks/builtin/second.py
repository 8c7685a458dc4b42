"""Second letter of a short lowercase string."""

from __future__ import annotations

import random

from tasks.base import Example, ProceduralTask
from tasks.builtin._util import word
from tasks.registry import register_task


@register_task
class Second(ProceduralTask):
    name = "second"
    description = "second letter of a 3-8 letter lowercase string: 'second xyz=' -> 'y'"

    def sample(self, rng: random.Random) -> Example:
        text = word(rng, 3, 8)
        return Example(f"second {text}=", text[1])
