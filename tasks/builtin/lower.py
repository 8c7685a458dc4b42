"""Lower-casing a short upper-case string (the inverse map of `upper`)."""

from __future__ import annotations

import random
import string

from tasks.base import Example, ProceduralTask
from tasks.builtin._util import word
from tasks.registry import register_task


@register_task
class Lower(ProceduralTask):
    name = "lower"
    description = "lower-case a 3-10 letter upper-case string: 'lower ABC=' -> 'abc'"

    def sample(self, rng: random.Random) -> Example:
        text = word(rng, 3, 10, string.ascii_uppercase)
        return Example(f"lower {text}=", text.lower())
