"""The defense settings of a run's strength sweeps (DESIGN §9): which labels are Trap² at which λ and
step budget, and which are PMP at which mask ratio and complement mode, read off `cells.csv`'s
`defense_config`. The claims table and the trade-off plots both start here."""

from __future__ import annotations

import pandas as pd

from bench.results.columns import json_cell

#: Trap²'s own default λ (its paper trains at 1e-2): the setting its claims are checked at.
TRAP2_PAPER_LAMBDA = 0.01


def trap2_settings(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per Trap² label: `defense`, `lambda_` (λ), `steps` (None: the zoo's expert budget)."""
    rows = []
    for label, text in cells[["defense", "defense_config"]].drop_duplicates("defense").itertuples(index=False):
        config = json_cell(text)
        if {"lambda", "s_min", "s_max"} <= set(config):
            rows.append({"defense": label, "lambda_": float(config["lambda"]), "steps": config.get("steps")})
    return pd.DataFrame(rows, columns=["defense", "lambda_", "steps"])


def pmp_settings(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per PMP label: `defense`, `rho`, `complement` (frozen / projected)."""
    rows = []
    for label, text in cells[["defense", "defense_config"]].drop_duplicates("defense").itertuples(index=False):
        config = json_cell(text)
        if {"rho", "complement", "mask_max_steps"} <= set(config):
            rows.append({"defense": label, "rho": float(config["rho"]), "complement": config["complement"]})
    return pd.DataFrame(rows, columns=["defense", "rho", "complement"])


def has_sweep(cells: pd.DataFrame) -> bool:
    """A run sweeps a paper's strength knob when it holds two or more settings of Trap² or of PMP."""
    return len(trap2_settings(cells)) >= 2 or len(pmp_settings(cells)) >= 2


def trap2_reference(settings: pd.DataFrame) -> str | None:
    """The Trap² label its claims are checked at: λ closest to the paper's, at the zoo's budget if any (never
    λ = 0, which is the control without the trap term)."""
    settings = settings[settings["lambda_"] > 0]
    if settings.empty:
        return None
    ranked = settings.assign(budget=settings["steps"].notna(),
                             distance=(settings["lambda_"] - TRAP2_PAPER_LAMBDA).abs())
    return str(ranked.sort_values(["budget", "distance", "lambda_"], kind="mergesort")["defense"].iloc[0])


def attack_config(cells: pd.DataFrame) -> pd.Series:
    """Each cell's attack configuration, parsed."""
    return cells["attack_config"].map(json_cell)


def paper_protocol_mask(cells: pd.DataFrame) -> pd.Series:
    """Cells of Trap²'s own merge protocol: the shared-coefficient search (`adaptive_coefficient`, under any
    label, known by its configuration) chosen by the mean normalised accuracy of all members (objective
    `normalised`), at the run's largest merge."""
    configs = attack_config(cells)
    # astype: mapping an empty column keeps its string dtype, which `&` with a boolean mask refuses
    searched = configs.map(lambda c: {"coefficients", "patience", "method"} <= set(c)
                           and c.get("objective") == "normalised").astype(bool)
    normalised = searched & (cells["track"] == "merge")
    largest = cells.loc[normalised, "n_members"].max() if normalised.any() else None
    return normalised & (cells["n_members"] == largest)


def protocol_method(cells: pd.DataFrame) -> pd.Series:
    """The mergekit method of each cell's attack configuration (task_arithmetic, ties, dare_ties, …)."""
    return attack_config(cells).map(lambda c: str(c.get("method", "")))
