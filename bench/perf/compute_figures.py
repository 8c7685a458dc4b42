"""The in-process figures: mergekit on disk against in memory, lm-eval against a raw forward pass, a Trap²
step against a plain one, training FLOP/s against matmul FLOP/s."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness.context import lm_eval_untrimmed, trim_lm_eval_overheads
from bench.harness.grid import DefenseJob
from bench.harness.stages import owner_view
from bench.perf import Figure
from bench.perf.runs import child_env
from bench.runtime.threads import torch_threads
from bench.toolkit.evaluate import quiet_hflm_class, score
from bench.toolkit.merging import merge_state_dicts
from bench.zoo.recipes import task_data
from bench.zoo.training import TrainSettings, batch_loss, train
from defenses.trap2 import Trap2, Trap2Config
from tasks.lmeval import task_manager


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
    # local: torch and the Hugging Face stack load only where a model is touched (`import bench` stays light)
    import torch
    import yaml
    from safetensors.torch import load_file

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
            subprocess.run([str(binary), str(config_file), str(out)], env=child_env(), check=True,
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
    figure.notes.append("in memory: bench.toolkit.merging.merge_state_dicts on loaded state dicts + load_state_dict, best "
                        "of 5; on disk: `mergekit-yaml` CLI reading the zoo's safetensors and writing the merge, "
                        "faster of 2 (process start-up included, as a user pays it)")
    if difference is not None and difference > 1e-5:
        figure.notes.append(f"WARNING: the two merges differ by up to {difference:.3g}")
    return figure


def _raw_loglikelihoods(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], batch_size: int = 64
                        ) -> list[tuple[float, bool]]:
    """(sum log p(continuation | context), greedy match) per pair, as lm-eval's HFLM computes them."""
    # local: torch and the Hugging Face stack load only where a model is touched (`import bench` stays light)
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


def figure_lmeval(ctx: Any) -> Figure:
    # local: lm-eval takes seconds to import; only scoring needs it (a fully cached run never loads it)
    from lm_eval import simple_evaluate

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
    with lm_eval_untrimmed():
        score(model, tokenizer, tasks, ctx.tasks)
        untrimmed_s, untrimmed_scores = _best_times({"untrimmed": lm_eval_score}, 3)["untrimmed"]
    figure.check(lm_s / raw_s, "<=", 1.5)
    figure.details = {"lm_eval_s": round(lm_s, 3), "raw_forward_s": round(raw_s, 4),
                      "lm_eval_untrimmed_s": round(untrimmed_s, 3), "ratio_untrimmed": round(untrimmed_s / raw_s, 2),
                      "same_accuracy_untrimmed": untrimmed_scores == lm_scores, "tasks": tasks,
                      "examples": examples, "model": model_name, "same_accuracy": lm_scores == raw_scores,
                      "max_loglikelihood_difference": worst}
    figure.notes.append("lm-eval: bench.toolkit.evaluate.score as the harness runs it (simple_evaluate over every scored "
                        "task's test split, batch 64, with bench.harness.context.trim_lm_eval_overheads); raw: one "
                        "tokenise + padded forward + log-softmax gather per batch of 64, same pairs; best of 5 "
                        "interleaved after a warm-up call; untrimmed: lm-eval without the trim, best of 3")
    return figure


def _trap2_protect(ctx: Any, job: Any, steps: int, lambda_: float) -> float:
    """Seconds for `Trap2(lambda, eval at the last step only).protect(owner)` with `steps` training steps."""

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
        # local: torch and the Hugging Face stack load only where a model is touched (`import bench` stays light)
        import defenses.trap2  # noqa: F401
    except Exception as error:  # the defense is optional: report, do not fail the report
        figure.status = "not available"
        figure.target = "<= 2.2x"
        figure.notes.append(f"defenses.trap2 could not be imported ({type(error).__name__}: {error})")
        return figure
    import torch

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
    # local: torch and the Hugging Face stack load only where a model is touched (`import bench` stays light)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

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


