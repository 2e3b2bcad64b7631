"""Measure the scripted expert per primitive: how often each subtask kind succeeds.

    python -m agent.envs.eval_primitives --trials 200 [--noise 0.0] [--json benchmarks/results/expert_primitives.json]

Trials come from real task episodes: the oracle chooses each next subtask and the expert alone
executes it (no images rendered); every executed subtask is one trial of its kind, a success if its
detector fires within `--budget` steps. After a successful pick, sometimes a "put it down on the
table" trial is run instead of the task's place, so that primitive is measured too. Families are
drawn among those that still contain a primitive short of `--trials`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from agent.envs.primitives import KINDS, parse_subtask, put_down

PUT_DOWN_SHARE = 0.25


def evaluate(trials: int = 200, noise: float = 0.0, budget: int = 100, seed: int = 0, families=None,
             log=print) -> dict:
    from agent.envs.expert import ScriptedExpert
    from agent.envs.oracle import OraclePlanner
    from agent.envs.tabletop import make_env
    from agent.envs.tasks import SUITES
    from policies.types import PlanContext

    env = make_env(image_size=32, render_images=False)
    rng = np.random.default_rng(seed)
    results: dict[str, list[bool]] = defaultdict(list)
    steps_used: dict[str, list[int]] = defaultdict(list)
    failures: list[dict] = []
    family_kinds = {}
    for name in families or SUITES["base"]:
        _, info = env.reset(seed=0, options={"family": name})
        family_kinds[name] = {parse_subtask(s).kind for s in info["subtasks"]} | {"put_down"}
    episode = 0
    started = time.perf_counter()
    while True:
        needed = {k for k in KINDS if len(results[k]) < trials}
        if not needed:
            break
        candidates = [f for f, kinds in family_kinds.items() if kinds & needed]
        family = candidates[int(rng.integers(len(candidates)))]
        ep_seed = seed * 100_000 + episode
        episode += 1
        obs, info = env.reset(seed=ep_seed, options={"family": family})
        planner, expert = OraclePlanner(seed=ep_seed), ScriptedExpert(noise_std=noise, seed=ep_seed)
        context = PlanContext(task=obs["task"])
        while not info["task_success"]:
            o = env.observation(obs, info)
            sub_text = planner.plan(o, context).subtask
            sub = parse_subtask(sub_text)
            if sub.kind in ("place", "stack", "drawer_put") and "put_down" in needed and rng.random() < PUT_DOWN_SHARE:
                sub, sub_text = put_down(), put_down().text
            ok, used = False, 0
            while used < budget and not ok:
                for action in expert.act(env.observation(obs, info), sub_text):
                    obs, _, _, _, info = env.step(action)
                    used += 1
                    ok = bool(env.subtask_done(sub_text, info))
                    if ok or used >= budget:
                        break
            if len(results[sub.kind]) < trials:
                results[sub.kind].append(ok)
                steps_used[sub.kind].append(used)
                if not ok:
                    failures.append({"kind": sub.kind, "family": family, "seed": ep_seed, "subtask": sub_text})
            if not ok or sub.kind == "put_down":
                break
            context.completed_subtasks.append(sub_text)
        if episode % 50 == 0:
            log(f"{episode} episodes, {time.perf_counter() - started:.0f}s: "
                + ", ".join(f"{k} {sum(results[k])}/{len(results[k])}" for k in KINDS))
    summary = {
        kind: {
            "trials": len(results[kind]),
            "success_rate": sum(results[kind]) / max(1, len(results[kind])),
            "median_steps": float(np.median(steps_used[kind])) if steps_used[kind] else None,
        }
        for kind in KINDS
    }
    return {"noise_std": noise, "budget_steps": budget, "episodes": episode, "per_primitive": summary,
            "failures": failures, "wall_time_s": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.0, help="expert action noise std (metres)")
    parser.add_argument("--budget", type=int, default=100, help="steps allowed per subtask")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    report = evaluate(args.trials, args.noise, args.budget, args.seed)
    table = Table(title=f"scripted expert per primitive (noise {args.noise})")
    for col in ("primitive", "trials", "success", "median steps"):
        table.add_column(col, justify="left" if col == "primitive" else "right")
    for kind, s in report["per_primitive"].items():
        table.add_row(kind, str(s["trials"]), f"{100 * s['success_rate']:.1f}%", f"{s['median_steps']}")
    Console().print(table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
