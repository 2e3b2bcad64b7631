"""How fast the coaching console's view refreshes while the robot runs.

Two measurements in one run:
  1. cost of building one frame of the view, side by side: the console's path (camera as
     prompt-toolkit fragments, text through rich) against drawing everything with rich and
     parsing the ANSI back (the obvious way); medians and the ratio;
  2. the live console (`CoachApp`) drawing to a real pseudo-terminal (160x50, truecolor) for
     --seconds while the control loop runs at 10 Hz on the simulator with the oracle planner
     and the scripted expert: frames drawn per second, control steps per second.

    python benchmarks/console_refresh.py [--seconds 10] [--image-size 128]
Writes benchmarks/results/console_refresh.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "console_refresh.json"


def frame_costs(status, repeats: int) -> dict[str, float]:
    from prompt_toolkit.formatted_text import ANSI, to_formatted_text

    from agent.console.view import render_ansi, render_fragments

    def median_ms(fn) -> float:
        fn()  # warm caches
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000

    console_path = median_ms(lambda: render_fragments(status, width=160, camera_width=48, with_messages=False))
    rich_only = median_ms(lambda: to_formatted_text(ANSI(render_ansi(status, width=160, camera_width=48))))
    return {"fragments_ms": console_path, "rich_ansi_ms": rich_only, "speedup": rich_only / console_path}


def live_console(loop, seconds: float) -> dict[str, float]:
    """Run the real console on a pty for `seconds`; count frames and control steps."""
    from prompt_toolkit.data_structures import Size
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output.vt100 import Vt100_Output

    from agent.console.app import CoachApp
    from agent.console.controller import CoachController
    from agent.loop import RealtimeRunner

    master, slave = os.openpty()
    drained = [0]

    def drain() -> None:  # play the terminal: read (and count) everything the console writes
        while True:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            drained[0] += len(chunk)

    threading.Thread(target=drain, daemon=True).start()
    terminal = os.fdopen(slave, "w", encoding="utf-8", errors="replace")
    output = Vt100_Output(terminal, lambda: Size(rows=50, columns=160), term="xterm-256color")
    runner = RealtimeRunner(loop)
    with create_pipe_input() as pipe:
        app = CoachApp(loop, CoachController(loop), runner=runner, input=pipe, output=output,
                       meta={"high_level": "oracle", "low_level": "expert"})
        timer = threading.Timer(seconds, lambda: pipe.send_text("/quit\r"))
        start_step = loop.snapshot().step
        runner.start()
        timer.start()
        t0 = time.perf_counter()
        app.run()
        elapsed = time.perf_counter() - t0
        runner.stop()
    steps = loop.snapshot().step - start_step
    terminal.close()
    os.close(master)
    return {
        "seconds": elapsed,
        "view_fps": app.tracker.frames / elapsed,
        "loop_hz": steps / elapsed,
        "frame_build_ms_median": statistics.median(app.render_seconds) * 1000,
        "terminal_bytes_per_s": drained[0] / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--family", default=None)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from agent.console.app import StatusTracker
    from agent.console.controller import CoachController
    from agent.envs import make_env
    from agent.loop import ControlLoop
    from agent.specs import make_high_level, make_low_level

    env = make_env(family=args.family, image_size=args.image_size, seed=0)
    loop = ControlLoop(env, make_high_level("oracle"), make_low_level("expert"))
    loop.reset(seed=0, options={"family": args.family} if args.family else None)
    for _ in range(5):
        loop.step()
    status = StatusTracker(CoachController(loop), {"high_level": "oracle", "low_level": "expert"}).status(loop.snapshot())

    costs = frame_costs(status, args.repeats)
    live = live_console(loop, args.seconds)

    table = Table(title=f"coaching console refresh (160x50 pty, {args.image_size}px camera drawn in 48 columns)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("frame build, console path (median)", f"{costs['fragments_ms']:.1f} ms")
    table.add_row("frame build, all-rich + ANSI parse (median)", f"{costs['rich_ansi_ms']:.1f} ms")
    table.add_row("speed-up of the console path", f"{costs['speedup']:.1f}x")
    table.add_row("live view refresh", f"{live['view_fps']:.1f} frames/s")
    table.add_row("live control loop", f"{live['loop_hz']:.1f} Hz")
    table.add_row("live frame build (median)", f"{live['frame_build_ms_median']:.1f} ms")
    table.add_row("terminal output", f"{live['terminal_bytes_per_s'] / 1024:.0f} KiB/s")
    Console().print(table)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"frame_cost": costs, "live": live, "image_size": args.image_size,
                                   "cpu_count": os.cpu_count()}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
