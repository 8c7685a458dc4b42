"""The compute device is chosen once (bench.runtime.device); on this CPU machine every choice resolves to the CPU or
fails with one clear line, and models and batches land where the choice says."""

from __future__ import annotations

import pytest
import torch

from bench.runtime import device as device_module
from bench.runtime.device import compute_device, device_of, inputs_on


@pytest.fixture(autouse=True)
def fresh_choice():
    compute_device.cache_clear()
    yield
    compute_device.cache_clear()


def test_auto_and_cpu_pick_the_cpu_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for value in ("auto", "", "cpu", "CPU"):
        compute_device.cache_clear()
        monkeypatch.setenv(device_module.DEVICE_ENV, value)
        assert compute_device() == torch.device("cpu"), value


def test_cuda_without_a_gpu_and_an_unknown_device_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(device_module.DEVICE_ENV, "cuda")
    with pytest.raises(RuntimeError, match="LOCKBENCH_DEVICE=cuda but torch sees no CUDA device"):
        compute_device()
    compute_device.cache_clear()
    monkeypatch.setenv(device_module.DEVICE_ENV, "meta")
    with pytest.raises(ValueError, match="auto, cpu, cuda or cuda:N"):
        compute_device()


def test_auto_picks_cuda_when_torch_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv(device_module.DEVICE_ENV, raising=False)
    assert compute_device() == torch.device("cuda")


def test_batches_follow_the_model() -> None:
    model = torch.nn.Linear(2, 2)
    assert device_of(model) == torch.device("cpu") and device_of(torch.nn.ReLU()) == torch.device("cpu")
    (moved,) = inputs_on(model, torch.ones(2))
    assert moved.device == torch.device("cpu")
