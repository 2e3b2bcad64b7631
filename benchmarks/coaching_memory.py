"""Memory within a session: does a rule said once stop the coach having to say it again?

One coached session is 10 episodes of one task family (default `sort_into_bowls`: three blocks, each
into its own bowl, in any order) with the scripted coach standing in for a person who holds one
preference the whole session: "leave the <colour> block alone" (policies.rules avoid_block: in this
world, that block goes last). The planner (the oracle by default; `--high-level` takes any spec) does
not know it; the scripted expert executes. The coach corrects the plan whenever it breaks the rule.

Three ways to run the same sessions (same seeds, same coach seed):
  no memory        the coach says the rule for good ("from now on leave the red block alone"), but
                   the loop keeps nothing past the episode (`build_loop(..., remember=False)`)
  memory           the same words; the loop keeps the rule for the session (agent/memory.py) and every
                   later plan's context carries it (PlannerContext.memory)
  memory, repeat   the coach words the rule for the episode only ("avoid the red block"); the loop
                   keeps it once it is said in a second episode
Prints interventions per episode (mean over the sessions, episode 1..10) and writes
benchmarks/results/coaching_memory.json. The issue's bar: with memory, episodes 2-10 average at
most half of episode 1.

    python benchmarks/coaching_memory.py                 # 6 sessions x 10 episodes x 3 ways, ~1 min on one core
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.coaching import vocab  # noqa: E402
from agent.coaching.scripted import FamilyBehaviour, ScriptedCoach  # noqa: E402
from agent.runtime.factory import build_loop  # noqa: E402
from benchmarks.report import publish  # noqa: E402
from policies.rules import Rule  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "coaching_memory.json"
WAYS = {  # name -> (loop keeps rules, how the coach words them)
    "no memory": (False, "lasting"),
    "memory": (True, "lasting"),
    "memory, repeat": (True, "episode"),
}
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="sort_into_bowls")
    p.add_argument("--sessions", type=int, default=6, help="sessions, one preferred colour each")
    p.add_argument("--episodes", type=int, default=10, help="episodes per session")
    p.add_argument("--high-level", default="oracle", help="planner spec (agent.specs), default the oracle")
    p.add_argument("--seed", type=int, default=2000)
    p.add_argument("--json", type=Path, default=RESULTS)
    return p.parse_args(argv)


def session_seeds(env, family: str, colour: str, start: int, n: int) -> list[int]:
    """The first `n` seeds from `start` whose scene has a block of `colour` (so the preference matters)."""
    seeds, seed = [], start
    while len(seeds) < n:
        _, info = env.reset(seed=seed, options={"family": family})
        if any(vocab.block_color(b) == colour for b in info["privileged"].blocks):
            seeds.append(seed)
        seed += 1
    return seeds


def run_session(env, high, low, family: str, colour: str, seeds: list[int], remember: bool, scope: str,
                coach_seed: int) -> dict:
    coach = ScriptedCoach(seed=coach_seed, intended=FamilyBehaviour(fixed_rules=[Rule("avoid_block", f"{colour} block")]),
                          rule_scope=scope)
    loop = build_loop(env, high, low, coach=coach, remember=remember)
    episodes = []
    for seed in seeds:
        r = loop.run_episode(seed=seed, options={"family": family})
        episodes.append({"seed": seed, "interventions": r.interventions, "success": r.success, "steps": r.steps,
                         "memory": list(loop.memory.texts())})
    loop.close()
    return {"colour": colour, "episodes": episodes}


def main(argv=None) -> int:
    from rich.table import Table

    from agent.envs import make_env
    from agent.envs.expert import ScriptedExpert
    from agent.specs import make_high_level

    args = parse_args(argv)
    # the oracle and the expert read privileged state: cameras are rendered only for a learned planner
    env = make_env(family=args.family, image_size=32, render_images=args.high_level != "oracle")
    started = time.perf_counter()
    sessions = []
    for k in range(args.sessions):
        colour = COLOURS[k % len(COLOURS)]
        sessions.append((colour, session_seeds(env, args.family, colour, args.seed + 100 * k, args.episodes)))
    results: dict = {"family": args.family, "high_level": args.high_level, "low_level": "expert",
                     "sessions": args.sessions, "episodes": args.episodes, "ways": {},
                     "command": "python benchmarks/coaching_memory.py " + " ".join(argv or sys.argv[1:])}
    for way, (remember, scope) in WAYS.items():
        runs = []
        for k, (colour, seeds) in enumerate(sessions):
            high = make_high_level(args.high_level, seed=k)
            runs.append(run_session(env, high, ScriptedExpert(seed=k), args.family, colour, seeds, remember, scope,
                                    coach_seed=args.seed + k))
        per_episode = [sum(r["episodes"][i]["interventions"] for r in runs) / len(runs) for i in range(args.episodes)]
        later = sum(per_episode[1:]) / max(1, len(per_episode) - 1)
        results["ways"][way] = {
            "remember": remember, "coach_rule_scope": scope, "interventions_per_episode": per_episode,
            "episode_1": per_episode[0], "episodes_2_on": later,
            "ratio_later_to_first": later / per_episode[0] if per_episode[0] else None,
            "success": sum(e["success"] for r in runs for e in r["episodes"]) / (len(runs) * args.episodes),
            "sessions": runs,
        }
    env.close()
    results["wall_s"] = round(time.perf_counter() - started, 1)

    table = Table(title=f"Interventions per episode over a {args.episodes}-episode coached session "
                        f"({args.family}, {args.high_level} + expert, mean of {args.sessions} sessions)")
    table.add_column("way")
    for i in range(args.episodes):
        table.add_column(f"ep {i + 1}", justify="right")
    table.add_column("ep 2+ / ep 1", justify="right")
    table.add_column("success", justify="right")
    for way, r in results["ways"].items():
        ratio = r["ratio_later_to_first"]
        table.add_row(way, *(f"{x:.2f}" for x in r["interventions_per_episode"]),
                      "-" if ratio is None else f"{ratio:.2f}", f"{r['success']:.0%}")
    return publish(table, results, args.json, width=160)


if __name__ == "__main__":
    raise SystemExit(main())
