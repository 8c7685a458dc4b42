"""Seeds vary every release; storage roots do not (DESIGN §5): every registered defense, on every track and
format it supports, releases other weights at another job seed, and the same weights in another storage
root (the owner's secret comes from the preset's seed, bench.harness.owner_secret)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bench.harness.context import get_context
from bench.harness.grid import DefenseJob
from bench.harness.stages import release_dir, run_defense_job
from bench.plugins import DEFENSES
from bench.zoo.build import build_zoo

pytestmark = pytest.mark.slow

#: Cheaper knobs where a defense's default budget is long; the mechanism (and its randomness) is unchanged.
CHEAP = {"pmp": {"mask_max_steps": 3}, "anti_finetune": {"outer_steps": 3, "inner_steps": 2, "probe_steps": 2},
         "trap2": {"steps": 10}}


def _jobs(name: str, seed: int) -> list[DefenseJob]:
    cls = DEFENSES.get(name)
    knobs = cls.Config.model_validate(CHEAP.get(name, {})).model_dump(mode="json", by_alias=True)
    config = json.dumps(knobs, sort_keys=True)
    jobs = [DefenseJob(name, name, config, "merge", fmt, "llama", "sort", seed) for fmt in ("full", "adapter")]
    jobs.append(DefenseJob(name, name, config, "finetune", "full", "llama", None, seed))
    return [job for job in jobs if cls(cls.Config.model_validate_json(config)).supports(job.track, job.release_format,
                                                                                      "llama")]


def _weights(ctx, job: DefenseJob) -> dict[str, torch.Tensor]:
    run_defense_job(ctx, job)
    files = sorted((release_dir(ctx, job) / "public").glob("*.safetensors"))
    assert files, job
    return {f"{path.name}:{key}": tensor for path in files for key, tensor in load_file(path).items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


#: The built-in defenses, one module each under defenses/ (not the plugins other test files register).
BUILT_IN = sorted(path.stem for path in (Path(__file__).resolve().parents[2] / "defenses").glob("*.py")
                  if not path.stem.startswith("_"))


def test_the_built_in_list_is_the_registrys() -> None:
    assert BUILT_IN and set(BUILT_IN) <= set(DEFENSES.names())


@pytest.fixture(scope="module")
def elsewhere_root(micro_preset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second storage root, its zoo built there from the preset alone (shared by this module's defenses:
    each writes only its own releases, and the seed-1 references it re-trains are the same in any root)."""
    root = tmp_path_factory.mktemp("elsewhere")
    build_zoo(micro_preset.zoo, root)
    return root


@pytest.mark.parametrize("name", BUILT_IN)
def test_seeds_vary_the_release_and_another_root_reproduces_it(name: str, micro_zoo, micro_preset,
                                                               elsewhere_root: Path) -> None:
    here = get_context(micro_preset, micro_zoo.root)
    elsewhere = get_context(micro_preset, elsewhere_root)
    jobs = _jobs(name, seed=0)
    assert jobs, f"{name} supports no track of the micro zoo's Llama-style model"
    for job in jobs:
        seed0 = _weights(here, job)
        seed1_job = dataclasses.replace(job, seed=1)
        seed1 = _weights(here, seed1_job)
        where = f"{name} {job.track}/{job.release_format}"
        assert not _same(seed0, seed1), f"{where}: seeds 0 and 1 release the same weights"
        assert _same(seed1, _weights(elsewhere, seed1_job)), f"{where}: another storage root, other weights"


def test_a_finetune_defense_transforms_its_own_seeds_base(micro_zoo, micro_preset) -> None:
    """The finetune track pairs each defense with `none` per seed: at seed 1 the owner's base is the base
    `none` releases at seed 1 (re-trained), not the zoo's seed-0 base that `none` releases at seed 0."""
    from bench.harness.stages import owner_view

    ctx = get_context(micro_preset, micro_zoo.root)
    jobs = {seed: _jobs("none", seed)[-1] for seed in (0, 1)}
    assert all(job.track == "finetune" for job in jobs.values())
    released = {seed: _weights(ctx, job) for seed, job in jobs.items()}
    anti = _jobs("anti_finetune", 1)[-1]
    base = {f"model.safetensors:{name}": tensor for name, tensor in owner_view(ctx, anti).base.state_dict().items()}
    shared = released[1].keys() & base.keys()
    assert shared, "no tensor names in common"
    assert all(torch.equal(base[key], released[1][key]) for key in shared), "seed 1's owner base is not none's"
    assert not all(torch.equal(base[key], released[0][key]) for key in shared), "seed 1's owner base is seed 0's"
