"""Column declarations: the raw cell record's columns, as the harness writes them.

A column has a kind (how it is stored and parsed), whether it may be missing, and the values it may take.
The derived columns of the cells table and the leaderboard's columns are declared with their formulas in
`bench.results.metrics`; `bench.results.schema` assembles the three tables from both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from bench.plugins import ATTACK_FAMILIES

ColumnKind = Literal["str", "int", "Int", "float", "bool", "boolean"]

#: pandas dtype each column kind is stored as once conformed.
CANONICAL_DTYPES: dict[str, str] = {
    "str": "str", "int": "int64", "Int": "Int64", "float": "float64", "bool": "bool", "boolean": "boolean",
}


@dataclass(frozen=True)
class Column:
    """One schema column: its kind, whether it may be missing, and the values it may take."""

    name: str
    kind: ColumnKind
    required: bool = False
    choices: tuple[str, ...] | None = None
    lo: float | None = None
    hi: float | None = None


def accuracy(name: str) -> Column:
    return Column(name, "float", lo=0.0, hi=1.0)


def difference(name: str) -> Column:
    """A difference of two accuracies."""
    return Column(name, "float", lo=-1.0, hi=1.0)


PROVENANCE_COLUMNS: tuple[str, ...] = (
    "lockbench_version", "torch_version", "transformers_version", "peft_version", "mergekit_version",
    "lm_eval_version", "zoo_hash", "cpu_capability",
)
#: Wall-clock columns: they differ between otherwise identical runs, so comparisons drop them.
TIMING_COLUMNS: tuple[str, ...] = ("attack_seconds", "defense_seconds")
#: Budget fractions of the finetune track's curve, and their column tags (`gain_b025` is at ¼).
BUDGETS: dict[str, float] = {"b0125": 0.125, "b025": 0.25, "b05": 0.5, "b1": 1.0}
GAIN_COLUMNS: tuple[str, ...] = tuple(f"gain_{tag}" for tag in BUDGETS)
GAIN_FRACTIONS: tuple[float, ...] = tuple(BUDGETS.values())
#: Accuracy on D after each budget fraction but the last (that one is `acc_after`).
ACC_COLUMNS: tuple[str, ...] = tuple(f"acc_{tag}" for tag in BUDGETS if tag != "b1")
#: The scales of the release diagnostics (DESIGN §5) and their column tags (`release_loss_s05` is s = ½).
DIAGNOSTIC_SCALES: dict[str, float] = {"s0125": 0.125, "s025": 0.25, "s05": 0.5, "s1": 1.0, "s2": 2.0}
DIAGNOSTIC_COLUMNS: tuple[str, ...] = tuple(
    f"release_{measure}_{tag}" for measure in ("acc", "loss") for tag in DIAGNOSTIC_SCALES)

RAW_SCHEMA: tuple[Column, ...] = (
    Column("track", "str", required=True, choices=("merge", "finetune")),
    Column("defense", "str", required=True),
    Column("defense_config", "str"),
    Column("defense_paper", "str"),
    Column("budget_reference", "str"),  # the same-budget negative control's label (DESIGN §5); empty: `none`
    Column("release_format", "str", required=True, choices=("full", "adapter")),
    Column("model", "str", required=True),
    Column("family", "str"),
    Column("attack_family", "str", choices=(*ATTACK_FAMILIES, "")),
    Column("task", "str"),
    Column("members", "str"),
    Column("n_members", "int", required=True, lo=0),
    Column("attack", "str"),
    Column("attack_config", "str"),
    Column("attack_key", "str"),
    Column("seed", "int", required=True),
    Column("status", "str", required=True, choices=("ok", "failed", "n/a")),
    Column("error", "str"),
    Column("merge_method", "str"),
    Column("merge_weights", "str"),
    Column("merge_normalize", "boolean"),
    Column("merge_lambda", "float"),
    Column("merge_density", "float", lo=0.0, hi=1.0),
    Column("merge_rescale", "boolean"),
    Column("ft_method", "str", choices=("lora", "full", "")),
    Column("ft_lr", "float", lo=0.0),
    Column("ft_steps", "Int", lo=0),
    Column("attack_knobs", "str"),  # JSON: every knob the attack reported, its search trace included
    Column("stage_acc", "str"),     # JSON {stage: accuracy on the cell's task} of the attack's intermediate models
    accuracy("utility"),
    accuracy("base_acc"),
    accuracy("merged_acc"),
    accuracy("merged_acc_members"),
    accuracy("members_expert_acc"),
    Column("merged_acc_by_member", "str"),  # JSON {task: accuracy} of the other members in the merge
    Column("base_acc_by_member", "str"),    # JSON {task: the public base's accuracy}
    Column("expert_acc_by_member", "str"),  # JSON {task: the public expert's own accuracy}
    Column("val_acc_by_task", "str"),         # JSON {task: the attacked model's accuracy on attacker_val}
    Column("val_base_by_task", "str"),        # JSON {task: the public base's accuracy on attacker_val}
    Column("val_standalone_by_task", "str"),  # JSON {task: the release (T_p) / public expert on attacker_val}
    Column("examples", "str"),                # JSON {role: {task: per-example test values}} (results.examples)
    Column("utility_tasks_acc", "str"),     # JSON {utility task: the release's lm-eval accuracy} (scored only)
    Column("base_utility_tasks_acc", "str"),  # JSON {utility task: the public base's lm-eval accuracy}
    accuracy("pre_heal_acc"),
    *(Column(name, "float", lo=0.0, hi=1.0 if "_acc_" in name else None) for name in DIAGNOSTIC_COLUMNS),
    accuracy("acc_before"),
    *(accuracy(name) for name in ACC_COLUMNS),
    accuracy("acc_after"),
    *(difference(name) for name in GAIN_COLUMNS),
    Column("attack_steps", "Int", lo=0),
    Column("attack_examples", "Int", lo=0),
    Column("attack_seconds", "float", lo=0.0),
    Column("defense_seconds", "float", lo=0.0),
    *(Column(name, "str") for name in PROVENANCE_COLUMNS),
)
RAW_COLUMNS: tuple[str, ...] = tuple(column.name for column in RAW_SCHEMA)
#: Columns added after CSVs were published without them: such a file reads them as empty, so a committed
#: baseline or an older leaderboard stays readable.
LATE_COLUMNS: tuple[str, ...] = ("attack_knobs", "stage_acc")


def json_cell(text: object) -> dict:
    """A cell that holds a JSON object (a config, accuracies by member), parsed; {} when empty."""
    return json.loads(text) if isinstance(text, str) and text else {}
