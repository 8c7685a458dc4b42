"""Shared fixtures: offline switches before any Hugging Face import, and small zoos built once."""

from __future__ import annotations

import os

for _key, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                     "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def micro_preset():
    from bench.presets import load_preset

    return load_preset("micro")


@pytest.fixture(scope="session")
def micro_zoo(tmp_path_factory, micro_preset):
    """The micro zoo (seconds to build): plumbing tests, not accuracy."""
    from bench.zoo.build import build_zoo

    root = tmp_path_factory.mktemp("micro-root")
    return build_zoo(micro_preset.zoo, root)
