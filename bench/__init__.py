"""lockbench's harness. Importing any of its modules pins the CPU code path first (bench.runtime.numerics),
because torch reads it when it first computes, and a recorded number must not depend on the machine.

The public surface is small and curated: what a plugin author writes against (`Defense`, `Attack`, the
views, `Release`, `AttackOutput`, the `register_*` decorators, `StrictModel` for configs) and what a script
runs (`load_preset`, `run_benchmark`, `write_run`, `run_and_write`). Each is loaded on first use, so
`import bench` stays light (no torch) for the CLI's `--help` and for tools that only read results.
"""

from importlib import import_module
from typing import Any

from bench.runtime.numerics import pin_numerics

pin_numerics()

__version__ = "0.1.0"

#: name -> the module that defines it
_PUBLIC = {
    "Attack": "bench.plugins", "AttackNotApplicable": "bench.plugins", "AttackOutput": "bench.plugins",
    "Defense": "bench.plugins", "OwnerView": "bench.plugins", "PublicView": "bench.plugins",
    "Release": "bench.plugins", "TaskData": "bench.plugins", "register_attack": "bench.plugins",
    "register_defense": "bench.plugins", "register_task": "tasks.registry", "StrictModel": "bench.config",
    "load_preset": "bench.presets", "run_benchmark": "bench.harness.run", "RunSummary": "bench.harness.run",
    "write_run": "bench.report.leaderboard", "run_and_write": "bench.report.leaderboard",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """PEP 562: import a public name's module on first use."""
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'bench' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
