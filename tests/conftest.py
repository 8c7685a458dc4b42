"""Shared fixtures: offline switches before any Hugging Face import, and small zoos built once."""

from __future__ import annotations

import os

for _key, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                     "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402

import bench  # noqa: E402,F401  (pins the CPU code path, bench.runtime.numerics, before any test module computes)


def pytest_configure(config: pytest.Config) -> None:
    """Under `--dist loadfile`, pytest-xdist hands out test files in the order `pytest_collection_modifyitems`
    below leaves them, not re-sorted by their number of tests (a one-test file of minutes would go last and
    run alone at the end).

    Each xdist worker computes on its share of the cores (one thread with two workers on two cores): torch
    otherwise starts a thread per core in every worker, and the two workers' threads fight for the cores
    (measured: 300 Trap² steps on the ci zoo took 60 s with two threads beside another busy process, 22 s
    with one, bitwise the same result). The harness computes with one thread anyway (bench.runtime.threads)."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest first, so that two xdist workers finish together: the files with tests on the ci zoo (minutes
    each, and the first of them trains the zoo) lead, the others follow by number of tests, as xdist would
    order them. Each file's tests stay together and in their order; only whole files move."""
    from collections import Counter

    def on_ci_zoo(item: pytest.Item) -> bool:
        return "ci_root" in getattr(item, "fixturenames", ())

    counts = Counter(item.path for item in items)
    ci_files = {item.path for item in items if on_ci_zoo(item)}
    items.sort(key=lambda item: (item.path not in ci_files, -counts[item.path]))  # stable: files stay whole


@pytest.fixture(autouse=True)
def _document_tasks_stay_in_their_test():
    """A preset with `zoo.document_tasks` declares them process-wide (tasks.documents); put the declarations
    back after each test, so that no test's tasks leak into another's task list."""
    from tasks.documents import declared_sources, restore_declared

    before = declared_sources()
    yield
    restore_declared(before)


@pytest.fixture(autouse=True, scope="module")
def _test_plugins_stay_in_their_module(request):
    """Test modules register their plugins when imported, and pytest imports every module before the first
    test: each module sees the built-ins, its own plugins and those of the test helper modules it imports
    (tests/fault_plugins.py), and the registries are as they were after it. Built-in plugins live in
    packages (`defenses.trap2`); a test's or a helper's in a top-level module (`test_plugins`, `fault_plugins`)."""
    import contextlib
    import inspect

    from bench.plugins import ATTACKS, DEFENSES
    from tasks.registry import TASKS

    visible = {request.module.__name__} | {
        value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
        for value in vars(request.module).values()}
    with contextlib.ExitStack() as stack:
        for registry in (DEFENSES, ATTACKS, TASKS):
            stack.enter_context(registry.scoped())
            for name in registry.names():
                module = registry.get(name).__module__
                if "." not in module and module not in visible:
                    registry.unregister(name)
        yield


@pytest.fixture(scope="module")
def micro_ctx(micro_zoo, micro_preset):
    """The harness context of the micro zoo (one per test module)."""
    from bench.harness.context import get_context

    return get_context(micro_preset, Path(micro_zoo.root))


@pytest.fixture
def micro_run_root(micro_zoo, tmp_path: Path) -> Path:
    """A fresh storage root sharing the micro zoo (read-only), so harness runs there leave other tests alone."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "zoo").symlink_to(Path(micro_zoo.root) / "zoo", target_is_directory=True)
    return root


@pytest.fixture(scope="session")
def micro_preset():
    from bench.presets import load_preset

    return load_preset("micro")


@pytest.fixture(scope="session")
def micro_zoo(tmp_path_factory, micro_preset):
    """The micro zoo (seconds to build): plumbing tests, not accuracy."""
    from bench.zoo.build import build_zoo

    root = tmp_path_factory.mktemp("micro-root")
    return build_zoo(micro_preset.zoo, root)


@pytest.fixture(scope="session")
def ci_root(tmp_path_factory, worker_id: str) -> Path:
    """One storage root for every test of the ci zoo, with the ci zoo already in it, so its models are trained
    once per session (zoo artefacts are keyed per model, so Llama-only variants reuse them);
    `$LOCKBENCH_TEST_CI_ROOT` points at a root that may already hold them.

    Under pytest-xdist every worker process runs this fixture: they share one root (the run's common
    temporary folder unless the variable names one), and a file lock lets the first worker train the zoo
    while the others wait for it, rather than each training the same models at once."""
    from filelock import FileLock

    from bench.presets import load_preset
    from bench.zoo.build import build_zoo

    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    root = Path(os.environ.get("LOCKBENCH_TEST_CI_ROOT") or shared / "ci-root")
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".ci-zoo.lock")):
        build_zoo(load_preset("ci").zoo, root)
    return root


def no_lm_eval(*args, **kwargs):
    raise AssertionError("lm-eval was called although LOCKBENCH_SCORER names the double")


@pytest.fixture
def fake_scoring(monkeypatch: pytest.MonkeyPatch):
    """Score with the double (tests/fakes.FakeScorer) and fail if anything still calls lm-eval."""
    from fakes import FAKE_SCORER

    import bench.harness.val_scorer
    import bench.toolkit.evaluate
    from bench.harness.context import clear_contexts
    from bench.harness.scoring import SCORER_ENV

    clear_contexts()  # a context remembers its scorer
    monkeypatch.setenv(SCORER_ENV, FAKE_SCORER)
    monkeypatch.setattr(bench.toolkit.evaluate, "score", no_lm_eval)
    monkeypatch.setattr(bench.harness.val_scorer.AttackerValScorer, "__call__", no_lm_eval)
    yield
    clear_contexts()


@pytest.fixture(scope="session")
def micro_root(micro_zoo) -> Path:
    """The storage root holding the micro zoo, built once per session."""
    return Path(micro_zoo.root)


@pytest.fixture(scope="session")
def serial_run(micro_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: an uninterrupted serial CLI run with every stage after the zoo computed fresh."""
    from harness_runs import check_micro_exit, cli_run, reset_stages

    reset_stages(micro_root)
    out = tmp_path_factory.mktemp("run-serial")
    check_micro_exit(cli_run(micro_root, out))
    return out


@pytest.fixture(scope="session")
def rel_preset(micro_preset: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reliability_runs import rel_data, write_yaml

    return write_yaml(rel_data(micro_preset), tmp_path_factory.mktemp("rel") / "rel.yaml")


@pytest.fixture(scope="session")
def reference(rel_preset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The reliability tests' uninterrupted run (tests/reliability_runs.py) from an empty storage root: (root,
    run directory)."""
    from reliability_runs import check_ok, run_args, run_cli

    base = tmp_path_factory.mktemp("reference")
    root, out = base / "root", base / "run"
    check_ok(run_cli(run_args(rel_preset, root, out)), 6)
    return root, out
