"""Where a submission is filed, and what its published files may say about where it came from.

Why: a submission is ranked against the published runs of the leaderboard it is filed into, and that
leaderboard's page lists it. Filed relative to the working directory, a submission made from outside the
repository landed in a stray `./leaderboard/` that nothing ranks it against and no page shows. So the
default is the `leaderboard/` of the lockbench checkout that runs (the repository holding the `bench`
package), and the printed path is absolute. Published files travel to other machines: they name a plugin
file by its name and sha256, never by a path of the submitter's machine.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import bench


def checkout_of_package() -> Path | None:
    """The git checkout holding the running `bench` package, or None (an installed copy)."""
    root = Path(bench.__file__).resolve().parents[1]
    return root if (root / ".git").exists() and (root / "bench").is_dir() else None


@dataclass(frozen=True)
class Placement:
    """The leaderboard a submission is filed into, its run directory, and whether that leaderboard is a
    checkout's (where the published runs live) or a stand-in chosen for lack of one."""

    leaderboard_dir: Path
    run_dir: Path
    ranked_with_published: bool

    def filed_note(self, target: Path) -> str | None:
        """The one line that says how to rank a submission filed where no published run is, or None."""
        if self.ranked_with_published:
            return None
        return (f"note: filed in {target}, outside any lockbench checkout, so it was ranked against no published run; "
                "to rank it against them, rerun the same command with --leaderboard-dir CHECKOUT/leaderboard "
                "(its cells are cached in the same storage root, so nothing is recomputed)")


def place(leaderboard_dir: Path | None, out: Path | None, folder: str) -> Placement:
    """Explicit options win; otherwise the checkout's `leaderboard/` and `runs/submissions/FOLDER`, or, without
    a checkout, the same folders under the working directory. Paths are absolute."""
    checkout = checkout_of_package()
    home = checkout or Path.cwd()
    board = Path(leaderboard_dir) if leaderboard_dir is not None else home / "leaderboard"
    run_dir = Path(out) if out is not None else home / "runs" / "submissions" / folder
    return Placement(board.resolve(), run_dir.resolve(), leaderboard_dir is not None or checkout is not None)


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def published_source(kind: str, spec: str, source: str) -> str:
    """What published files say about a plugin's origin: a file's name and sha256 (its path is private to the
    submitter's machine); a module or an entry point as it is."""
    if kind != "file":
        return source
    path = Path(spec.partition(":")[0])
    return f"file {path.name} (sha256 {file_digest(path)})"
