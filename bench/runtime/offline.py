"""Offline switches for the Hugging Face stack.

No hub is reachable on the machines lockbench targets by default, so every entry point calls
:func:`enable_offline` before importing transformers, datasets or lm-eval, and Ray workers get the
same variables through :data:`OFFLINE_ENV`.
"""

from __future__ import annotations

import os

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def enable_offline() -> None:
    """Set the offline variables unless the user set them explicitly (e.g. to 0 on a hub machine)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def offline_env() -> dict[str, str]:
    """The variables as they stand now in this process, for propagation into workers."""
    return {key: os.environ.get(key, value) for key, value in OFFLINE_ENV.items()}
