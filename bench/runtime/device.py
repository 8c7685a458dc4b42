"""The one place the compute device is chosen: every stage (zoo training, defenses, attacks, scoring) runs
the same code on it, CPU or CUDA.

`LOCKBENCH_DEVICE` = `auto` (the default: CUDA when torch sees a GPU, else CPU), `cpu`, `cuda` or `cuda:N`.
Models are placed on it when they are created or loaded (`bench.zoo.build.load_model`, `build_model`,
the controls' random inits); batches follow the model they are fed to (`inputs_on`), so a function never
needs to be told the device.
"""

from __future__ import annotations

import functools
import os

import torch

DEVICE_ENV = "LOCKBENCH_DEVICE"


@functools.cache
def compute_device() -> torch.device:
    """The device of this process (read once; Ray workers inherit the variable through the runtime env)."""
    wanted = os.environ.get(DEVICE_ENV, "auto").strip().lower() or "auto"
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(wanted)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{DEVICE_ENV}={wanted} but torch sees no CUDA device")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{DEVICE_ENV} must be auto, cpu, cuda or cuda:N, not {wanted!r}")
    return device


def device_of(model: torch.nn.Module) -> torch.device:
    """Where a model's weights are (its first parameter's device; CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def inputs_on(model: torch.nn.Module, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """`tensors` moved to the model's device (no copy when they are there already)."""
    device = device_of(model)
    return tuple(tensor.to(device) for tensor in tensors)
