"""The trials-to-break curve: running best of a search trace, carried forward, averaged per defense."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.report.trials_plot import best_so_far, plot_trials_to_break, trial_curves


def _cell(defense: str, values: list[float], key: str = "trace", attack: str = "per_member") -> dict:
    return {"track": "merge", "model": "llama", "attack": attack, "defense": defense, "status": "ok",
            "attack_knobs": json.dumps({key: [{"weight": i, "val": v} for i, v in enumerate(values)]})}


def test_best_so_far_is_the_running_maximum_in_trial_order() -> None:
    assert best_so_far(json.dumps({"trace": [{"val": 0.2}, {"val": 0.1}, {"val": 0.5}, {"val": 0.4}]})) == [
        0.2, 0.2, 0.5, 0.5]
    assert best_so_far(json.dumps({"trials": [{"val": 0.3}]})) == [0.3]  # the Optuna study's key
    assert best_so_far(json.dumps({"method": "ties"})) is None and best_so_far(None) is None


def test_curves_carry_a_stopped_search_forward_and_average_per_defense() -> None:
    cells = pd.DataFrame([_cell("none", [0.1, 0.6, 0.5]), _cell("trap2", [0.0, 0.2]), _cell("trap2", [0.4]),
                          _cell("control", [0.9, 0.9, 0.9])])
    curves = trial_curves(cells)
    assert set(curves["defense"]) == {"none", "trap2"}, "controls are no defense"
    trap = curves[curves["defense"] == "trap2"].sort_values("trial")
    assert trap["best_val"].tolist() == pytest.approx([0.2, 0.3, 0.3])  # (0.0, 0.2, 0.2) and (0.4, 0.4, 0.4)
    assert trap["inputs"].unique().tolist() == [2]


def test_one_png_per_track_and_model_with_a_searched_attack(tmp_path: Path) -> None:
    cells = pd.DataFrame([_cell("none", [0.1, 0.6]), _cell("trap2", [0.0, 0.2]),
                          {**_cell("none", []), "attack": "ties", "attack_knobs": json.dumps({"method": "ties"})}])
    written = plot_trials_to_break(cells, tmp_path)
    assert [path.name for path in written] == ["trials_merge_llama.png"]
    assert written[0].read_bytes().startswith(b"\x89PNG")
