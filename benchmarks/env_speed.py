"""Simulator speed: one 10 Hz control step without rendering, with the two cameras at 128 and
224 px, and oracle + expert episodes per minute. Measured side by side in one run.

    python benchmarks/env_speed.py [--steps 200] [--episodes-per-family 1]

Writes benchmarks/results/env_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "env_speed.json"


def time_steps(image_size: int, render: bool, steps: int, seed: int = 0) -> dict:
    """Median wall time of env.step with expert-like random actions over several families."""
    from agent.envs import SUITES, make_env

    env = make_env(image_size=image_size, render_images=render)
    rng = np.random.default_rng(seed)
    times = []
    families = list(SUITES["base"])
    for k in range(steps):
        if k % 50 == 0:
            env.reset(seed=seed + k, options={"family": families[(k // 50) % len(families)]})
        action = (rng.uniform(-1, 1, 5) * np.array([0.02, 0.02, 0.02, 0.2, 1.0])).astype(np.float32)
        t = time.perf_counter()
        env.step(action)
        times.append(time.perf_counter() - t)
    env.close()
    return {
        "median_ms": 1000 * statistics.median(times),
        "p90_ms": 1000 * float(np.percentile(times, 90)),
        "steps": steps,
    }


def time_render_only(image_size: int, repeats: int = 100) -> float:
    """Median ms for rendering both cameras once (no physics)."""
    from agent.envs import make_env

    env = make_env(image_size=image_size)
    env.reset(seed=0)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        env._obs()
        times.append(time.perf_counter() - t)
    env.close()
    return 1000 * statistics.median(times)


def episodes_per_minute(episodes_per_family: int, image_size: int = 128) -> dict:
    from agent.envs import SUITES, make_env
    from agent.envs.expert import ScriptedExpert
    from agent.envs.oracle import OraclePlanner
    from agent.runtime.factory import build_loop

    env = make_env(image_size=image_size)
    loop = build_loop(env, OraclePlanner(seed=0), ScriptedExpert(), compute_model_plan=False)
    started = time.perf_counter()
    n = ok = steps = 0
    for family in SUITES["base"]:
        for i in range(episodes_per_family):
            result = loop.run_episode(seed=500 + i, options={"family": family})
            n += 1
            ok += int(result.success)
            steps += result.steps
    wall = time.perf_counter() - started
    env.close()
    return {"episodes": n, "successes": ok, "steps": steps, "wall_s": wall,
            "episodes_per_minute": 60 * n / wall, "ms_per_loop_step": 1000 * wall / max(1, steps)}


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="control steps timed per configuration")
    parser.add_argument("--episodes-per-family", type=int, default=1)
    args = parser.parse_args(argv)

    physics = time_steps(128, render=False, steps=args.steps)
    cam128 = time_steps(128, render=True, steps=args.steps)
    cam224 = time_steps(224, render=True, steps=args.steps)
    render128 = time_render_only(128)
    render224 = time_render_only(224)
    episodes = episodes_per_minute(args.episodes_per_family)

    table = Table(title="hivla simulator speed (10 Hz control step = 50 physics steps of 2 ms)")
    table.add_column("measure")
    table.add_column("median ms", justify="right")
    table.add_column("ratio to physics", justify="right")
    base = physics["median_ms"]
    table.add_row("control step, no rendering", f"{base:.2f}", "1.00")
    table.add_row("control step + 2 cameras @128 px", f"{cam128['median_ms']:.2f}", f"{cam128['median_ms'] / base:.2f}")
    table.add_row("control step + 2 cameras @224 px", f"{cam224['median_ms']:.2f}", f"{cam224['median_ms'] / base:.2f}")
    table.add_row("render 2 cameras @128 px only", f"{render128:.2f}", "")
    table.add_row("render 2 cameras @224 px only", f"{render224:.2f}", "")
    table.add_row(
        f"oracle+expert loop step @128 px ({episodes['episodes']} episodes)",
        f"{episodes['ms_per_loop_step']:.2f}", f"{episodes['episodes_per_minute']:.1f} episodes/min",
    )
    Console().print(table)
    report = {
        "control_step_no_render": physics,
        "control_step_2cams_128": cam128,
        "control_step_2cams_224": cam224,
        "render_2cams_128_ms": render128,
        "render_2cams_224_ms": render224,
        "oracle_expert_episodes": episodes,
        "ratios": {"cams128_over_physics": cam128["median_ms"] / base, "cams224_over_cams128": cam224["median_ms"] / cam128["median_ms"]},
        "target": {"control_step_2cams_128_median_ms_max": 25.0, "met": cam128["median_ms"] <= 25.0},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "mujoco_gl": os.environ.get("MUJOCO_GL")},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
