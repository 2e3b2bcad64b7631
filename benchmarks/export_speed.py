"""How fast recorded sessions export, per format, side by side in one run.

A synthetic session (written through the real recorder) is exported --repeats times to each of:
lerobot with h264 / lossless / av1 videos, chat SFT and pairs. Reported: median seconds and
session frames per second (frames = control steps of the session; every format reads them all),
and each format's speed relative to lerobot-h264.

    python benchmarks/export_speed.py [--episodes 4] [--steps 100] [--image-size 128] [--repeats 3]
Writes benchmarks/results/export_speed.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "export_speed.json"

VARIANTS = [
    ("lerobot-h264", {"format": "lerobot", "video_codec": "h264"}),
    ("lerobot-lossless", {"format": "lerobot", "video_codec": "lossless"}),
    ("lerobot-av1", {"format": "lerobot", "video_codec": "av1"}),
    ("sft", {"format": "sft"}),
    ("pairs", {"format": "pairs"}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import os

    os.environ.setdefault("SVT_LOG", "1")  # keep SVT-AV1's banner out of the table
    from rich.console import Console
    from rich.table import Table

    from sessions.export import ExportOptions, export_sessions
    from sessions.synthetic import write_synthetic_session

    work = Path(tempfile.mkdtemp(prefix="hivla-export-bench-"))
    try:
        session = write_synthetic_session(
            work / "session", episodes=args.episodes, steps=args.steps, image_size=args.image_size, corrections_per_episode=4
        )
        frames = args.episodes * args.steps
        results = {}
        for name, opts in VARIANTS:
            times = []
            for k in range(args.repeats):
                out = work / f"{name}-{k}"
                t0 = time.perf_counter()
                report = export_sessions([session], out, ExportOptions(**opts))
                times.append(time.perf_counter() - t0)
                size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
                shutil.rmtree(out)
            median = statistics.median(times)
            results[name] = {
                "median_s": median,
                "frames_per_s": frames / median,
                "output_bytes": size,
                "rows": report.rows,
            }
        base = results["lerobot-h264"]["frames_per_s"]
        for r in results.values():
            r["speed_vs_lerobot_h264"] = r["frames_per_s"] / base

        table = Table(title=f"export speed: {args.episodes} episodes x {args.steps} steps, 2 cameras {args.image_size}px, median of {args.repeats}")
        for col in ("format", "median s", "frames/s", "x lerobot-h264", "output MB"):
            table.add_column(col, justify="right" if col != "format" else "left")
        for name, r in results.items():
            table.add_row(name, f"{r['median_s']:.2f}", f"{r['frames_per_s']:.0f}", f"{r['speed_vs_lerobot_h264']:.2f}", f"{r['output_bytes'] / 1e6:.2f}")
        Console().print(table)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({"config": vars(args), "session_frames": frames, "results": results}, indent=2) + "\n")
        print(f"wrote {RESULTS}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
