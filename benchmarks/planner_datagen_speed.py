"""Scenes a minute for the planner: `datagen --mode planner` (physics unrendered, both cameras
rendered only at the plans the loop asks for) against full recording (`--mode sessions`: every step
rendered and written as a session), on the same seeds, side by side in one run, one process each.

    python benchmarks/planner_datagen_speed.py [--episodes 30] [--repeats 3]

Prints a table (medians over repeats) and writes benchmarks/results/planner_datagen_speed.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.commands.datagen import record_episodes  # noqa: E402
from agent.envs.tabletop import STATE_NAMES  # noqa: E402
from agent.training import planner_frames as pf  # noqa: E402
from benchmarks.report import publish  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "planner_datagen_speed.json"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=700000)
    p.add_argument("--json", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    seeds = list(range(args.seed, args.seed + args.episodes))
    times: dict[str, list[float]] = {"planner frames (64 px from 128)": [], "full sessions (128 px)": []}
    frames = 0
    for _ in range(args.repeats):  # interleaved, so a load change on the machine hits both alike
        with tempfile.TemporaryDirectory() as tmp:
            pf.write_manifest(Path(tmp), 64, len(STATE_NAMES))
            t0 = time.perf_counter()
            frames = pf.record_shard(tmp, seeds, "base", 0.004, 64, 500, None)["frames"]
            times["planner frames (64 px from 128)"].append(time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            record_episodes(tmp, 0, seeds, "base", 0.004, 128, 500, None)
            times["full sessions (128 px)"].append(time.perf_counter() - t0)
    from rich.table import Table

    table = Table(title=f"scenes a minute, one process, {args.episodes} episodes × {args.repeats} (median)")
    for col in ("mode", "seconds", "episodes/min", "vs full"):
        table.add_column(col)
    full = statistics.median(times["full sessions (128 px)"])
    rows = {}
    for mode, ts in times.items():
        med = statistics.median(ts)
        rows[mode] = {"seconds": med, "episodes_per_min": args.episodes / med * 60, "speedup_vs_full": full / med}
        table.add_row(mode, f"{med:.1f}", f"{args.episodes / med * 60:.0f}", f"{full / med:.1f}x")
    return publish(table, {"episodes": args.episodes, "repeats": args.repeats, "planner_frames_kept": frames,
                           "modes": rows, "load": os.getloadavg()[0]}, args.json)


if __name__ == "__main__":
    raise SystemExit(main())
