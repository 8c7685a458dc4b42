"""Shared pydantic base for every config: unknown keys are errors that name the key."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Configs reject typos (`extra="forbid"`) and are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)
