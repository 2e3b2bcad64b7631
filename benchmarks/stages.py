"""How the end-to-end benchmarks run their stages: each a documented command of this checkout, run as
a subprocess, shown on the terminal and logged with its output to one file; a failing command ends the
benchmark in one line that names the log.

    commands = CommandLog(workdir / "coaching_rounds.log", console)
    commands.hivla("run", "--suite", "base", ...)                   # python -m agent.cli run ...
    commands.script("benchmarks/offline_eval.py", "--checkpoint", ...)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class CommandLog:
    def __init__(self, log: Path, console):
        self.log = log
        self.console = console

    def hivla(self, *argv) -> float:
        """`hivla ARGV` (as `python -m agent.cli`); the seconds it took."""
        return self.run(["-m", "agent.cli", *map(str, argv)], f"hivla {' '.join(map(str, argv))}")

    def script(self, path: str, *argv) -> float:
        """`python PATH ARGV`, PATH relative to the checkout; the seconds it took."""
        return self.run([str(ROOT / path), *map(str, argv)], f"python {path} {' '.join(map(str, argv))}")

    def run(self, argv: list[str], shown: str) -> float:
        started = time.perf_counter()
        self.console.print(f"[dim]$ {shown}[/dim]", soft_wrap=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log.open("a") as f:
            f.write(f"\n$ {shown}\n")
            f.flush()
            done = subprocess.run([sys.executable, *argv], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
            f.write(f"[exit {done.returncode} after {time.perf_counter() - started:.0f}s]\n")
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(shown.split()[:2])} failed (exit {done.returncode}); see {self.log}")
        return time.perf_counter() - started
