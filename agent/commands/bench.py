"""`hivla bench NAME [ARGS...]`: run a benchmark script from benchmarks/ (each prints a table and
writes JSON to benchmarks/results/)."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def available() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if not p.stem.startswith("_"))


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="benchmark name (omit to list them)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the benchmark")


def main(args: argparse.Namespace) -> int:
    names = available()
    if not args.name:
        print("benchmarks: " + ", ".join(names))
        return 0
    if args.name not in names:
        print(f"unknown benchmark {args.name!r}; available: {', '.join(names) or '(none)'}", file=sys.stderr)
        return 2
    sys.argv = [str(BENCH_DIR / f"{args.name}.py"), *args.args]
    runpy.run_path(sys.argv[0], run_name="__main__")
    return 0
