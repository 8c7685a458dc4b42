"""Byte-code of the venv compiled on first import and cached inside the venv, for every process that uses it.

Why: pip byte-compiles every module it installs on one core, about 40 s of a 70 s `make` set-up on 2 cores
(measured), although a run imports a fraction of them. The Makefile installs with `--no-compile` and then
`python -m bench.runtime.bytecode` writes a `.pth` file into the venv: at every interpreter start it points
`sys.pycache_prefix` at `<venv>/pycache` and lets Python write byte-code there, also where the environment
sets PYTHONDONTWRITEBYTECODE (as this project's machines do). The first import of the stack compiles what
it uses (measured: 15.4 s, then 5.5 s for every later process); subprocesses and Ray workers started from
the venv share the cache; the checkout gets no `__pycache__` folders. Nothing here runs outside the venv.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

PTH_NAME = "lockbench-pycache.pth"
#: One line of stdlib only: site.py executes lines of a .pth file that start with `import`.
PTH_LINE = ('import os, sys; sys.pycache_prefix = sys.pycache_prefix or os.path.join(sys.prefix, "pycache"); '
            "sys.dont_write_bytecode = False\n")


def install(site_packages: Path | None = None) -> Path:
    """Write the .pth file into the running interpreter's site-packages (a venv's, when run from one)."""
    if sys.prefix == sys.base_prefix and site_packages is None:
        raise SystemExit("bench.runtime.bytecode: run it with the venv's python, not the system's")
    target = Path(site_packages or sysconfig.get_paths()["purelib"]) / PTH_NAME
    target.write_text(PTH_LINE)
    return target


if __name__ == "__main__":
    print(f"byte-code cache: {install()}")
