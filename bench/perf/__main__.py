"""`python -m bench.perf`: the report, or one of the internal child commands."""

from __future__ import annotations

import argparse
import sys

from bench.perf import FIGURES, REPO
from bench.perf.report import report
from bench.perf.runs import build_zoo_main, run_once_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    parser.add_argument("--preset", default="smoke", help="preset of the Ray figure and the in-process figures")
    parser.add_argument("--cache-preset", default=None,
                        help="preset of the cache figure (default --preset; --full: default)")
    parser.add_argument("--full", action="store_true", help="cache figure on `default` (cold run: 20+ minutes)")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(FIGURES)}")
    parser.add_argument("--work", default=str(REPO / ".lockbench" / "perf"), help="storage roots and run dirs")
    parser.add_argument("--out", default=str(REPO / "perf"), help="where REPORT.md and report.json go")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a figure misses its target")
    once = sub.add_parser("run-once", help="(internal) one timed harness run in this process")
    once.add_argument("--preset", required=True)
    once.add_argument("--root", required=True)
    once.add_argument("--out", required=True)
    once.add_argument("--executor", default="serial")
    once.add_argument("--workers", type=int, default=2)
    once.add_argument("--result", required=True)
    once.add_argument("--profile", action="store_true")
    zoo = sub.add_parser("build-zoo", help="(internal) build the zoo and tasks a run of the preset needs")
    zoo.add_argument("--preset", required=True)
    zoo.add_argument("--root", required=True)
    args = parser.parse_args(argv)
    if args.command == "run-once":
        run_once_main(args)
        return 0
    if args.command == "build-zoo":
        build_zoo_main(args)
        return 0
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
