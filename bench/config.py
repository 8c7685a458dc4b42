"""Shared by every package: the pydantic base of every config (unknown keys are errors that name the key) and
the one-line error of a configuration that cannot run."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Configs reject typos (`extra="forbid"`) and are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(ValueError):
    """A configuration that cannot run (unknown model or task, empty grid, …); the message is one line."""
