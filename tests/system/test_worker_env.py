"""Every process that computes a recorded number runs on the pinned CPU code path (bench.runtime.numerics), and Ray's
workers at the driver's priority (bench.harness.cluster): checked in a real Ray worker and in a process
spawned the way the zoo build spawns its model builders."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest


def _worker_facts() -> tuple[str, int, str]:
    import torch

    return os.environ.get("ATEN_CPU_CAPABILITY", ""), os.nice(0), torch.backends.cpu.get_cpu_capability()


def test_a_spawned_build_process_computes_on_the_pinned_path() -> None:
    import torch

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        variable, _, capability = pool.submit(_worker_facts).result(timeout=120)
    assert variable == os.environ["ATEN_CPU_CAPABILITY"]
    assert capability == torch.backends.cpu.get_cpu_capability()


@pytest.mark.slow
def test_a_ray_worker_computes_on_the_pinned_path_at_the_drivers_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    import torch

    from bench.harness.cluster import WORKER_NICENESS_ENV, start_ray, stop_local_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(WORKER_NICENESS_ENV, raising=False)
    assert not ray.is_initialized()
    start_ray(num_cpus=1, pythonpath=[str(Path(__file__).parent)])  # the worker imports this module
    try:
        variable, niceness, capability = ray.get(ray.remote(_worker_facts).remote(), timeout=300)
    finally:
        stop_local_ray()
    assert variable == os.environ["ATEN_CPU_CAPABILITY"]
    assert capability == torch.backends.cpu.get_cpu_capability()
    assert niceness == os.nice(0), f"Ray worker at nice {niceness}, the driver at {os.nice(0)}"
