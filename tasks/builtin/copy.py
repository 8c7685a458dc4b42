"""Copying a short lowercase string verbatim."""

from __future__ import annotations

import random

from tasks.base import Example, ProceduralTask
from tasks.builtin._util import word
from tasks.registry import register_task


@register_task
class Copy(ProceduralTask):
    name = "copy"
    description = "repeat a 3-10 letter lowercase string: 'copy abc=' -> 'abc'"

    def sample(self, rng: random.Random) -> Example:
        text = word(rng, 3, 10)
        return Example(f"copy {text}=", text)
