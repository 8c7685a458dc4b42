"""`make perf`: the performance figures of issue 8, each measured side by side in one run against its target.

    python -m bench.perf                    # every figure on `smoke`
    python -m bench.perf --full             # cache figure on `default` (its cold run costs 20+ minutes)
    python -m bench.perf --preset micro --only merge,lmeval

Figures (the ratio, then the target):
- cache:  a fully cached re-run over the cold run from an empty storage root, same command (<= 2 %)
- ray:    serial wall time over Ray with 2 one-CPU workers, same zoo, every stage after it fresh (>= 1.6x)
- merge:  `mergekit-yaml` on disk over mergekit's in-memory merge (what attacks use), same merge (>= 5x)
- lmeval: lm-eval scoring (`bench.evaluate.score`) over a raw batched forward pass computing the same
          log-likelihoods and greedy checks (<= 1.5x)
- trap2:  one Trap² training step over one plain fine-tuning step (<= 2.2x; "not available" without
          `defenses/trap2.py`)
- flops:  training FLOP/s over this CPU's measured fp32 matmul FLOP/s (reported, no target)

Every run of the harness is a separate process (`python -m bench.perf run-once`), timed from outside, so
import and start-up costs count as a user sees them. Ray state (token, temp dir) is kept in a private
temporary HOME so the benchmark never touches `~/.ray`. Writes `perf/REPORT.md` and `perf/report.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import dataclasses
import datetime as dt
import io
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STAGE_DIRS = ("releases", "private", "cells", "scores")
FIGURES = ("cache", "ray", "merge", "lmeval", "trap2", "flops")


@dataclass
class Figure:
    """One line of the report: a measured ratio, its target and how it was measured."""

    key: str
    title: str
    preset: str
    value: float | None = None
    unit: str = "x"
    target: str = ""
    passed: bool | None = None
    status: str = "measured"  # measured | not available | error
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def check(self, value: float, op: str, bound: float) -> None:
        self.value = value
        self.target = f"{op} {bound:g}{self.unit if self.unit != 'x' else 'x'}"
        self.passed = value <= bound if op == "<=" else value >= bound


# ----------------------------------------------------------------------------- subprocess runs


def _child_env(ray_home: Path | None = None) -> dict[str, str]:
    from bench.offline import OFFLINE_ENV

    env = {key: value for key, value in os.environ.items() if key not in ("RAY_ADDRESS", "LOCKBENCH_FAULT")}
    env.update(OFFLINE_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if ray_home is not None:  # Ray writes ~/.ray/auth_token and /tmp/ray sessions: keep them private
        ray_home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(ray_home)
        env["RAY_TMPDIR"] = str(ray_home)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def run_once(preset: str, root: Path, out: Path, executor: str = "serial", workers: int = 2,
             profile: bool = False, ray_home: Path | None = None) -> dict[str, Any]:
    """Run the whole benchmark of `preset` in a fresh process; wall time measured from outside."""
    result_file = Path(tempfile.mkstemp(prefix="lbperf-", suffix=".json")[1])
    command = [sys.executable, "-m", "bench.perf", "run-once", "--preset", preset, "--root", str(root),
               "--out", str(out), "--executor", executor, "--workers", str(workers), "--result", str(result_file)]
    if profile:
        command.append("--profile")
    started = time.perf_counter()
    process = subprocess.run(command, env=_child_env(ray_home), capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - started
    try:
        if process.returncode != 0:
            tail = (process.stderr or process.stdout)[-2000:]
            raise RuntimeError(f"run of {preset} ({executor}) exited {process.returncode}: {tail}")
        result = json.loads(result_file.read_text())
    finally:
        result_file.unlink(missing_ok=True)
    return {"wall_s": wall, **result}


def _run_once_main(args: argparse.Namespace) -> None:
    """Child side of `run_once`: import, run, report what the parent cannot see (import time, profile)."""
    started = time.perf_counter()
    from rich.console import Console

    from bench.harness.run import run_benchmark
    from bench.presets import load_preset

    imported = time.perf_counter()
    preset = load_preset(args.preset)
    kwargs: dict[str, Any] = {"num_cpus": args.workers, "cpus_per_task": 1} if args.executor == "ray" else {}
    console = Console(stderr=True, quiet=True)
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    summary = run_benchmark(preset, Path(args.root), Path(args.out), args.executor, console=console, **kwargs)
    if profiler:
        profiler.disable()
    finished = time.perf_counter()
    hotspots: list[str] = []
    if profiler:
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats("cumulative").print_stats(25)
        hotspots = [line.strip() for line in buffer.getvalue().splitlines() if line.strip()][:40]
    Path(args.result).write_text(json.dumps({
        "import_s": imported - started, "run_s": finished - imported, "cells": summary.cells,
        "cached": summary.cached, "failed": summary.failed, "hotspots": hotspots,
    }))


def _reset_stages(root: Path) -> None:
    for name in STAGE_DIRS:
        shutil.rmtree(root / name, ignore_errors=True)


def _same_cells(first: Path, second: Path) -> bool:
    """cells.csv of two runs agree on everything but wall-clock columns."""
    import pandas as pd

    from bench.results import TIMING_COLUMNS

    frames = []
    for run_dir in (first, second):
        frame = pd.read_csv(run_dir / "cells.csv", dtype=str, keep_default_na=False)
        frames.append(frame.drop(columns=[c for c in TIMING_COLUMNS if c in frame.columns]))
    return frames[0].equals(frames[1])


def _build_zoo(preset: str, root: Path) -> float:
    """Build what a run of `preset` would (the grid's models and the tasks) in a fresh process; seconds."""
    started = time.perf_counter()
    process = subprocess.run([sys.executable, "-m", "bench.perf", "build-zoo", "--preset", preset, "--root", str(root)],
                             env=_child_env(), capture_output=True, text=True, cwd=REPO)
    if process.returncode != 0:
        raise RuntimeError(f"building the zoo of {preset} failed: {process.stderr[-2000:]}")
    return time.perf_counter() - started


def _build_zoo_main(args: argparse.Namespace) -> None:
    from bench.harness.context import get_context
    from bench.presets import load_preset

    get_context(load_preset(args.preset), Path(args.root))


# ----------------------------------------------------------------------------- figures


def _cache_figure(preset: str, cold_s: float, cached: dict[str, Any], cold_dir: Path, cached_dir: Path,
                  how: str) -> Figure:
    figure = Figure("cache", "cached re-run / cold run", preset, unit="%")
    figure.check(100 * cached["wall_s"] / cold_s, "<=", 2.0)
    figure.details = {
        "cold_s": round(cold_s, 2), "cached_s": round(cached["wall_s"], 2),
        "cached_import_s": round(cached["import_s"], 2), "cached_run_benchmark_s": round(cached["run_s"], 2),
        "cells": cached["cells"], "cells_cached_on_rerun": cached["cached"],
        "same_cells": _same_cells(cold_dir, cached_dir), "cached_profile_top": cached["hotspots"],
    }
    figure.notes.append(how)
    figure.notes.append("a cached re-run costs a roughly fixed few seconds (Python start-up and imports of torch, "
                        "transformers, peft, scipy and matplotlib; checking the cache; writing the run directory), "
                        "so the ratio shrinks as the preset grows: the target is stated for `default` "
                        "(`make perf PERF_ARGS=--full`)")
    if cached["cached"] != cached["cells"]:
        figure.notes.append(f"WARNING: only {cached['cached']} of {cached['cells']} cells came from the cache")
    return figure


def figure_cache(preset: str, work: Path) -> Figure:
    """Cold: one `run` from an empty storage root; cached: the same command again."""
    root = work / f"cache-{preset}"
    shutil.rmtree(root, ignore_errors=True)
    cold_dir, cached_dir = work / "runs" / f"cache-{preset}-cold", work / "runs" / f"cache-{preset}-cached"
    cold = run_once(preset, root, cold_dir)
    cached = run_once(preset, root, cached_dir, profile=True)
    return _cache_figure(preset, cold["wall_s"], cached, cold_dir, cached_dir,
                         "cold: one serial `run` from an empty storage root (zoo training included); cached: the "
                         "same command again; each a fresh process timed from outside")


def figures_cache_and_ray(preset: str, work: Path, workers: int = 2) -> list[Figure]:
    """Both figures from one sequence, so the preset's stages run serially once rather than twice:
    build the zoo from an empty root, run serially, re-run fully cached, then recompute every stage with Ray."""
    root = work / f"zoo-{preset}"
    shutil.rmtree(root, ignore_errors=True)
    runs = work / "runs"
    zoo_s = _build_zoo(preset, root)
    serial = run_once(preset, root, runs / f"{preset}-serial")
    cached = run_once(preset, root, runs / f"{preset}-cached", profile=True)
    cache = _cache_figure(preset, zoo_s + serial["wall_s"], cached, runs / f"{preset}-serial", runs / f"{preset}-cached",
                          f"cold: from an empty storage root, the zoo and tasks a run needs ({zoo_s:.1f} s) then a "
                          f"serial run ({serial['wall_s']:.1f} s), two fresh processes (one start-up more than a "
                          "single cold run); cached: the same run again")
    _reset_stages(root)
    ray = _ray_run(preset, root, runs / f"{preset}-ray", workers)
    return [cache, _ray_figure(preset, serial, ray, runs / f"{preset}-serial", runs / f"{preset}-ray", workers)]


def _ray_run(preset: str, root: Path, out: Path, workers: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lbperf-ray-") as home:  # short: Ray's socket paths are limited
        return run_once(preset, root, out, "ray", workers, ray_home=Path(home))


def _ray_figure(preset: str, serial: dict[str, Any], ray: dict[str, Any], serial_dir: Path, ray_dir: Path,
                workers: int) -> Figure:
    figure = Figure("ray", f"Ray ({workers} workers) speed-up over serial", preset)
    figure.check(serial["wall_s"] / ray["wall_s"], ">=", 1.6)
    figure.details = {
        "serial_s": round(serial["wall_s"], 2), "ray_s": round(ray["wall_s"], 2),
        "serial_run_benchmark_s": round(serial["run_s"], 2), "ray_run_benchmark_s": round(ray["run_s"], 2),
        "cells": serial["cells"], "failed": serial["failed"] + ray["failed"],
        "same_cells": _same_cells(serial_dir, ray_dir), "cpus": os.cpu_count(),
    }
    figure.notes.append("same built zoo, every later stage recomputed in each run; every item computes on one "
                        f"torch thread (bench.threads), serially or on Ray's {workers} workers; Ray start-up "
                        "included; releases come before their cells, so an uneven release stage (PMP re-trains "
                        "a base) leaves a worker idle")
    return figure


def figure_ray(preset: str, work: Path, workers: int = 2) -> Figure:
    root = work / f"zoo-{preset}"
    _build_zoo(preset, root)
    _reset_stages(root)
    serial = run_once(preset, root, work / "runs" / f"{preset}-serial")
    _reset_stages(root)
    ray = _ray_run(preset, root, work / "runs" / f"{preset}-ray", workers)
    return _ray_figure(preset, serial, ray, work / "runs" / f"{preset}-serial", work / "runs" / f"{preset}-ray",
                       workers)


def _best_times(functions: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, Any]]:
    """Best (minimum) wall time of each function and its last result, the functions interleaved so that
    a burst of load from other processes hits them alike; the minimum is the least disturbed run."""
    best: dict[str, tuple[float, Any]] = {}
    for _ in range(repeats):
        for name, function in functions.items():
            started = time.perf_counter()
            result = function()
            seconds = time.perf_counter() - started
            best[name] = (min(seconds, best[name][0]) if name in best else seconds, result)
    return best


def figure_merge(ctx: Any) -> Figure:
    import torch
    import yaml
    from safetensors.torch import load_file

    from bench.merging import merge_state_dicts

    figure = Figure("merge", "mergekit-yaml on disk / in-memory merge", ctx.preset.name)
    zoo = ctx.zoo
    model_name = zoo.model_names[0]
    tasks = list(ctx.preset.zoo.expert_tasks[:2])
    base = zoo.load_base(model_name)
    experts = {task: zoo.load_expert(model_name, task) for task in tasks}
    target = copy.deepcopy(base)

    def in_memory() -> dict[str, torch.Tensor]:
        merged = merge_state_dicts(base.state_dict(), {t: m.state_dict() for t, m in experts.items()},
                                   "task_arithmetic", {"weight": 1.0})
        target.load_state_dict(merged)
        return merged

    in_memory()  # warm-up: mergekit's registry and lazy imports
    memory_s, merged = _best_times({"memory": in_memory}, 5)["memory"]
    with tempfile.TemporaryDirectory(prefix="lbperf-merge-") as scratch:
        config = {"merge_method": "task_arithmetic", "base_model": str(zoo.paths[model_name].base), "dtype": "float32",
                  "models": [{"model": str(zoo.paths[model_name].experts_full[t]), "parameters": {"weight": 1.0}}
                             for t in tasks]}
        config_file = Path(scratch) / "merge.yaml"
        config_file.write_text(yaml.safe_dump(config))
        binary = Path(sys.executable).with_name("mergekit-yaml")
        disk_times = []
        for attempt in range(2):
            out = Path(scratch) / f"out{attempt}"
            started = time.perf_counter()
            subprocess.run([str(binary), str(config_file), str(out)], env=_child_env(), check=True,
                           capture_output=True, text=True)
            disk_times.append(time.perf_counter() - started)
        on_disk = {}
        for file in sorted(out.glob("*.safetensors")):
            on_disk.update(load_file(str(file)))
    shared = [name for name in merged if name in on_disk]
    difference = max(float((merged[name] - on_disk[name]).abs().max()) for name in shared) if shared else None
    disk_s = min(disk_times)
    figure.check(disk_s / memory_s, ">=", 5.0)
    figure.details = {"in_memory_s": round(memory_s, 5), "mergekit_yaml_s": round(disk_s, 3),
                      "model": model_name, "members": tasks, "method": "task_arithmetic weight 1.0",
                      "tensors_compared": len(shared), "max_abs_difference": difference}
    figure.notes.append("in memory: bench.merging.merge_state_dicts on loaded state dicts + load_state_dict, best "
                        "of 5; on disk: `mergekit-yaml` CLI reading the zoo's safetensors and writing the merge, "
                        "faster of 2 (process start-up included, as a user pays it)")
    if difference is not None and difference > 1e-5:
        figure.notes.append(f"WARNING: the two merges differ by up to {difference:.3g}")
    return figure


def _raw_loglikelihoods(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], batch_size: int = 64
                        ) -> list[tuple[float, bool]]:
    """(sum log p(continuation | context), greedy match) per pair, as lm-eval's HFLM computes them."""
    import torch

    encoded = []
    for context, continuation in pairs:
        whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
        start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        encoded.append((whole, start))
    results: list[tuple[float, bool]] = []
    pad = tokenizer.pad_token_id or 0
    with torch.no_grad():
        for first in range(0, len(encoded), batch_size):
            chunk = encoded[first:first + batch_size]
            width = max(len(whole) - 1 for whole, _ in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (whole, _) in enumerate(chunk):
                ids[row, :len(whole) - 1] = torch.tensor(whole[:-1])
                mask[row, :len(whole) - 1] = 1
            logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            for row, (whole, start) in enumerate(chunk):
                targets = torch.tensor(whole[start:])
                positions = torch.arange(start - 1, len(whole) - 1)
                picked = logprobs[row, positions]
                results.append((float(picked.gather(1, targets[:, None]).sum()),
                                bool((picked.argmax(-1) == targets).all())))
    return results


@contextlib.contextmanager
def _lm_eval_untrimmed() -> Iterator[None]:
    """lm-eval as shipped, without the harness's trim (bench.harness.context.trim_lm_eval_overheads), to
    show what the trim saves."""
    import lm_eval.api.task
    import lm_eval.evaluator
    import lm_eval.utils

    from bench.harness.context import LM_EVAL_ORIGINALS, trim_lm_eval_overheads

    trim_lm_eval_overheads()
    task_class = lm_eval.api.task.ConfigurableTask
    trimmed = lm_eval.evaluator.add_env_info, lm_eval.utils.apply_template, task_class.download
    lm_eval.evaluator.add_env_info = LM_EVAL_ORIGINALS["add_env_info"]
    lm_eval.utils.apply_template = LM_EVAL_ORIGINALS["apply_template"]
    task_class.download = LM_EVAL_ORIGINALS["download"]
    try:
        yield
    finally:
        lm_eval.evaluator.add_env_info, lm_eval.utils.apply_template, task_class.download = trimmed


def figure_lmeval(ctx: Any) -> Figure:
    from lm_eval import simple_evaluate

    from bench.evaluate import quiet_hflm_class, score
    from bench.harness.context import trim_lm_eval_overheads
    from tasks.lmeval import task_manager

    trim_lm_eval_overheads()  # as every harness worker scores
    figure = Figure("lmeval", "lm-eval scoring / raw batched forward", ctx.preset.name)
    zoo = ctx.zoo
    model_name = zoo.model_names[0]
    model, tokenizer = zoo.load_base(model_name), zoo.tokenizer(model_name)
    tasks = ctx.all_tasks
    pairs: dict[str, list[tuple[str, str]]] = {}
    for task in tasks:
        rows = [json.loads(line) for line in ctx.tasks.entries[task].files["test"].read_text().splitlines() if line]
        pairs[task] = [(row["prompt"], row["answer"] + "\n") for row in rows]
    examples = sum(len(p) for p in pairs.values())

    def raw() -> dict[str, float]:
        flat = [pair for task in tasks for pair in pairs[task]]
        results = iter(_raw_loglikelihoods(model, tokenizer, flat))
        return {task: sum(next(results)[1] for _ in pairs[task]) / len(pairs[task]) for task in tasks}

    def lm_eval_score() -> dict[str, float]:
        return score(model, tokenizer, tasks, ctx.tasks)

    lm_eval_score(), raw()  # warm-up: lm-eval's imports and task index, paid once per process
    timed = _best_times({"lm_eval": lm_eval_score, "raw": raw}, 5)
    (lm_s, lm_scores), (raw_s, raw_scores) = timed["lm_eval"], timed["raw"]

    # The same numbers, not just the same accuracy: compare per-example log-likelihoods with lm-eval's samples.
    lm = quiet_hflm_class()(pretrained=model, tokenizer=tokenizer, batch_size=64, device="cpu")
    names = {task: ctx.tasks.lm_eval_name(task, split="test", form="loglikelihood") for task in tasks}
    output = simple_evaluate(model=lm, tasks=list(names.values()), task_manager=task_manager(ctx.tasks.include_path),
                             log_samples=True, bootstrap_iters=0, verbosity="ERROR")
    worst = 0.0
    for task in tasks:
        samples = sorted(output["samples"][names[task]], key=lambda sample: sample["doc_id"])
        mine = _raw_loglikelihoods(model, tokenizer, pairs[task])
        for sample, (loglik, _) in zip(samples, mine, strict=True):
            worst = max(worst, abs(float(sample["resps"][0][0][0]) - loglik))
    with _lm_eval_untrimmed():
        score(model, tokenizer, tasks, ctx.tasks)
        untrimmed_s, untrimmed_scores = _best_times({"untrimmed": lm_eval_score}, 3)["untrimmed"]
    figure.check(lm_s / raw_s, "<=", 1.5)
    figure.details = {"lm_eval_s": round(lm_s, 3), "raw_forward_s": round(raw_s, 4),
                      "lm_eval_untrimmed_s": round(untrimmed_s, 3), "ratio_untrimmed": round(untrimmed_s / raw_s, 2),
                      "same_accuracy_untrimmed": untrimmed_scores == lm_scores, "tasks": tasks,
                      "examples": examples, "model": model_name, "same_accuracy": lm_scores == raw_scores,
                      "max_loglikelihood_difference": worst}
    figure.notes.append("lm-eval: bench.evaluate.score as the harness runs it (simple_evaluate over every scored "
                        "task's test split, batch 64, with bench.harness.context.trim_lm_eval_overheads); raw: one "
                        "tokenise + padded forward + log-softmax gather per batch of 64, same pairs; best of 5 "
                        "interleaved after a warm-up call; untrimmed: lm-eval without the trim, best of 3")
    return figure


def _trap2_protect(ctx: Any, job: Any, steps: int, lambda_: float) -> float:
    """Seconds for `Trap2(lambda, eval at the last step only).protect(owner)` with `steps` training steps."""
    from bench.harness.stages import owner_view
    from defenses.trap2 import Trap2, Trap2Config

    owner = owner_view(ctx, job)
    recipe = owner.recipe
    if job.release_format == "adapter":
        lora = recipe.lora.model_copy(update={"training": recipe.lora.training.model_copy(update={"steps": steps})})
        owner.recipe = recipe.model_copy(update={"lora": lora})
    else:
        owner.recipe = recipe.model_copy(update={"expert_training": recipe.expert_training.model_copy(
            update={"steps": steps})})
    defense = Trap2(Trap2Config.model_validate({"lambda": lambda_, "eval_every": steps + 1}))
    started = time.perf_counter()
    defense.protect(owner)
    return time.perf_counter() - started


def _per_step(measures: dict[str, Callable[[int], float]], short: int, long: int, repeats: int = 3
              ) -> dict[str, float]:
    """Seconds per step of each measure, from the best long and the best short run (fixed costs cancel).

    The measures are interleaved, so a burst of load from other processes hits them alike.
    """
    best: dict[tuple[str, int], float] = {}
    for _ in range(repeats):
        for steps in (short, long):
            for name, measure in measures.items():
                seconds = measure(steps)
                best[name, steps] = min(best.get((name, steps), seconds), seconds)
    return {name: max(best[name, long] - best[name, short], 1e-9) / (long - short) for name in measures}


def figure_trap2(ctx: Any, short: int = 5, long: int = 45) -> Figure:
    figure = Figure("trap2", "Trap² step / plain fine-tuning step", ctx.preset.name)
    try:
        import defenses.trap2  # noqa: F401
    except Exception as error:  # the defense is optional: report, do not fail the report
        figure.status = "not available"
        figure.target = "<= 2.2x"
        figure.notes.append(f"defenses.trap2 could not be imported ({type(error).__name__}: {error})")
        return figure
    import torch

    from bench.harness.grid import DefenseJob
    from bench.threads import torch_threads
    from bench.zoo.build import task_data
    from bench.zoo.training import TrainSettings, train

    model_name = ctx.zoo.model_names[0]
    task = ctx.preset.zoo.expert_tasks[0]
    job = DefenseJob("trap2", "trap2", "{}", "merge", "full", model_name, task, 0)
    recipe = ctx.preset.zoo.recipe(model_name)
    data = task_data(recipe, [task], ctx.zoo.tokenizer(model_name), recipe.expert_training.replay_fraction)

    def zoo_loop(steps: int) -> float:
        model = ctx.zoo.load_base(model_name).train()
        settings = TrainSettings(steps=steps, lr=recipe.expert_training.lr, batch_size=recipe.expert_training.batch_size)
        started = time.perf_counter()
        train(model, data, settings)
        return time.perf_counter() - started

    with torch_threads(1):  # as `make bench` runs a defense: one Ray task, one CPU, one torch thread
        per_step = _per_step({"trap2": lambda steps: _trap2_protect(ctx, job, steps, 0.01),
                              "plain": lambda steps: _trap2_protect(ctx, job, steps, 0.0), "zoo": zoo_loop},
                             short, long)
        adapter_job = dataclasses.replace(job, release_format="adapter")
        adapter = _per_step({"trap2": lambda steps: _trap2_protect(ctx, adapter_job, steps, 0.01),
                             "plain": lambda steps: _trap2_protect(ctx, adapter_job, steps, 0.0)}, short, long, 2)
    threads = torch.get_num_threads()
    all_threads = _per_step({"trap2": lambda steps: _trap2_protect(ctx, job, steps, 0.01),
                             "plain": lambda steps: _trap2_protect(ctx, job, steps, 0.0)}, short, long, 2)
    trap, plain, zoo_step = per_step["trap2"], per_step["plain"], per_step["zoo"]
    figure.check(trap / plain, "<=", 2.2)
    figure.details = {"trap2_step_ms": round(1000 * trap, 3), "plain_step_ms": round(1000 * plain, 3),
                      "zoo_train_step_ms": round(1000 * zoo_step, 3), "ratio_vs_zoo_train": round(trap / zoo_step, 2),
                      "adapter_ratio": round(adapter["trap2"] / adapter["plain"], 2),
                      "adapter_trap2_step_ms": round(1000 * adapter["trap2"], 3),
                      f"full_ratio_at_{threads}_threads": round(all_threads["trap2"] / all_threads["plain"], 2),
                      f"full_trap2_step_ms_at_{threads}_threads": round(1000 * all_threads["trap2"], 3),
                      "model": model_name, "task": task, "steps": [short, long]}
    figure.notes.append("defenses.trap2.Trap2(Trap2Config(lambda=0.01 | 0, eval_every=steps+1)).protect(owner) with "
                        "owner = bench.harness.stages.owner_view(ctx, job) (merge job, full format) and the recipe's "
                        f"expert_training.steps (adapter: lora.training.steps) set to {short} and {long}; per step = "
                        f"(best long run − best short run) / {long - short} over interleaved repeats, so set-up "
                        "cancels. lambda=0 is the same loop with the plain fine-tuning objective; zoo_train is the "
                        "zoo's own expert loop (bench.zoo.training.train). One torch thread, as a one-CPU Ray task "
                        f"runs it; the ratio at {threads} threads is reported beside it")
    return figure


def figure_flops(ctx: Any, steps: int = 20) -> Figure:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bench.zoo.build import task_data
    from bench.zoo.training import TrainSettings, batch_loss, train

    figure = Figure("flops", "training FLOP/s / matmul FLOP/s", ctx.preset.name, unit="%")
    model_name = ctx.zoo.model_names[0]
    recipe = ctx.preset.zoo.recipe(model_name)
    data = task_data(recipe, list(recipe.expert_tasks), ctx.zoo.tokenizer(model_name))
    batch = recipe.expert_training.batch_size
    model = ctx.zoo.load_base(model_name).train()
    rows = torch.arange(min(batch, data.input_ids.shape[0]))
    with FlopCounterMode(display=False) as counter:
        batch_loss(model, data, rows).backward()
    step_flops = counter.get_total_flops()  # forward + backward of one batch (optimizer update not counted)
    settings = TrainSettings(steps=steps, lr=recipe.expert_training.lr, batch_size=batch)
    train(model, data, TrainSettings(steps=2, lr=settings.lr, batch_size=batch))  # warm-up
    started = time.perf_counter()
    train(model, data, settings)
    train_rate = step_flops * steps / (time.perf_counter() - started)

    size = 1024
    left, right = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        left @ right
    repeats = 20
    started = time.perf_counter()
    for _ in range(repeats):
        left @ right
    matmul_rate = 2 * size**3 * repeats / (time.perf_counter() - started)
    figure.value = 100 * train_rate / matmul_rate
    figure.target = "report only"
    figure.details = {"train_gflops": round(train_rate / 1e9, 3), "matmul_gflops": round(matmul_rate / 1e9, 2),
                      "step_gflop": round(step_flops / 1e9, 4), "batch_size": batch, "model": model_name,
                      "threads": torch.get_num_threads(), "matmul": f"{size}x{size} fp32"}
    figure.notes.append("FLOPs of one forward+backward counted by torch.utils.flop_counter (rows sampled as the zoo "
                        "does; padding to the batch's longest row counts); time of the zoo's training loop "
                        f"(bench.zoo.training.train, {steps} steps incl. AdamW)")
    return figure


# ----------------------------------------------------------------------------- report


def _format_value(figure: Figure) -> str:
    if figure.value is None:
        return figure.status
    return f"{figure.value:.2f}%" if figure.unit == "%" else f"{figure.value:.2f}x"


def _verdict(figure: Figure) -> str:
    if figure.status != "measured":
        return figure.status
    return "report" if figure.passed is None else ("PASS" if figure.passed else "MISS")


def render(figures: list[Figure], meta: dict[str, Any]) -> str:
    lines = ["# lockbench performance report", "",
             f"Generated by `make perf` (`python -m bench.perf {meta['args']}`) on {meta['date']}, commit "
             f"{meta['commit']}, {meta['cpus']} CPU cores, torch {meta['torch']} with {meta['threads']} threads, "
             f"load average {meta['load_before']} before and {meta['load_after']} after. Each figure is measured in "
             "this run; the machine may be shared, so compare figures of one report with each other.", "",
             "| figure | measured | target | verdict | preset |", "|---|---|---|---|---|"]
    for figure in figures:
        lines.append(f"| {figure.title} | {_format_value(figure)} | {figure.target or '-'} | {_verdict(figure)} "
                     f"| `{figure.preset}` |")
    lines.append("")
    for figure in figures:
        lines += [f"## {figure.title} (`{figure.key}`, preset `{figure.preset}`)", ""]
        lines += [f"- {note}" for note in figure.notes]
        for key, value in figure.details.items():
            if key == "cached_profile_top":
                continue
            lines.append(f"- {key}: {value}")
        profile = figure.details.get("cached_profile_top")
        if profile:
            lines += ["", "Profile of the cached run (cProfile, cumulative):", "", "```", *profile, "```"]
        lines.append("")
    return "\n".join(lines)


def _meta(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return {"args": " ".join(sys.argv[1:]), "date": dt.datetime.now().isoformat(timespec="seconds"),
            "commit": commit.stdout.strip() or "unknown", "cpus": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def _guarded(figures: list[Figure], key: str, title: str, preset: str, build: Callable[[], Figure]) -> None:
    print(f"[perf] {key} on {preset} …", flush=True)
    started = time.perf_counter()
    try:
        figure = build()
    except Exception as error:  # one broken figure must not hide the others
        figure = Figure(key, title, preset, status="error", notes=[f"{type(error).__name__}: {error}"[:2000]])
    figure.details.setdefault("figure_seconds", round(time.perf_counter() - started, 1))
    figures.append(figure)
    print(f"[perf]   {_format_value(figure)} (target {figure.target or '-'}): {_verdict(figure)}", flush=True)


def _guarded_many(figures: list[Figure], keys: tuple[str, ...], preset: str, build: Callable[[], list[Figure]]) -> None:
    print(f"[perf] {', '.join(keys)} on {preset} …", flush=True)
    try:
        built = build()
    except Exception as error:
        built = [Figure(key, key, preset, status="error", notes=[f"{type(error).__name__}: {error}"[:2000]])
                 for key in keys]
    for figure in built:
        figures.append(figure)
        print(f"[perf]   {figure.key}: {_format_value(figure)} (target {figure.target or '-'}): {_verdict(figure)}",
              flush=True)


def report(args: argparse.Namespace) -> int:
    from bench.offline import enable_offline

    enable_offline()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache_preset = args.cache_preset or ("default" if args.full else args.preset)
    only = set(args.only.split(",")) if args.only else set(FIGURES)
    unknown = only - set(FIGURES)
    if unknown:
        print(f"error: unknown figure(s) {sorted(unknown)}; choose from {', '.join(FIGURES)}", file=sys.stderr)
        return 2
    meta = _meta(args)
    figures: list[Figure] = []
    if {"cache", "ray"} <= only and cache_preset == args.preset:
        _guarded_many(figures, ("cache", "ray"), args.preset, lambda: figures_cache_and_ray(args.preset, work))
    else:
        if "cache" in only:
            _guarded(figures, "cache", "cached re-run / cold run", cache_preset,
                     lambda: figure_cache(cache_preset, work))
        if "ray" in only:
            _guarded(figures, "ray", "Ray speed-up over serial", args.preset, lambda: figure_ray(args.preset, work))
    in_process = [key for key in ("merge", "lmeval", "trap2", "flops") if key in only]
    if in_process:
        from bench.harness.context import get_context
        from bench.presets import load_preset

        root = work / f"zoo-{args.preset}"
        _build_zoo(args.preset, root)
        ctx = get_context(load_preset(args.preset), root)
        builders: dict[str, tuple[str, Callable[[], Figure]]] = {
            "merge": ("mergekit-yaml / in-memory merge", lambda: figure_merge(ctx)),
            "lmeval": ("lm-eval / raw forward", lambda: figure_lmeval(ctx)),
            "trap2": ("Trap² step / plain step", lambda: figure_trap2(ctx)),
            "flops": ("training / matmul FLOP/s", lambda: figure_flops(ctx)),
        }
        for key in in_process:
            _guarded(figures, key, builders[key][0], args.preset, builders[key][1])
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"meta": meta, "figures": [asdict(f) for f in figures]}, indent=2))
    text = render(figures, meta)
    (out / "REPORT.md").write_text(text + "\n")
    print(text)
    missed = [f.key for f in figures if f.passed is False or f.status == "error"]
    return 1 if args.strict and missed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    parser.add_argument("--preset", default="smoke", help="preset of the Ray figure and the in-process figures")
    parser.add_argument("--cache-preset", default=None,
                        help="preset of the cache figure (default --preset; --full: default)")
    parser.add_argument("--full", action="store_true", help="cache figure on `default` (cold run: 20+ minutes)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--work", default=str(REPO / ".lockbench" / "perf"), help="storage roots and run dirs")
    parser.add_argument("--out", default=str(REPO / "perf"), help="where REPORT.md and report.json go")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a figure misses its target")
    once = sub.add_parser("run-once", help="(internal) one timed harness run in this process")
    once.add_argument("--preset", required=True)
    once.add_argument("--root", required=True)
    once.add_argument("--out", required=True)
    once.add_argument("--executor", default="serial")
    once.add_argument("--workers", type=int, default=2)
    once.add_argument("--result", required=True)
    once.add_argument("--profile", action="store_true")
    zoo = sub.add_parser("build-zoo", help="(internal) build the zoo and tasks a run of the preset needs")
    zoo.add_argument("--preset", required=True)
    zoo.add_argument("--root", required=True)
    args = parser.parse_args(argv)
    if args.command == "run-once":
        _run_once_main(args)
        return 0
    if args.command == "build-zoo":
        _build_zoo_main(args)
        return 0
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
