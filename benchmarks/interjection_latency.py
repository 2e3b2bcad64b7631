"""Interjection latency and recorder cost of the control loop, with the real simulator.

1. Latency: the loop runs in real time (10 Hz) on its own thread, exactly as under `hivla coach`.
   Another thread plays the person: at random moments it "presses Enter" on an override naming a
   block in the scene (the text goes through the same classifier as console input). We measure
   from that instant to the first action executed under the new subtask (ControlLoop records it
   when the action is chosen, right before env.step). Target: p95 under 150 ms.
2. Recorder cost: the same episodes stepped as fast as possible, with and without a session
   recorder, interleaved in one process run; the cost is the difference of the median step times.
   Target: under 2% of a control step.

    python benchmarks/interjection_latency.py [--corrections 100] [--image-size 128]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from agent.coaching.classify import classify
from agent.envs import make_env
from agent.envs.tabletop import ACTION_NAMES, CAMERAS, STATE_NAMES
from agent.console.worker import SimWorker
from agent.runtime.factory import build_loop
from sessions.recorder import SessionRecorder, make_header

RESULTS = Path(__file__).resolve().parent / "results" / "interjection_latency.json"


def _recorder(root: Path, name: str, image_size: int = 128) -> SessionRecorder:
    header = make_header(
        high_level="oracle",
        low_level="expert",
        cameras={c: (image_size, image_size) for c in CAMERAS},
        state_names=list(STATE_NAMES),
        action_names=list(ACTION_NAMES),
    )
    return SessionRecorder(root / name, header)


def measure_latency(n_corrections: int, image_size: int, seed: int) -> list[float]:
    # The simulator is built, stepped and closed on one thread (EGL contexts are thread-bound),
    # the same SimWorker that `hivla coach` uses; this thread plays the person at the keyboard.
    worker = SimWorker()
    env = worker.call(lambda: make_env(family="sort_into_bowls", image_size=image_size))
    loop = build_loop(env, "oracle", "expert", seed=seed)
    rng = random.Random(seed)
    latencies: list[float] = []
    episode_seed = seed
    try:
        while len(latencies) < n_corrections:
            blocks = list(worker.call(lambda: loop.reset(seed=episode_seed)).privileged.blocks)
            worker.start_stepping(loop)
            for _ in range(10):  # ten corrections per episode, then a fresh scene
                time.sleep(rng.uniform(0.3, 0.8))
                snap = loop.snapshot()
                if snap is None or snap.episode_over or worker.error:
                    break
                current = snap.plan.subtask if snap.plan else ""
                candidates = [f"pick up the {b}" for b in blocks if f"pick up the {b}" != current]
                before = len(loop.correction_latencies)
                loop.submit(classify("/override " + rng.choice(candidates)))  # Enter pressed now
                deadline = time.perf_counter() + 2.0
                while len(loop.correction_latencies) == before and time.perf_counter() < deadline:
                    time.sleep(0.002)
                if len(loop.correction_latencies) > before:
                    latencies.append(loop.correction_latencies[-1])
            worker.stop_stepping()
            if worker.error:
                raise worker.error
            episode_seed += 1
    finally:
        worker.call(env.close)
        worker.close()
    return latencies[:n_corrections]


class _TimedRecorder:
    """Forwards to a SessionRecorder and adds up the time the control loop spends in its calls."""

    def __init__(self, recorder: SessionRecorder) -> None:
        self.recorder = recorder
        self.seconds = 0.0

    def record_step(self, step, images) -> None:
        started = time.perf_counter()
        self.recorder.record_step(step, images)
        self.seconds += time.perf_counter() - started

    def record(self, event) -> None:
        started = time.perf_counter()
        self.recorder.record(event)
        self.seconds += time.perf_counter() - started

    def close(self) -> None:
        self.recorder.close()


def measure_recorder_cost(steps: int, image_size: int, seed: int) -> dict:
    """Two identical loops on identical scenes, one recording, stepped alternately so that machine
    noise falls on both alike; the cost is the difference of their median step times."""
    times: dict[str, list[float]] = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as tmp:
        loops = {}
        for setting in times:
            env = make_env(family="stack_three", image_size=image_size)
            recorder = _TimedRecorder(_recorder(Path(tmp), setting, image_size)) if setting == "with" else None
            loops[setting] = build_loop(env, "oracle", "expert", recorder=recorder)
            loops[setting].reset(seed=seed)
        episode_seed = seed
        for i in range(steps):
            order = list(loops.items()) if i % 2 == 0 else list(loops.items())[::-1]  # no order bias
            for setting, loop in order:
                started = time.perf_counter()
                loop.step()
                times[setting].append(time.perf_counter() - started)
            if any(loop.snapshot().episode_over for loop in loops.values()):
                episode_seed += 1
                for loop in loops.values():
                    loop.reset(seed=episode_seed)
        for loop in loops.values():
            if loop.recorder is not None:
                loop.recorder.close()
            loop.env.close()
    without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
    in_recorder = loops["with"].recorder.seconds / len(times["with"])
    return {
        "recorder_calls_per_step_ms": in_recorder * 1e3,
        "recorder_calls_share": in_recorder / without,
        "median_step_without_recorder_ms": without * 1e3,
        "median_step_with_recorder_ms": with_ * 1e3,
        "recorder_cost_ms": (with_ - without) * 1e3,
        "recorder_cost_share": (with_ - without) / without,
        "steps_per_setting": len(times["without"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corrections", type=int, default=100)
    parser.add_argument("--steps", type=int, default=600, help="control steps per setting (recorder cost)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    latencies = np.array(measure_latency(args.corrections, args.image_size, args.seed)) * 1e3
    cost = measure_recorder_cost(args.steps, args.image_size, args.seed)
    result = {
        "corrections": int(len(latencies)),
        "latency_p50_ms": float(np.percentile(latencies, 50)),
        "latency_p95_ms": float(np.percentile(latencies, 95)),
        "latency_max_ms": float(latencies.max()),
        "latency_target_p95_ms": 150.0,
        **cost,
        "recorder_target_share": 0.02,
        "image_size": args.image_size,
    }

    table = Table(title="interjection latency and recorder cost (oracle + expert, real time 10 Hz)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    table.add_row("corrections", str(result["corrections"]), "")
    table.add_row("Enter -> first action, p50", f"{result['latency_p50_ms']:.1f} ms", "")
    table.add_row("Enter -> first action, p95", f"{result['latency_p95_ms']:.1f} ms", "< 150 ms")
    table.add_row("median step, no recorder", f"{cost['median_step_without_recorder_ms']:.2f} ms", "")
    table.add_row("median step, recorder", f"{cost['median_step_with_recorder_ms']:.2f} ms", "")
    table.add_row("time in recorder calls per step", f"{cost['recorder_calls_per_step_ms']:.3f} ms ({cost['recorder_calls_share']:.1%})", "< 2%")
    table.add_row("step time difference (A/B)", f"{cost['recorder_cost_ms']:.3f} ms ({cost['recorder_cost_share']:.1%})", "")
    Console().print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
