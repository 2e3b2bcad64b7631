"""Does the console keep its set speed with learned models at both levels, with a core busy?

The loop runs as under `hivla coach`: the simulator thread (agent.console.worker.SimWorker) steps it
at the set speed (agent.console.pace.Pace), the session recorder writes every step to disk, the
shipped planner (pi05) and the shipped VLA act. Beside it a busy-loop process holds one core, as a
training run beside the console would. This thread plays the person: every few seconds it presses
Enter on an override (a subtask of the task, not the one in force) or a negation of the subtask in
force, and the loop measures the time to the first action under the new subtask.

Three settings, alternated in segments in one process run (so load changes fall on all):
  before  the high level plans inside the control step (async_planning=False), torch's default threads
  sync-1  the same with one intra-op thread (what the thread count alone buys)
  after   the high level on its own thread (async_planning=True), one intra-op thread per computing
          thread (agent.planner_thread.set_inference_threads): the console's setting
An override's effect needs no plan; a negation's needs the planner's next plan (the robot holds
until it lands), so the two are reported apart.

    python benchmarks/console_speed.py [--speed 1] [--seconds 60] [--busy-cores 1]
Writes benchmarks/results/console_speed.json.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import publish  # noqa: E402
from agent.cli import quiet_openmp  # noqa: E402

quiet_openmp()  # before torch loads, as `hivla` does: idle OpenMP workers sleep, not spin

from agent.console.pace import Pace  # noqa: E402
from agent.console.worker import SimWorker  # noqa: E402
from agent.envs import make_env  # noqa: E402
from agent.envs.tabletop import ACTION_NAMES, CAMERAS, STATE_NAMES  # noqa: E402
from agent.loop import CONTROL_HZ  # noqa: E402
from agent.runtime.factory import build_loop  # noqa: E402
from agent.planner_thread import set_inference_threads  # noqa: E402
from agent.specs import default_high_level_spec, default_low_level_spec  # noqa: E402
from policies.types import Correction, CorrectionKind  # noqa: E402
from sessions.recorder import SessionRecorder, make_header  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "console_speed.json"
BUSY = "while True: pass"
SETTINGS = ("before", "sync-1", "after")


class PlanLog:
    """Forwards to the session recorder and keeps the plan events (asked -> landed)."""

    def __init__(self, recorder: SessionRecorder) -> None:
        self.recorder = recorder
        self.plans: list = []

    def record(self, event) -> None:
        if getattr(event, "type", "") == "plan":
            self.plans.append(event)
        self.recorder.record(event)

    def record_step(self, step, images) -> None:
        self.recorder.record_step(step, images)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_segment(setting: str, seconds: float, speed: float, root: Path, args, rng: random.Random, seed: int) -> dict:
    asynchronous = setting == "after"
    import torch

    if asynchronous:
        threads = set_inference_threads()
    else:
        threads = args.default_threads if setting == "before" else 1
        torch.set_num_threads(threads)
    worker = SimWorker()
    high_spec, low_spec = default_high_level_spec(), default_low_level_spec()

    def build():
        env = make_env(suite="base", image_size=args.image_size, seed=seed)
        header = make_header(high_level=high_spec, low_level=low_spec,
                             cameras={c: (args.image_size, args.image_size) for c in CAMERAS},
                             state_names=list(STATE_NAMES), action_names=list(ACTION_NAMES))
        log = PlanLog(SessionRecorder(root / f"{setting}-{seed}", header))
        loop = build_loop(env, high_spec, low_spec, seed=seed, recorder=log, async_planning=asynchronous)
        loop.reset(seed=seed)
        return env, log, loop

    env, log, loop = worker.call(build)
    pace = Pace(speed)
    latencies: dict[str, list[float]] = {"override": [], "negation": []}
    episode_seed = seed
    steps0 = worker.steps
    started = time.perf_counter()
    worker.start_stepping(loop, pace)
    next_correction = started + rng.uniform(1.0, args.every)
    pending: tuple[str, int] | None = None
    try:
        while time.perf_counter() - started < seconds:
            time.sleep(0.01)
            if worker.error:
                raise worker.error
            snap = loop.snapshot()
            if pending is not None and len(loop.correction_latencies) > pending[1]:
                latencies[pending[0]].append(loop.correction_latencies[-1])
                pending = None
            if snap is not None and snap.episode_over:
                episode_seed += 1000
                worker.call(lambda s=episode_seed: loop.reset(seed=s))
                pending = None
                continue
            if time.perf_counter() < next_correction or snap is None or snap.plan is None:
                continue
            current = snap.plan.subtask
            others = [s for s in snap.subtasks if s != current]
            kind = rng.choice(["override", "negation"]) if others else "negation"
            if kind == "override":
                sub = rng.choice(others)
                said = Correction(kind=CorrectionKind.OVERRIDE, text=sub, subtask=sub)
            else:
                said = Correction(kind=CorrectionKind.NEGATION, text=f"not {current}", subtask=current)
            pending = (kind, len(loop.correction_latencies))
            loop.submit(said)  # Enter pressed now
            next_correction = time.perf_counter() + rng.uniform(args.every * 0.5, args.every * 1.5)
    finally:
        wall = time.perf_counter() - started
        steps = worker.steps - steps0
        worker.stop_stepping()
        worker.call(loop.close)
        worker.call(env.close)
        worker.close()
        log.recorder.close()
    plans = [p for p in log.plans if p.plan.source != "human" and p.latency_s is not None]
    waits = [p.wall_time - p.asked_wall_time for p in plans if p.asked_wall_time is not None]
    return {"setting": setting, "threads": threads, "wall_s": wall, "steps": steps,
            "measured_speed": steps / CONTROL_HZ / wall, "latencies": latencies,
            "plan_compute_s": [p.latency_s for p in plans], "plan_asked_to_landed_s": waits,
            "stale_plans": loop.stale_plans}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="per setting, split into --segments")
    parser.add_argument("--segments", type=int, default=2, help="alternating segments per setting")
    parser.add_argument("--busy-cores", type=int, default=1)
    parser.add_argument("--every", type=float, default=3.0, help="mean seconds between corrections")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--default-threads", type=int, default=os.cpu_count() or 2,
                        help="torch threads 'before' (torch's default: the cores)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    rng = random.Random(0)
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(args.busy_cores)]
    load_before = os.getloadavg()[0]
    segments: list[dict] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(args.segments):
                for setting in SETTINGS:
                    seg = run_segment(setting, args.seconds / args.segments, args.speed, Path(tmp), args, rng, seed=i)
                    print(f"{setting}: segment {i}: {seg['measured_speed']:.2f}x of {args.speed:g}x "
                          f"({seg['steps']} steps in {seg['wall_s']:.1f} s)", flush=True)
                    segments.append(seg)
    finally:
        for proc in busy:
            proc.terminate()
            proc.wait(5)

    period = 1.0 / (CONTROL_HZ * args.speed)
    results: dict = {"speed_set": args.speed, "control_period_s": period, "busy_cores": args.busy_cores,
                     "cores": os.cpu_count(), "load_average_before": load_before,
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                     "high_level": default_high_level_spec(), "low_level": default_low_level_spec(),
                     "image_size": args.image_size, "seconds_per_setting": args.seconds, "settings": {}}
    for setting in SETTINGS:
        segs = [s for s in segments if s["setting"] == setting]
        wall, steps = sum(s["wall_s"] for s in segs), sum(s["steps"] for s in segs)
        lat = {k: [v for s in segs for v in s["latencies"][k]] for k in ("override", "negation")}
        both = lat["override"] + lat["negation"]
        compute = [v for s in segs for v in s["plan_compute_s"]]
        waits = [v for s in segs for v in s["plan_asked_to_landed_s"]]
        results["settings"][setting] = {
            "threads": segs[0]["threads"], "measured_speed": steps / CONTROL_HZ / wall,
            "measured_over_set": steps / CONTROL_HZ / wall / args.speed, "steps": steps, "wall_s": wall,
            "corrections": {k: len(v) for k, v in lat.items()},
            "correction_effect_p50_s": percentile(both, 0.5), "correction_effect_p95_s": percentile(both, 0.95),
            "override_effect_p95_s": percentile(lat["override"], 0.95),
            "negation_effect_p95_s": percentile(lat["negation"], 0.95),
            "plans": len(compute), "plan_compute_median_s": statistics.median(compute) if compute else None,
            "plan_asked_to_landed_median_s": statistics.median(waits) if waits else None,
            "stale_plans": sum(s["stale_plans"] for s in segs),
        }
    results["bar_correction_effect_p95_s"] = period + 0.025

    from rich.table import Table

    table = Table(title=f"console at {args.speed:g}x with {args.busy_cores} core(s) busy, pi05 planner + VLA, "
                        f"{args.seconds:g} s a setting")
    for col in ("setting", "threads", "measured / set", "effect p95: override / negation", "all p50 / p95",
                "plan compute median", "stale"):
        table.add_column(col, justify="right" if col != "setting" else "left")
    ms = lambda v: "-" if v is None else f"{v * 1000:.0f} ms"
    for setting, r in results["settings"].items():
        table.add_row(setting, str(r["threads"]), f"{r['measured_over_set']:.2f}",
                      f"{ms(r['override_effect_p95_s'])} / {ms(r['negation_effect_p95_s'])}",
                      f"{ms(r['correction_effect_p50_s'])} / {ms(r['correction_effect_p95_s'])}",
                      ms(r["plan_compute_median_s"]), str(r["stale_plans"]))
    table.caption = f"bar: measured/set >= 0.95; correction effect p95 <= {ms(results['bar_correction_effect_p95_s'])}"
    return publish(table, results, args.out, width=140)


if __name__ == "__main__":
    sys.exit(main())
