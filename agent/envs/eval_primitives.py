"""Measure a low-level policy per primitive: how often each subtask kind succeeds.

    report = evaluate(trials=200, low_level=policy)      # a LowLevelPolicy, or "expert"
    python benchmarks/eval_primitives.py --trials 200 --low-level vla:policies/checkpoints/vla   # from a spec

Trials come from real task episodes: the oracle chooses each next subtask and the low level under
test alone executes it (the scripted expert needs no images; any other policy sees the cameras at
`--image-size`, as in `hivla run`); every executed subtask is one trial of its kind, a success if its
detector fires within `--budget` steps. After a successful pick, sometimes a "put it down on the
table" trial is run instead of the task's place, so that primitive is measured too. Families are
drawn among those that still contain a primitive short of `--trials`.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from policies.base import LowLevelPolicy
from policies.grammar import KINDS, parse_subtask, put_down

PUT_DOWN_SHARE = 0.25


def run_subtask(env, policy, sub_text: str, budget: int, obs, info) -> tuple[bool, int, dict, dict]:
    """Let `policy` execute one subtask until its detector fires or `budget` steps pass; returns
    (success, steps used, the last observation and info)."""
    ok, used = bool(env.subtask_done(sub_text, info)), 0
    while used < budget and not ok:
        for action in policy.act(env.observation(obs, info), sub_text):
            obs, _, _, _, info = env.step(action)
            used += 1
            ok = bool(env.subtask_done(sub_text, info))
            if ok or used >= budget:
                break
    return ok, used, obs, info


def evaluate(trials: int = 200, noise: float = 0.0, budget: int = 100, seed: int = 0, families=None,
             log=print, low_level: LowLevelPolicy | str = "expert", image_size: int = 128,
             policy_name: str | None = None) -> dict:
    """`low_level`: "expert" (the scripted expert with `noise`) or a LowLevelPolicy (a model being
    trained, or one its caller built from a spec with agent.specs.make_low_level)."""
    from agent.envs.expert import ScriptedExpert
    from agent.envs.oracle import OraclePlanner
    from agent.envs.tabletop import make_env
    from agent.envs.tasks import SUITES
    from policies.types import PlanContext

    scripted = low_level == "expert"
    if scripted:
        policy_name = f"expert(noise={noise})"
    elif isinstance(low_level, str):
        raise ValueError(f"evaluate() takes 'expert' or a LowLevelPolicy, not the spec {low_level!r}; build it "
                         f"with agent.specs.make_low_level (as benchmarks/eval_primitives.py does)")
    else:
        policy_name = policy_name or type(low_level).__name__
    env = make_env(image_size=image_size if not scripted else 32, render_images=not scripted)
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
    max_episodes = 20 * trials * len(KINDS)  # a policy that never finishes a pick still ends
    while episode < max_episodes:
        coverable = set().union(*family_kinds.values())  # --families may not cover every kind
        needed = {k for k in KINDS if len(results[k]) < trials and k in coverable}
        if not needed:
            break
        candidates = [f for f, kinds in family_kinds.items() if kinds & needed]
        family = candidates[int(rng.integers(len(candidates)))]
        ep_seed = seed * 100_000 + episode
        episode += 1
        obs, info = env.reset(seed=ep_seed, options={"family": family})
        planner = OraclePlanner(seed=ep_seed)
        if scripted:
            low = setup = ScriptedExpert(noise_std=noise, seed=ep_seed)
        else:
            low, setup = low_level, ScriptedExpert(seed=ep_seed, strict=False)
            low.reset()
        context = PlanContext(task=obs["task"])
        while not info["task_success"]:
            o = env.observation(obs, info)
            sub_text = planner.plan(o, context).subtask
            sub = parse_subtask(sub_text)
            if sub.kind in ("place", "stack", "drawer_put") and "put_down" in needed and rng.random() < PUT_DOWN_SHARE:
                sub, sub_text = put_down(), put_down().text
            trial = len(results[sub.kind]) < trials
            # kinds already measured are left to the expert, so the policy's time goes to the trials
            ok, used, obs, info = run_subtask(env, low if trial else setup, sub_text, budget, obs, info)
            if trial:
                results[sub.kind].append(ok)
                steps_used[sub.kind].append(used)
                if not ok:
                    failures.append({"kind": sub.kind, "family": family, "seed": ep_seed, "subtask": sub_text})
            if not ok and not scripted:  # the expert sets the situation up again, so later kinds get trials
                ok, _, obs, info = run_subtask(env, setup, sub_text, budget, obs, info)
            if not ok or sub.kind == "put_down":
                break
            context.completed_subtasks.append(sub_text)
        if episode == max_episodes:
            log(f"stopped after {episode} episodes with some primitives short of {trials} trials")
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
    return {"low_level": policy_name, "noise_std": noise, "budget_steps": budget, "episodes": episode, "per_primitive": summary,
            "failures": failures, "wall_time_s": time.perf_counter() - started}
