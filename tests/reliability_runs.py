"""What the reliability tests share (issue 8): `rel`, micro's Llama zoo with a 3-cell grid of the fault
plugins (tests/fault_plugins.py, so results do not move when the reference attacks are retuned), the
subprocess environment and CLI runs, comparisons of runs, and bad model folders; the uninterrupted
reference run is conftest's `reference`. Crashes are injected with LOCKBENCH_FAULT
(bench.runtime.storage.fault_point): the process SIGKILLs itself at a named moment, which is what an
external kill at that moment does, only reproducibly."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from fakes import FAKE_SCORER

from bench.harness.scoring import SCORER_ENV

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
PLUGINS = "fault_plugins"  # what LOCKBENCH_PLUGINS imports in subprocesses and Ray workers
TIMEOUT_S = 600


def run_env(**extra: str) -> dict[str, str]:
    """A subprocess environment: offline, the fault plugins, no inherited Ray cluster or fault."""
    from bench.runtime.offline import OFFLINE_ENV

    variables = {key: value for key, value in os.environ.items()
                 if key not in ("RAY_ADDRESS", "LOCKBENCH_FAULT", "LOCKBENCH_DEBUG", "LOCKBENCH_PLUGINS")}
    variables.update(OFFLINE_ENV)
    # One torch thread: as fast for micro's tiny models, and immune to oversubscription on a busy machine.
    variables.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    variables["LOCKBENCH_PLUGINS"] = PLUGINS
    variables[SCORER_ENV] = FAKE_SCORER  # plumbing: no lm-eval in the CLI or its Ray workers either
    variables["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(REPO), variables.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    variables.update(extra)
    return variables


def rel_data(micro_preset: Any, **grid: Any) -> dict[str, Any]:
    """micro's zoo with Llama only, and a grid of this module's plugins (3 cells and their 3 controls unless
    overridden)."""
    data = micro_preset.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["name"] = "rel"
    data["zoo"]["models"] = {"llama": data["zoo"]["models"]["llama"]}
    data["grid"] = {"defenses": [{"name": "none"}], "merge_attacks": [{"name": "rel_merge"}],
                    "finetune_attacks": [{"name": "rel_finetune"}], "seeds": [0],
                    "release_formats": ["full", "adapter"], "protected_tasks": ["sort"], "budget_fractions": [1.0],
                    **grid}
    return data


def write_yaml(data: Any, path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: int = TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lockbench"), *args], env=env or run_env(), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def run_args(preset: Path, root: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--preset", str(preset), "--root", str(root), "--out", str(out), *extra]


def check_ok(result: subprocess.CompletedProcess, cells: int) -> None:
    """A finished run: micro is too small to pass the validity rule, so exit 1 with VALIDITY lines is fine."""
    detail = f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode in (0, 1), detail
    assert f"{cells} cells (" in result.stdout and " 0 failed)" in result.stdout, detail
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert all("broke the validity rule" in line for line in errors), detail  # the exit-1 rule line only
    assert (result.returncode == 1) == bool(errors), detail
    assert "Traceback" not in result.stderr, detail


def run_cells(run_dir: Path) -> Any:
    import pandas as pd

    from bench.results import TIMING_COLUMNS

    frame = pd.read_csv(run_dir / "cells.csv", dtype=str, keep_default_na=False)
    return frame.drop(columns=[c for c in TIMING_COLUMNS if c in frame.columns])


def assert_same_cells(actual: Path, expected: Path) -> None:
    import pandas as pd

    pd.testing.assert_frame_equal(run_cells(actual), run_cells(expected), check_exact=True)


def records(root: Path) -> dict[str, Any]:
    """Every cached cell record (with the weight fingerprints the CSV does not carry), minus wall-clock times."""
    return {path.name: {k: v for k, v in json.loads(path.read_text()).items() if not k.endswith("_seconds")}
            for path in sorted((root / "cells").glob("[!.]*.json"))}


def digests(root: Path, folder: str) -> dict[str, str]:
    """SHA-256 of every weights file under root/folder, by relative path (names are content hashes)."""
    return {str(p.relative_to(root)): sha(p) for p in sorted((root / folder).rglob("*.safetensors"))
            if not any(part.startswith(".") for part in p.relative_to(root).parts)}


def assert_same_results(root: Path, out: Path, reference: tuple[Path, Path]) -> None:
    """Same cells.csv, same cell records (weights fingerprints included), same release weights."""
    assert_same_cells(out, reference[1])
    assert records(root) == records(reference[0])
    assert digests(root, "releases") == digests(reference[0], "releases")


def hidden(root: Path) -> list[Path]:
    """Scratch and temporary entries anywhere under `root` (names starting with a dot)."""
    return sorted(p for p in root.rglob(".*") if p.name != ".complete")


def zoo_copy(reference_root: Path, target: Path) -> Path:
    """A storage root holding only the reference's zoo and tasks: every later stage is recomputed."""
    target.mkdir(parents=True)
    for name in ("zoo", "tasks"):
        shutil.copytree(reference_root / name, target / name, symlinks=True)
    return target


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, f"expected one error line, got:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def assert_no_csv(out: Path) -> None:
    leftovers = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    assert not leftovers, f"a failed run left files in {out}: {leftovers}"


# bad model folders (a user's `pretrained:` path), shared by the bad-input, safe-loading and damaged-cache tests


def pretrained_dir(kind: str) -> Callable[[Any, Path], list[str]]:
    """A zoo whose Llama is a user-supplied folder: missing, pickle-only, custom-code or truncated."""
    def make(micro_preset: Any, tmp: Path) -> list[str]:
        folder = tmp / "model"
        if kind != "missing":
            folder.mkdir()
            config: dict[str, Any] = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
            if kind == "pickle":
                (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Booby(tmp / "PWNED")))
            if kind == "custom-code":
                config.update(model_type="rel_evil", auto_map={"AutoModelForCausalLM": "evil.Evil"})
                (folder / "evil.py").write_text(f"open({str(tmp / 'PWNED')!r}, 'w').close()\n")
                (folder / "model.safetensors").write_bytes(tiny_safetensors())
            if kind == "truncated":
                (folder / "model.safetensors").write_bytes(tiny_safetensors()[:-7])
            (folder / "config.json").write_text(json.dumps(config))
        data = rel_data(micro_preset)
        data["zoo"]["models"]["llama"] = {"pretrained": str(folder)}
        return ["--preset", str(write_yaml(data, tmp / "bad.yaml"))]
    return make


class Booby:
    """Unpickling this touches a file: proof that a pickle was (never) loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def tiny_safetensors() -> bytes:
    from safetensors.torch import save

    return save({"weight": torch.ones(4, 4)})
