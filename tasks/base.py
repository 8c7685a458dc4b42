"""Core types of a procedural task: one example, the task interface, the split names and sizes.

Tasks are generated, not downloaded, so the suite runs offline and every split is reproducible from a
seed. The constraints on examples exist because the models are tiny character-level LMs with short
contexts, and because scoring relies on "answer then newline" being the whole continuation.
"""

from __future__ import annotations

import abc
import random
import string
from dataclasses import dataclass
from typing import ClassVar

import pydantic

SPLITS: tuple[str, ...] = ("owner_train", "attacker_train", "attacker_val", "test")
"""The four disjoint splits: the owner trains on the first, attackers tune on the next two, and
`test` is used only for scoring (DESIGN.md §2)."""

MAX_EXAMPLE_CHARS = 40
"""Upper bound on len(prompt) + len(answer), so any tiny model's context holds an example."""

_PRINTABLE = frozenset(c for c in string.printable if c not in "\t\n\r\x0b\x0c")


@dataclass(frozen=True)
class Example:
    """One prompt and its expected completion (scored as completion + newline)."""

    prompt: str
    answer: str


def example_problems(example: Example, max_chars: int | None = MAX_EXAMPLE_CHARS, ascii_only: bool = True
                     ) -> list[str]:
    """Why an example breaks the constraints (empty when it is valid); document tasks (tasks.documents) lift
    the length cap and the ASCII rule, which exist for the tiny zoo's character tokenizer.

    Used by split building so a faulty (e.g. third-party) task fails loudly instead of yielding
    unscoreable data.
    """
    problems = []
    for field, text in (("prompt", example.prompt), ("answer", example.answer)):
        if not isinstance(text, str) or not text:
            problems.append(f"{field} must be a non-empty string")
            continue
        bad = sorted({c for c in text if c not in _PRINTABLE}) if ascii_only else []
        if bad:
            problems.append(f"{field} has non-printable or non-ASCII characters {bad!r}")
    if not problems:
        if example.answer[0].isspace():
            problems.append("answer starts with whitespace")
        total = len(example.prompt) + len(example.answer)
        if max_chars is not None and total > max_chars:
            problems.append(f"prompt+answer is {total} characters (> {max_chars})")
    return problems


class ProceduralTask(abc.ABC):
    """A task defined by a sampler of examples.

    Subclasses set `name` and a one-line `description` and implement `sample`. Prompts start with a
    short task prefix (e.g. ``"add 12+34="``) so a model trained on a mixture knows which skill is
    asked; the space of distinct prompts must be large (>= 5,000) so that splits can be disjoint.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    max_example_chars: ClassVar[int | None] = MAX_EXAMPLE_CHARS
    ascii_only: ClassVar[bool] = True

    @abc.abstractmethod
    def sample(self, rng: random.Random) -> Example:
        """Draw one example using only `rng`, so that splits are reproducible."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class SplitSizes(pydantic.BaseModel, extra="forbid"):
    """How many distinct examples each split gets (forbidding extra keys catches typos in configs)."""

    owner_train: int = pydantic.Field(2000, ge=1)
    attacker_train: int = pydantic.Field(1000, ge=1)
    attacker_val: int = pydantic.Field(200, ge=1)
    test: int = pydantic.Field(200, ge=1)

    @property
    def total(self) -> int:
        return sum(self.as_dict().values())

    def as_dict(self) -> dict[str, int]:
        """Sizes keyed by split, in SPLITS order."""
        return {split: getattr(self, split) for split in SPLITS}
