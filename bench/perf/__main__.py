"""`python -m bench.perf`: the report, or one of the internal child commands."""

from __future__ import annotations

import argparse
import sys

import bench.perf
from bench.perf import BUDGET_MIN, CLONE_FIGURES, FIGURES, QUICK_FIGURES, REPO
from bench.perf.report import report
from bench.perf.runs import build_zoo_main, run_once_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.perf", description=bench.perf.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(FIGURES)}")
    chosen.add_argument("--clone", action="store_true", help=f"the fresh-clone figures {','.join(CLONE_FIGURES)}")
    chosen.add_argument("--all", action="store_true", help="every figure, quick and fresh-clone")
    parser.add_argument("--preset", default="smoke", help="preset of the Ray figure and the in-process figures")
    parser.add_argument("--cache-preset", default=None,
                        help="preset of the cache figure (default --preset; --full: default)")
    parser.add_argument("--full", action="store_true", help="cache figure on `default` (cold run: 20+ minutes)")
    parser.add_argument("--budget", action="append", metavar="KEY=MINUTES",
                        help="wall-time budget of a fresh-clone figure (default "
                             + ", ".join(f"{k}={v:g}" for k, v in BUDGET_MIN.items()) + "); repeatable")
    parser.add_argument("--run", default=None, help="run directory the cost figure reads (default runs/default)")
    parser.add_argument("--work", default=str(REPO / ".lockbench" / "perf"), help="storage roots and run dirs")
    parser.add_argument("--out", default=str(REPO / "perf"), help="where REPORT.md and report.json go")
    parser.add_argument("--render", action="store_true", help="rewrite REPORT.md from report.json, measure nothing")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a figure misses its target")
    parser.epilog = f"Default: the quick figures {','.join(QUICK_FIGURES)}."
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run-once":
        run_once_main(args)
        return 0
    if args.command == "build-zoo":
        build_zoo_main(args)
        return 0
    return report(args)


if __name__ == "__main__":
    sys.exit(main())
