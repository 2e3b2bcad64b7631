"""What recording costs the control loop, side by side in one run.

  background   SessionRecorder.record_step (copy the images, enqueue; a writer thread compresses,
               writes and fsyncs every 0.5 s) -- what hivla does
  synchronous  the same frame records compressed and written in the caller's thread, flushed
               every step (the obvious way)

Reported: median and p99 caller cost per step (2 cameras), the ratio, writer throughput when
the loop does not wait (steps/s until the queue drains), and bytes on disk per step.

    python benchmarks/recorder_cost.py [--steps 300] [--image-size 128]
Writes benchmarks/results/recorder_cost.json.
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

RESULTS = Path(__file__).resolve().parent / "results" / "recorder_cost.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=128)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from sessions.frames import encode_frame
    from sessions.recorder import SessionRecorder, make_header
    from sessions.schema import EpisodeStart, Step
    from sessions.synthetic import synthetic_image

    size = args.image_size
    images = [{cam: synthetic_image(0, 0, k % 50, cam, size) for cam in ("front", "wrist")} for k in range(50)]
    header = make_header(high_level="oracle", low_level="expert", cameras={"front": (size, size), "wrist": (size, size)},
                         state_names=[f"s{i}" for i in range(8)], action_names=["dx", "dy", "dz", "dyaw", "grip"])

    def step(k: int) -> Step:
        return Step(episode=0, step=k, frame=k, time=k / 10, wall_time=time.time(), state=[0.0] * 8, action=[0.0] * 5, plan_id=0, subtask="pick up the red block")

    work = Path(tempfile.mkdtemp(prefix="hivla-recorder-bench-"))
    try:
        # background recorder, paced like the loop (a short sleep between steps)
        costs_bg = []
        with SessionRecorder(work / "bg", header) as rec:
            rec.start_episode(EpisodeStart(episode=0, task="t", wall_time=time.time()))
            for k in range(args.steps):
                s = step(k)
                t0 = time.perf_counter()
                rec.record_step(s, images[k % 50])
                costs_bg.append(time.perf_counter() - t0)
                time.sleep(0.005)
        disk = sum(p.stat().st_size for p in (work / "bg").rglob("*") if p.is_file())

        # synchronous writes in the caller
        costs_sync = []
        (work / "sync").mkdir()
        with open(work / "sync" / "front.bin", "ab") as f_front, open(work / "sync" / "wrist.bin", "ab") as f_wrist, open(work / "sync" / "events.jsonl", "ab") as f_ev:
            for k in range(args.steps):
                s = step(k)
                t0 = time.perf_counter()
                f_front.write(encode_frame(k, images[k % 50]["front"]))
                f_wrist.write(encode_frame(k, images[k % 50]["wrist"]))
                f_ev.write(s.model_dump_json().encode() + b"\n")
                for f in (f_front, f_wrist, f_ev):
                    f.flush()
                costs_sync.append(time.perf_counter() - t0)
                time.sleep(0.005)

        # writer throughput: enqueue as fast as possible, time until closed (drained + synced)
        t0 = time.perf_counter()
        with SessionRecorder(work / "burst", header, max_pending=10_000) as rec:
            rec.start_episode(EpisodeStart(episode=0, task="t", wall_time=time.time()))
            for k in range(args.steps):
                rec.record_step(step(k), images[k % 50])
        burst_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def summary(costs):
        us = sorted(c * 1e6 for c in costs)
        return {"median_us": statistics.median(us), "p99_us": us[int(0.99 * (len(us) - 1))]}

    results = {
        "background": summary(costs_bg),
        "synchronous": summary(costs_sync),
        "writer_steps_per_s": args.steps / burst_s,
        "bytes_per_step": disk / args.steps,
    }
    results["caller_speedup_median"] = results["synchronous"]["median_us"] / results["background"]["median_us"]
    table = Table(title=f"recorder cost per control step: 2 cameras {size}px, {args.steps} steps")
    for col in ("path", "median us", "p99 us"):
        table.add_column(col, justify="right" if col != "path" else "left")
    for name in ("background", "synchronous"):
        table.add_row(name, f"{results[name]['median_us']:.0f}", f"{results[name]['p99_us']:.0f}")
    Console().print(table)
    Console().print(
        f"caller speed-up (median): {results['caller_speedup_median']:.1f}x   writer throughput: "
        f"{results['writer_steps_per_s']:.0f} steps/s   disk: {results['bytes_per_step'] / 1e3:.1f} kB/step"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"config": vars(args), "results": results}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
