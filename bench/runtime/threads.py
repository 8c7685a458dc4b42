"""One intra-op thread for every computation whose result lockbench records.

PyTorch's CPU kernels split their reductions by thread count, so the same training run ends bitwise
different under 1 and 2 threads. For Llama-style models at our scale that difference happened to vanish;
for GPT-2-style ones it did not (measured on the ci zoo: its LoRA `upper` expert scored 0.43 when built
with 1 thread and 0.25 with 2), and a cell's numbers would depend on the executor and on the machine's
core count. lockbench therefore computes with one thread and gets its parallelism from running cells
side by side (the Ray executor).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

COMPUTE_THREADS = 1


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with torch's intra-op threads set to `count`, then restore them."""
    # local: torch and the Hugging Face stack load only where a model is touched (`import bench` stays light)
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def compute_threads():
    """The thread setting of every computation whose result lockbench records."""
    return torch_threads(COMPUTE_THREADS)
