"""Caesar shift by one (a->b, ..., z->a) of a short lowercase string."""

from __future__ import annotations

import random

from tasks.base import Example, ProceduralTask
from tasks.builtin._util import LOWER, word
from tasks.registry import register_task

_NEXT = str.maketrans(LOWER, LOWER[1:] + LOWER[0])


@register_task
class Shift(ProceduralTask):
    name = "shift"
    description = "replace each letter of a 3-8 letter string by the next one (z->a): 'shift abz=' -> 'bca'"

    def sample(self, rng: random.Random) -> Example:
        text = word(rng, 3, 8)
        return Example(f"shift {text}=", text.translate(_NEXT))
