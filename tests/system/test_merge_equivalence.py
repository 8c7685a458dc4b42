"""Merging in memory is mergekit's own merge (split from tests/integration/test_attacks.py): every in-memory merge equals
`mergekit-yaml` on disk bit for bit on tiny models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from bench.toolkit.merging import merge_state_dicts
from bench.zoo.build import load_model

BIN = Path(sys.executable).parent


def _tiny_models(directory: Path, family: str) -> dict[str, Path]:
    """A base and two experts (base + seeded updates of different sizes), saved as safetensors."""
    from bench.zoo.architectures import ArchitectureConfig, build_model

    arch = ArchitectureConfig(family=family, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)
    base = build_model(arch, 40, seed=0, special_ids={"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2})
    paths = {}
    for index, name in enumerate(["base", "first", "second"]):
        model = base
        if index:
            generator = torch.Generator().manual_seed(index)
            model = type(base)(base.config)
            model.load_state_dict({key: value + (0.02 * index) * torch.randn(value.shape, generator=generator)
                                   for key, value in base.state_dict().items()})
        paths[name] = directory / f"{family}-{name}"
        model.save_pretrained(paths[name], safe_serialization=True)
    return paths


WEIGHTS = {"first": 1.0, "second": 0.6}
DENSITIES = {"first": 0.5, "second": 0.7}
CASES = [  # (family, method, shared parameters, per-member parameters)
    ("llama", "task_arithmetic", {"normalize": False, "lambda": 1.3}, {"weight": WEIGHTS}),
    ("llama", "ties", {"normalize": True}, {"weight": WEIGHTS, "density": DENSITIES}),
    ("llama", "dare_ties", {}, {"weight": WEIGHTS, "density": DENSITIES}),
    ("gpt2", "dare_ties", {}, {"weight": WEIGHTS, "density": DENSITIES}),
]
SEED = 7


@pytest.mark.slow
def test_in_memory_merge_equals_mergekit_yaml_on_disk(tmp_path: Path) -> None:
    """bench.toolkit.merging gives the very tensors `mergekit-yaml --random-seed` writes, DARE's random drops included."""
    paths = {family: _tiny_models(tmp_path, family) for family in ("llama", "gpt2")}
    runs = []
    for index, (family, method, shared, per_member) in enumerate(CASES):
        members = [{"model": str(paths[family][name]),
                    "parameters": {key: values[name] for key, values in per_member.items()}}
                   for name in ("first", "second")]
        config = {"merge_method": method, "base_model": str(paths[family]["base"]), "models": members,
                  "parameters": shared, "dtype": "float32"}
        (tmp_path / f"{index}.yaml").write_text(yaml.safe_dump(config))
        out = tmp_path / f"out-{index}"
        command = [str(BIN / "mergekit-yaml"), str(tmp_path / f"{index}.yaml"), str(out), "--random-seed",
                   str(SEED), "--quiet", "--no-copy-tokenizer", "--no-write-model-card"]
        runs.append((out, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    for (family, method, shared, per_member), (out, process) in zip(CASES, runs, strict=True):
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
        on_disk = load_file(str(out / "model.safetensors"))
        states = {name: load_model(paths[family][name]).state_dict() for name in ("base", "first", "second")}
        parameters = {**shared, **per_member}
        in_memory = merge_state_dicts(states["base"], {"first": states["first"], "second": states["second"]},
                                      method, parameters, seed=SEED)
        assert set(in_memory) == set(on_disk), (family, method)
        different = [name for name in on_disk if not torch.equal(in_memory[name], on_disk[name])]
        assert not different, f"{family}/{method}: in memory differs from mergekit-yaml in {different[:4]}"
        assert any(not torch.equal(in_memory[name], states["base"][name]) for name in in_memory), "merge did nothing"
        if method.startswith("dare"):  # the seed matters, so equality above is not luck
            reseeded = merge_state_dicts(states["base"], {"first": states["first"], "second": states["second"]},
                                         method, parameters, seed=SEED + 1)
            assert any(not torch.equal(reseeded[name], on_disk[name]) for name in on_disk)


