"""How the end-to-end benchmarks run their stages: each a documented command of this checkout, run as
a subprocess, shown on the terminal and logged with its output to one file; a failing command ends the
benchmark in one line that names the log.

    commands = CommandLog(workdir / "coaching_rounds.log", console)
    commands.hivla("run", "--suite", "base", ...)                   # python -m agent.cli run ...
    commands.script("benchmarks/offline_eval.py", "--checkpoint", ...)

    stages = TimedStages(workdir, "facts_round.log", console)      # the same, each command under a stage
    stages.hivla("a_coached_run", "run", ...)                       # name whose wall time is kept in
                                                                    # workdir/wall_times.json
"""

from __future__ import annotations

import json
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


class TimedStages(CommandLog):
    """A CommandLog whose commands each run under a stage name; the seconds of each stage are added up in
    WORKDIR/wall_times.json, kept across runs, so a resumed benchmark still reports every stage."""

    def __init__(self, workdir: Path, log_name: str, console):
        super().__init__(workdir / log_name, console)
        self.walls = workdir / "wall_times.json"
        self.wall: dict[str, float] = json.loads(self.walls.read_text()) if self.walls.is_file() else {}

    def add(self, stage: str, seconds: float) -> None:
        self.wall[stage] = self.wall.get(stage, 0.0) + seconds
        self.walls.write_text(json.dumps(self.wall, indent=1) + "\n")

    def hivla(self, stage: str, *argv) -> None:
        self.add(stage, super().hivla(*argv))

    def script(self, stage: str, path: str, *argv) -> None:
        self.add(stage, super().script(path, *argv))
