"""The scripted coach: does the classifier read what it says, and does its coaching help?

Two measurements in one run:
  1. grammar round trip: every template of prompts/coach.toml rendered in three scenes and
     classified as the coach does; agreement on kind + subtask / rule / motion;
  2. live coaching on the simulator (no images), side by side on the same seeds: a mistaken
     high level (the oracle, but at each new decision with probability --mistake-rate it insists
     on a wrong block or a later step until the next correction: a model that does not fix its
     own mistakes) with and without the scripted coach
     (error rate --coach-error). Reports success rates and their ratio, what the coach said
     (by kind and mistake), how often the classifier agreed with it, and its median reaction
     time (steps from the first suspect frame to the correction).

    python benchmarks/coach_roundtrip.py [--episodes 3] [--mistake-rate 0.3] [--coach-error 0.1]
Writes benchmarks/results/coach_roundtrip.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).resolve().parent / "results" / "coach_roundtrip.json"


class MistakenPlanner:
    """The oracle, except that at each decision with probability `rate` it picks a wrong subtask
    (a block the task does not need, or a later group's first step) and insists on it until the
    next correction."""

    def __init__(self, rate: float, seed: int):
        import numpy as np

        from agent.envs.oracle import OraclePlanner

        self.oracle = OraclePlanner(seed=seed)
        self.rate = rate
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.reset()

    def reset(self):
        self.oracle.reset()
        self.insisting: str | None = None
        self.seen_corrections = 0
        self.decided_for: str | None = None

    def plan(self, obs, context):
        from policies.types import Plan

        if len(context.corrections) != self.seen_corrections:
            self.seen_corrections = len(context.corrections)
            self.insisting = None
        right = self.oracle.plan(obs, context)
        if self.insisting:
            return Plan("I am sure about this one", self.insisting, "model")
        world = obs.privileged
        if right.subtask != self.decided_for and world.held is None:
            self.decided_for = right.subtask
            if self.rng.random() < self.rate:
                wrong = self._wrong(world, right.subtask)
                if wrong:
                    self.insisting = wrong
                    return Plan("that one looks right", wrong, "model")
        return right

    def _wrong(self, world, right):
        needed = {g.obj for g in world.task.groups if g.obj}
        options = [f"pick up the {b}" for b in world.blocks if b not in needed]
        options += [g.subtasks[0].text for g in world.task.groups[1:] if g.subtasks[0].text != right]
        options = [o for o in options if o != right]
        return options[int(self.rng.integers(len(options)))] if options else None


def grammar_report() -> dict:
    from agent.coaching.grammar import count_surface_forms, load_grammar, round_trip

    grammar = load_grammar()
    t0 = time.perf_counter()
    rt = round_trip(grammar)
    return {"surface_forms": count_surface_forms(grammar), "sentences_checked": rt.checked,
            "agreement": rt.agreement, "templates_agreeing_somewhere": rt.template_agreement,
            "failures": [f"[{s}.{k}] {t!r} -> {g}" for s, k, t, g in rt.failures],
            "seconds": time.perf_counter() - t0}


def live_report(episodes: int, mistake_rate: float, coach_error: float, max_steps: int) -> dict:
    from agent.coaching.scripted import ScriptedCoach
    from agent.envs import SUITES, make_env
    from agent.envs.expert import ScriptedExpert
    from agent.runtime.factory import build_loop

    class Said:
        def __init__(self):
            self.items = []

    env = make_env(image_size=32, render_images=False)
    rows = {}
    said_all = []
    for family in SUITES["base"]:
        row = {}
        for coached in (False, True):
            successes, steps, completed = 0, [], []
            for ep in range(episodes):
                coach = ScriptedCoach(seed=ep, delay_steps=3, error_rate=coach_error) if coached else None
                spoken: list = []
                if coach is not None:
                    original = coach.observe

                    def observe(obs, info, plan, step, _orig=original, _spoken=spoken):
                        out = _orig(obs, info, plan, step)
                        if out is not None:
                            _spoken.append(out)
                        return out

                    coach.observe = observe
                loop = build_loop(env, MistakenPlanner(mistake_rate, seed=ep), ScriptedExpert(), coach=coach)
                result = loop.run_episode(seed=1000 + ep, options={"family": family}, max_steps=max_steps)
                successes += result.success
                steps.append(result.steps)
                completed.append(result.subtasks_completed / max(1, result.subtasks_total))
                said_all.extend(spoken)
            row["coached" if coached else "alone"] = {
                "success_rate": successes / episodes, "median_steps": statistics.median(steps),
                "mean_subtasks_completed": sum(completed) / len(completed)}
        rows[family] = row
    env.close()
    kinds = Counter(u.intended_kind.value for u in said_all if u.intended_kind)
    mistakes = Counter(u.mistake or "none" for u in said_all)
    reactions = [u.step - u.suspect_from_step for u in said_all if u.suspect_from_step is not None and u.mistake
                 in ("wrong_object", "wrong_order", "broken_constraint")]
    agree = sum(u.agrees for u in said_all)
    return {
        "per_family": rows,
        "utterances": len(said_all),
        "agreement": agree / len(said_all) if said_all else None,
        "erroneous": sum(u.erroneous for u in said_all),
        "by_kind": dict(kinds),
        "by_mistake": dict(mistakes),
        "median_reaction_steps": statistics.median(reactions) if reactions else None,
        "distinct_sentences": len({u.text for u in said_all}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=3, help="episodes per family and condition")
    parser.add_argument("--mistake-rate", type=float, default=0.3)
    parser.add_argument("--coach-error", type=float, default=0.1)
    parser.add_argument("--max-steps", type=int, default=400)
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    t0 = time.perf_counter()
    grammar = grammar_report()
    live = live_report(args.episodes, args.mistake_rate, args.coach_error, args.max_steps)
    console = Console()

    table = Table(title="coach grammar round trip")
    for col in ("surface forms", "sentences", "agreement", "templates OK somewhere"):
        table.add_column(col, justify="right")
    table.add_row(str(grammar["surface_forms"]), str(grammar["sentences_checked"]), f"{grammar['agreement']:.1%}",
                  f"{grammar['templates_agreeing_somewhere']:.0%}")
    console.print(table)

    table = Table(title=f"mistaken high level (rate {args.mistake_rate}), alone vs coached (coach error {args.coach_error})")
    for col in ("family", "success alone", "success coached", "subtasks alone", "subtasks coached", "ratio",
                "median steps alone", "coached"):
        table.add_column(col, justify="right")
    alone_all, coached_all = [], []
    for family, row in live["per_family"].items():
        a, c = row["alone"], row["coached"]
        alone_all.append(a["success_rate"])
        coached_all.append(c["success_rate"])
        ratio = c["mean_subtasks_completed"] / a["mean_subtasks_completed"] if a["mean_subtasks_completed"] else float("inf")
        table.add_row(family, f"{a['success_rate']:.0%}", f"{c['success_rate']:.0%}",
                      f"{a['mean_subtasks_completed']:.0%}", f"{c['mean_subtasks_completed']:.0%}", f"{ratio:.2f}",
                      f"{a['median_steps']:.0f}", f"{c['median_steps']:.0f}")
    table.add_row("all", f"{statistics.mean(alone_all):.0%}", f"{statistics.mean(coached_all):.0%}", "", "", "")
    console.print(table)
    console.print(f"coach said {live['utterances']} things ({live['distinct_sentences']} distinct sentences), "
                  f"classifier agreement {live['agreement']:.1%}, erroneous {live['erroneous']}, "
                  f"median reaction {live['median_reaction_steps']} steps")
    console.print(f"by kind: {live['by_kind']}")
    console.print(f"by mistake: {live['by_mistake']}")

    out = {"args": vars(args), "grammar": grammar, "live": live,
           "success_alone": statistics.mean(alone_all), "success_coached": statistics.mean(coached_all),
           "seconds": time.perf_counter() - t0}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2))
    console.print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
