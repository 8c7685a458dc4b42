"""docs/EXTENDING.md's worked examples run as written: the `shrink` defense and the `half_merge` attack,
loaded from the document's own code blocks, go through a micro run (scorer double) with `none` beside them;
the `double` task samples answers that its rule recomputes; the example metric computes its formula."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from bench.commands.submit.loading import load_file
from bench.harness.run import run_benchmark
from bench.plugins import ATTACKS, DEFENSES
from bench.presets.grid import PluginSpec
from bench.results.metrics import CellMetric
from tasks.registry import TASKS

EXTENDING = Path(__file__).resolve().parents[2] / "docs" / "EXTENDING.md"
BLOCKS = re.findall(r"```python\n(.*?)```", EXTENDING.read_text(), flags=re.S)


def _block(marker: str) -> str:
    found = [block for block in BLOCKS if marker in block]
    assert len(found) == 1, f"EXTENDING.md holds {len(found)} python blocks with {marker!r}"
    return found[0]


def test_the_defense_and_attack_examples_run_through_the_harness(micro_zoo, micro_preset, fake_scoring,
                                                                  tmp_path: Path) -> None:
    with DEFENSES.scoped(), ATTACKS.scoped():
        for name, marker in (("shrink", "class Shrink("), ("half_merge", "class HalfMerge(")):
            path = tmp_path / f"{name}.py"
            path.write_text(_block(marker))
            load_file(path)
        grid = micro_preset.grid.model_copy(update={
            "defenses": [PluginSpec(name="none"), PluginSpec(name="shrink", config={"factor": 0.5})],
            "merge_attacks": [PluginSpec(name="half_merge")], "finetune_attacks": [], "seeds": [0],
            "release_formats": ["full"]})
        summary = run_benchmark(micro_preset.model_copy(update={"grid": grid}), micro_zoo.root, tmp_path / "run",
                                console=Console(quiet=True))
    assert summary.failed == 0 and summary.frame is not None
    ran = summary.frame[(summary.frame["attack"] == "half_merge") & (summary.frame["status"] == "ok")]
    assert {"none", "shrink", "control"} <= set(ran["defense"])


def test_the_task_example_samples_what_its_rule_says() -> None:
    with TASKS.scoped():
        namespace: dict = {"__name__": "docs_double"}
        exec(compile(_block("class Double("), "EXTENDING.md", "exec"), namespace)  # noqa: S102 - our own docs
        task = TASKS.get("double")()
        rng = random.Random(0)
        for _ in range(20):
            example = task.sample(rng)
            number = int(re.fullmatch(r"double (\d+)=", example.prompt).group(1))
            assert example.answer == str(2 * number)


def test_the_metric_example_computes_its_formula() -> None:
    metric = eval(_block("CellMetric(").strip().rstrip(","), {"CellMetric": CellMetric})  # noqa: S307 - our docs
    assert isinstance(metric, CellMetric) and metric.name == "kept_protected_pct"
    values = metric.compute(pd.DataFrame({"kept_protected": [0.25, 0.5]}), None)
    assert values.tolist() == pytest.approx([25.0, 50.0])
