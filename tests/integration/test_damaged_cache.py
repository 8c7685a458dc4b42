"""Reliability (issue 8): damaged cache entries are detected and rebuilt."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import fault_plugins  # noqa: F401  (registers the fault plugins this module's runs name)
import pytest
from reliability_runs import (
    Booby,
    assert_same_results,
    check_ok,
    run_args,
    run_cli,
    sha,
    tiny_safetensors,  # noqa: F401  (fixtures)
    )

#: plumbing, not accuracy: scored by the double (tests/fakes), in-process and in subprocesses (reliability_runs.env)
pytestmark = pytest.mark.usefixtures("fake_scoring")


def _flip_bytes(path: Path, at_end: int = 64) -> None:
    data = bytearray(path.read_bytes())
    for index in range(len(data) - at_end, len(data) - at_end + 8):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.slow
def test_damaged_cache_entries_are_detected_and_rebuilt(rel_preset: Path, reference: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    """Truncated and bit-flipped safetensors in the zoo and a release, a pickle in place of an adapter, a
    garbage cell record, a truncated score file and a malformed task JSONL: the re-run rebuilds each and
    ends with the uninterrupted run's cells."""
    root = tmp_path / "root"
    shutil.copytree(reference[0], root, symlinks=True)
    marker = tmp_path / "PWNED"
    base = next((root / "zoo" / "base").glob("llama-*")) / "model.safetensors"
    expert = next((root / "zoo" / "experts").glob("llama-sort-*")) / "model.safetensors"
    adapter = next((root / "zoo" / "lora").glob("llama-sort-*"))  # only the cached adapter release used it
    cell = next(p for p in (root / "cells").glob("[!.]*.json") if json.loads(p.read_text())["track"] == "finetune")
    release = next(p for p in (root / "releases").glob("none-llama-*")
                   if json.loads((p / "metrics.json").read_text()).get("acc:successor") is not None)
    release_weights = release / "public" / "model.safetensors"  # the finetune release: the cell above needs it
    scores = next((root / "scores").glob("base-llama-*.json"))  # every recomputed cell reads it
    task_file = next((root / "tasks").glob("*/sort/test.jsonl"))
    originals = {path: sha(path) for path in (base, expert, release_weights, task_file)}

    base.write_bytes(base.read_bytes()[:-100])                        # truncated: the size check
    _flip_bytes(expert)                                                # same size: only the hash tells
    (adapter / "adapter_model.safetensors").unlink()                   # a pickle where weights were
    (adapter / "adapter_model.bin").write_bytes(pickle.dumps(Booby(marker)))
    release_weights.write_bytes(release_weights.read_bytes()[: release_weights.stat().st_size // 2])
    cell.write_text('{"status": "ok", "trunc')
    scores.write_text(scores.read_text()[:5])
    task_file.write_text("{not json\n" + task_file.read_text())

    result = run_cli(run_args(rel_preset, root, tmp_path / "run"))
    check_ok(result, 6)
    assert "6 cells (5 cached, 0 failed)" in result.stdout, result.stdout  # the truncated cell file reruns
    assert_same_results(root, tmp_path / "run", reference)
    for path, digest in originals.items():
        assert path.is_file() and sha(path) == digest, f"{path} was not rebuilt identically"
    from bench.runtime.storage import verify_directory

    assert verify_directory(adapter, deep=True) is None and not (adapter / "adapter_model.bin").exists()
    assert not marker.exists(), "the planted pickle was loaded"
    assert json.loads(cell.read_text())["status"] == "ok" and isinstance(json.loads(scores.read_text()), dict)
