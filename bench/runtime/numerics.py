"""One CPU code path for every computation whose result lockbench records.

PyTorch's own CPU kernels (ATen's vectorised loops) pick their instructions from the machine's CPU when
torch first computes: AVX-512 on some of our machines, AVX2 on the one that made the published
leaderboards. The paths round differently and training amplifies the difference, so the same commit, seed
and zoo hash gave another leaderboard on another CPU. Measured on an AVX-512 machine: with
`ATEN_CPU_CAPABILITY=avx2` the zoo's bases train bit for bit the weights of the AVX2 machine; MKL's
reproducibility switch (`MKL_CBWR`) changed nothing, so it is not set.

So importing lockbench (`bench/__init__.py`) sets `ATEN_CPU_CAPABILITY=avx2` unless the user chose a
value (e.g. `avx512` for speed, `default` for no vector kernels: a second "machine" for stability checks).
Ray workers and spawned build processes inherit it (bench.harness.cluster passes it on), and
:func:`numerics_stamp`, part of every zoo cache key and every row's provenance, records the path torch
actually took, so models trained on different paths are never mixed. What the pin buys: bitwise-equal
results across x86-64 CPUs with AVX2 or AVX-512. What it does not: other instruction sets (ARM, a GPU)
compute their own numbers.
"""

from __future__ import annotations

import os

CAPABILITY_ENV = "ATEN_CPU_CAPABILITY"
PINNED_CAPABILITY = "avx2"


def pin_numerics() -> None:
    """Pin ATen's code path unless the user set it (call before torch computes)."""
    os.environ.setdefault(CAPABILITY_ENV, PINNED_CAPABILITY)


def numerics_env() -> dict[str, str]:
    """The variable as it stands in this process, for workers on other nodes."""
    return {CAPABILITY_ENV: os.environ.get(CAPABILITY_ENV, PINNED_CAPABILITY)}


def numerics_stamp() -> str:
    """The code path torch computes with here, as torch reports it (e.g. `aten AVX2`)."""
    # local: torch and the Hugging Face stack load only where a model is touched (`import bench` stays light)
    import torch

    return f"aten {torch.backends.cpu.get_cpu_capability()}"
