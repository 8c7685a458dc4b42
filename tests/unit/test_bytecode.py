"""The venv's byte-code cache (bench.runtime.bytecode): a process that reads the .pth file writes its byte-code
under `<prefix>/pycache`, even where the environment forbids writing byte-code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.runtime.bytecode import PTH_NAME, install


def test_the_pth_file_points_every_process_at_the_venv_cache(tmp_path: Path) -> None:
    written = install(tmp_path)
    assert written == tmp_path / PTH_NAME
    probe = (f"import site; site.addsitedir({str(tmp_path)!r}); import sys; "
             "print(sys.pycache_prefix); print(sys.dont_write_bytecode)")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPYCACHEPREFIX", None)
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    prefix, forbidden = out.stdout.split()
    assert Path(prefix) == Path(sys.prefix) / "pycache" and forbidden == "False", out.stdout
