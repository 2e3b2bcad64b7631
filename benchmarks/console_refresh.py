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
    """Median cost of one new frame (a new camera image, the same plan) on each path; plus the
    console path when everything changed (caches cleared: a new plan or correction)."""
    import dataclasses

    from prompt_toolkit.formatted_text import ANSI, to_formatted_text

    from agent.console import view

    def median_ms(fn, fresh_text: bool = False) -> float:
        times = []
        for i in range(repeats + 1):
            snap = dataclasses.replace(status, front=status.front.copy())  # a new frame object each time
            if fresh_text:
                view._details_cache.clear()
            t0 = time.perf_counter()
            fn(snap)
            if i:  # the first call warms imports and caches
                times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000

    console_path = median_ms(lambda s: view.render_fragments(s, width=160, camera_width=48, with_messages=False))
    console_cold = median_ms(lambda s: view.render_fragments(s, width=160, camera_width=48, with_messages=False), True)
    rich_only = median_ms(lambda s: to_formatted_text(ANSI(view.render_ansi(s, width=160, camera_width=48))))
    return {"fragments_ms": console_path, "fragments_all_new_ms": console_cold, "rich_ansi_ms": rich_only,
            "speedup": rich_only / console_path}


def live_console(loop, worker, seconds: float) -> dict[str, float]:
    """Run the real console on a pty for `seconds`; count frames and control steps."""
    from prompt_toolkit.data_structures import Size
    from prompt_toolkit.input import create_pipe_input
    from prompt_toolkit.output.vt100 import Vt100_Output

    from agent.console.app import CoachApp
    from agent.console.controller import CoachController
    from agent.inputs import Command, CommandName

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
    steps = [0]
    running = threading.Event()

    def count_steps_and_restart() -> None:
        # Count executed control steps from the loop's snapshots; start a new episode whenever
        # one ends (the expert finishes a short task in ~8 s), so the robot keeps moving.
        last = loop.snapshot()
        while running.is_set():
            time.sleep(0.05)
            snap = loop.snapshot()
            steps[0] += snap.step - last.step if snap.episode == last.episode else snap.step
            if snap.episode_over and snap.episode != getattr(count_steps_and_restart, "reset_for", None):
                count_steps_and_restart.reset_for = snap.episode
                loop.submit(Command(CommandName.RESET))
            last = snap

    with create_pipe_input() as pipe:
        app = CoachApp(loop, CoachController(loop), runner=worker, input=pipe, output=output,
                       meta={"high_level": "oracle", "low_level": "expert"})
        timer = threading.Timer(seconds, lambda: pipe.send_text("/quit\r"))
        counter = threading.Thread(target=count_steps_and_restart, daemon=True)
        running.set()
        worker.start_stepping(loop)
        counter.start()
        timer.start()
        t0, cpu0 = time.perf_counter(), time.process_time()
        app.run()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        running.clear()
        counter.join()
        worker.stop_stepping()
    if worker.error is not None:
        raise RuntimeError(f"the control loop failed during the measurement: {worker.error!r}")
    steps = steps[0]
    terminal.close()
    os.close(master)
    return {
        "seconds": elapsed,
        "view_fps": app.tracker.frames / elapsed,
        "loop_hz": steps / elapsed,  # control steps executed per second (episodes restarted when done)
        "frame_build_ms_median": statistics.median(app.render_seconds) * 1000,
        "terminal_bytes_per_s": drained[0] / elapsed,
        "cpu_share_of_one_core": cpu / elapsed,  # console + loop together, this process only
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
    from agent.console.worker import SimWorker
    from agent.envs import make_env
    from agent.loop import ControlLoop
    from agent.runtime.factory import build_loop

    def build() -> ControlLoop:  # on the simulator thread: the GL context belongs to it
        env = make_env(family=args.family, image_size=args.image_size, seed=0)
        loop = build_loop(env, "oracle", "expert")
        loop.reset(seed=0, options={"family": args.family} if args.family else None)
        for _ in range(5):
            loop.step()
        return loop

    worker = SimWorker()
    loop = worker.call(build)
    status = StatusTracker(CoachController(loop), {"high_level": "oracle", "low_level": "expert"}).status(loop.snapshot())

    load = os.getloadavg()[0]  # other work on the machine slows both the view and the loop
    costs = frame_costs(status, args.repeats)
    live = live_console(loop, worker, args.seconds)
    worker.call(loop.env.close)
    worker.close()

    table = Table(title=f"coaching console refresh (160x50 pty, {args.image_size}px camera drawn in 48 columns)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("frame build, console path, new camera frame (median)", f"{costs['fragments_ms']:.1f} ms")
    table.add_row("frame build, console path, new plan too (median)", f"{costs['fragments_all_new_ms']:.1f} ms")
    table.add_row("frame build, all-rich + ANSI parse (median)", f"{costs['rich_ansi_ms']:.1f} ms")
    table.add_row("speed-up of the console path (new camera frame)", f"{costs['speedup']:.1f}x")
    table.add_row("live view refresh", f"{live['view_fps']:.1f} frames/s")
    table.add_row("live control loop", f"{live['loop_hz']:.1f} Hz")
    table.add_row("live frame build (median)", f"{live['frame_build_ms_median']:.1f} ms")
    table.add_row("terminal output", f"{live['terminal_bytes_per_s'] / 1024:.0f} KiB/s")
    table.add_row("CPU used (console + loop)", f"{100 * live['cpu_share_of_one_core']:.0f}% of one core")
    table.add_row("machine load average (1 min)", f"{load:.1f} on {os.cpu_count()} cores")
    Console().print(table)

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"frame_cost": costs, "live": live, "image_size": args.image_size,
                                   "cpu_count": os.cpu_count(), "load_average_1min": load}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
