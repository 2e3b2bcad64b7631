"""How often a fact's label is true where a read-out fine-tune learns it (issue 33): its own frame and
each frame of its span (`hivla finetune --fact-span`), against the simulator's truth there.

Sessions record what the robot saw and did, not the simulator's state; an episode is replayed from its
seed and family with the recorded actions (the simulator is deterministic), the recorded robot state
checked against the replay's at every step, and the simulator's scene facts read at each frame a fact
labels. A step whose replayed state has drifted from the recorded one stops that episode's audit.

    python benchmarks/fact_label_audit.py runs/facts_round_v3/sessions --span 30 --stride 3

Prints one table (labels true on their own frames, on their span's frames, by kind) and writes
benchmarks/results/fact_label_audit.json (or --json).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import write_results  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "fact_label_audit.json"
STATE_TOLERANCE = 1e-4  # recorded vs replayed robot state (float32 in the session), any coordinate


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sessions", nargs="+", type=Path, help="session directories (or folders of them)")
    p.add_argument("--span", type=int, default=30, help="as `hivla finetune --fact-span`")
    p.add_argument("--stride", type=int, default=3, help="as `hivla finetune --fact-span-stride`")
    p.add_argument("--suite", default="base", help="the suite the sessions were run on")
    p.add_argument("--json", type=Path, default=RESULTS)
    return p.parse_args(argv)


def replay_facts(ep, suite: str, wanted: set[int]) -> tuple[dict[int, dict], int | None]:
    """{step: the simulator's scene facts (agent/envs/scene_facts.py) at that step's frame} for the kept
    steps in `wanted`, replaying the episode's actions; and the first step whose recorded state the replay
    does not reproduce (None: every one)."""
    import numpy as np

    from agent.envs import make_env
    from agent.envs.scene_facts import scene_facts

    env = make_env(suite=suite, image_size=16)
    obs, info = env.reset(seed=ep.start.seed, options={"family": ep.start.family} if ep.start.family else None)
    facts = {}
    try:
        for t, record in enumerate(ep.steps):
            # a step not kept (none in recorded runs) leaves no action to replay it with
            if record.step != t or np.abs(np.asarray(obs["state"]) - np.asarray(record.state)).max() > STATE_TOLERANCE:
                return facts, record.step
            if record.step in wanted:
                facts[record.step] = scene_facts(info["privileged"])
            obs, _, _, _, info = env.step(np.asarray(record.action, dtype=np.float32))
    finally:
        env.close()
    return facts, None


def main(argv=None) -> int:
    from rich.table import Table

    from agent.commands.output import table_console
    from agent.training.facts_finetune import fact_kind
    from policies.scene_line import NAMED, Fact, scene_from_facts
    from policies.types import CorrectionKind
    from sessions.export.common import fact_frame_step, fact_span_steps
    from sessions.reader import iter_sessions

    args = parse_args(argv)
    console = table_console()
    tally: dict[str, dict[str, list[int]]] = {}
    drifted, episodes, unchecked = 0, 0, 0
    for session in iter_sessions(args.sessions, on_error=lambda path, err: console.print(f"skipping {path}: {err}")):
        for ep in session.episodes:
            said = [c for c in ep.active_corrections if c.kind is CorrectionKind.FACT and c.fact is not None]
            if not said or not ep.steps:
                continue
            episodes += 1
            spans = []
            for c in said:
                at = fact_frame_step(ep, c)
                spans.append((Fact.from_dict(c.fact.model_dump()), at, fact_span_steps(ep, c, at, args.span,
                                                                                         args.stride)))
            truth, drift = replay_facts(ep, args.suite, {s for _, _, span in spans for s in span})
            scenes = {step: scene_from_facts(facts, ep.start.task) for step, facts in truth.items()}
            drifted += drift is not None
            for fact, at, span in spans:
                if fact.place == NAMED:  # a bowl named: no place a scene line holds to check it against
                    unchecked += 1
                    continue
                row = tally.setdefault(fact_kind(fact), {"own": [0, 0], "span": [0, 0]})
                for step in span:
                    if step not in scenes:
                        continue
                    which = "own" if step == at else "span"
                    row[which][0] += int(fact.holds_in(scenes[step]))
                    row[which][1] += 1

    def share(pair):
        return None if not pair[1] else pair[0] / pair[1]

    total = {w: [sum(r[w][0] for r in tally.values()), sum(r[w][1] for r in tally.values())] for w in ("own", "span")}
    t = Table(title=f"fact labels against the simulator: {episodes} episodes replayed ({drifted} drifted, audited up "
                    f"to the drift); span {args.span} steps, every {args.stride}")
    for col in ("kind", "own frames", "true", "span frames", "true "):
        t.add_column(col, justify="left" if col == "kind" else "right")
    for kind, row in sorted(tally.items()) + [("all", total)]:
        t.add_row(kind, str(row["own"][1]), f"{100 * (share(row['own']) or 0):.1f}%", str(row["span"][1]),
                  "-" if share(row["span"]) is None else f"{100 * share(row['span']):.1f}%")
    console.print(t)
    result = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
              | {"sessions": [str(p) for p in args.sessions]},
              "episodes": episodes, "episodes_drifted": drifted, "bowl_facts_unchecked": unchecked,
              "by_kind": {k: {w: {"frames": r[w][1], "true": share(r[w])} for w in ("own", "span")}
                          for k, r in sorted(tally.items())},
              "all": {w: {"frames": total[w][1], "true": share(total[w])} for w in ("own", "span")}}
    write_results(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
