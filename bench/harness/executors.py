"""Executors: run defense jobs and cells serially in-process or as Ray tasks.

A cell names the release it attacks (`WorkItem.after`), and starts as soon as that release exists: on
Ray the release's object reference is an argument of the cell's task, so Ray's scheduler starts the cell
the moment its release is done, while slower releases (PMP re-training a base) still run on other
workers. A cell whose release failed fails with the release's error without running.

Ray (bench.harness.cluster): a private local cluster without $RAY_ADDRESS, the named cluster with it,
every node first proving it sees the storage root. Each task asks for explicit CPUs (and GPUs). Every
item computes with one torch thread (`bench.runtime.threads`), whatever the executor, so serial and Ray runs give
the same numbers on any machine.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bench.config import ConfigError
from bench.harness.cluster import check_nodes_see_root, start_ray, stop_local_ray
from bench.harness.context import get_context, trim_lm_eval_overheads
from bench.harness.stages import cell_identity, run_cell, run_defense_job
from bench.presets import Preset
from bench.presets import Preset as PresetModel
from bench.runtime.threads import compute_threads

ExecutorName = Literal["serial", "ray"]
#: Comma-separated modules imported by the driver and every worker before a run, so plugins that are
#: neither built in nor installed with an entry point (a notebook's, a test's) register everywhere.
PLUGIN_MODULES_ENV = "LOCKBENCH_PLUGINS"


def import_plugin_modules() -> list[str]:
    """Import the modules named in $LOCKBENCH_PLUGINS (their decorators register the plugins)."""

    names = [name.strip() for name in os.environ.get(PLUGIN_MODULES_ENV, "").split(",") if name.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ConfigError(f"{PLUGIN_MODULES_ENV} names module '{name}', which cannot be imported: {error}") from error
    return names


@dataclass(frozen=True)
class WorkItem:
    """One unit of work: a defense job or a cell, identified by index into the caller's list."""

    index: int
    kind: Literal["defend", "cell"]
    payload: Any
    after: tuple[int, ...] = ()  # indices of the defend items (in the same batch) this cell needs first


def execute(preset_json: str, root: str, item: WorkItem, fractions: list[float], *needed: dict[str, Any]) -> Any:
    """Run one item; `needed` are the results of the items in `item.after` (Ray resolves them first)."""

    with compute_threads():
        return execute_item(preset_json, root, item, fractions, needed)


def execute_item(preset_json: str, root: str, item: WorkItem, fractions: list[float],
                 needed: Sequence[dict[str, Any]] = ()) -> Any:
    import_plugin_modules()

    trim_lm_eval_overheads()  # here, not in the driver: a fully cached run never imports lm-eval
    ctx = get_context(PresetModel.model_validate_json(preset_json), Path(root))
    failed = [result for result in needed if isinstance(result, dict) and result.get("status") == "failed"]
    if failed:  # a release that failed fails its cells at once: retrying it per cell would repeat minutes
        return {**cell_identity(ctx, item.payload), "status": "failed", "error": failed[0]["error"]}
    if item.kind == "defend":
        try:
            run_defense_job(ctx, item.payload)
            return {"status": "ok"}
        except Exception as error:  # reported per job; its cells then fail with the same error
            return {"status": "failed", "error": f"{type(error).__name__}: {error}".splitlines()[0]}
    return run_cell(ctx, item.payload, fractions)


class SerialExecutor:
    name = "serial"

    def map(self, preset: Preset, root: Path, items: Sequence[WorkItem], fractions: list[float]
            ) -> Iterator[tuple[WorkItem, Any]]:
        preset_json = preset.model_dump_json()
        releases: dict[int, Any] = {}  # defend items' results, which cells name in `after`
        for item in items:  # callers list an item after the items it needs
            result = execute(preset_json, str(root), item, fractions,
                             *(releases[index] for index in item.after if index in releases))
            if item.kind == "defend":
                releases[item.index] = result
            yield item, result

    def check_storage(self, root: Path) -> None:
        pass  # one process, one filesystem

    def shutdown(self) -> None:
        pass


class RayExecutor:
    name = "ray"

    def __init__(self, cpus_per_task: int = 1, gpus_per_task: float = 0.0, num_cpus: int | None = None):
        # local: Ray is loaded only by runs on the Ray executor (serial runs and tests stay light)
        import ray

        self.cpus_per_task, self.gpus_per_task = cpus_per_task, gpus_per_task
        start_ray(num_cpus)
        self._remote = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=0)(execute)

    def check_storage(self, root: Path) -> None:
        check_nodes_see_root(root)

    def map(self, preset: Preset, root: Path, items: Sequence[WorkItem], fractions: list[float]
            ) -> Iterator[tuple[WorkItem, Any]]:
        # local: Ray is loaded only by runs on the Ray executor (serial runs and tests stay light)
        import ray

        preset_json = ray.put(preset.model_dump_json())
        releases: dict[int, Any] = {}  # defend items' object references, which cells name in `after`
        pending: dict[Any, WorkItem] = {}
        for item in items:  # an item's dependencies are submitted before it
            ref = self._remote.remote(preset_json, str(root), item, fractions,
                                      *(releases[index] for index in item.after if index in releases))
            if item.kind == "defend":
                releases[item.index] = ref
            pending[ref] = item
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                item = pending.pop(ref)
                try:
                    yield item, ray.get(ref)
                except Exception as error:  # a crashed worker is one failed item, not a failed run
                    yield item, {"status": "failed", "error": f"{type(error).__name__}: {error}".splitlines()[0]}

    def shutdown(self) -> None:
        stop_local_ray()


def make_executor(name: ExecutorName, **kwargs: Any):
    factories: dict[str, Callable[..., Any]] = {"serial": SerialExecutor, "ray": RayExecutor}
    if name not in factories:
        raise ValueError(f"unknown executor '{name}'; choose serial or ray")
    return factories[name](**kwargs)
