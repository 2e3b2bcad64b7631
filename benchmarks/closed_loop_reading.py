"""How grounded planners' read-outs read the frames a robot planned from in recorded closed-loop runs (issue
33), against the simulator, side by side: scene lines wholly right on every plan's frame, and on the
frames whose reading a fact corrected, with the share of those facts read as stated; "blocks right": the
line's blocks and drawer wholly right, its list of bowls aside (what facts can correct).

Held-out planner frames (`hivla datagen --mode planner`) are the oracle's episodes; the facts people say
come from the robot's own runs, where the learned planner and low level leave other states. This reads
those: sessions of `hivla run` (any coach), each episode replayed from its seed with its recorded
actions for the simulator's truth (benchmarks/fact_label_audit.py replay_facts), every checkpoint reading
the same recorded frames (a read-out that carries a belief, each episode's plan frames in order, every
frame with what it read at the plan before, as it ran). A second table says what the plan frames' lines
get wrong, object by object, by kind ("missed: table": a block on the table not read at all; "phantom":
one read that is not there; "held read as table"; "table: side"; "order of blocks only").

    hivla run --high-level pi05:policies/checkpoints/grounded --suite base --episodes 34 --seed 640000 \\
        --coach facts --out runs/facts_heldout_640000/sessions --workers 2 --quiet
    python benchmarks/closed_loop_reading.py runs/facts_heldout_640000/sessions \\
        --checkpoint base=policies/checkpoints/grounded facts=runs/facts_round_v5/facts_ckpt_... control=...

Prints one table and writes benchmarks/results/closed_loop_reading.json (or --json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.fact_label_audit import replay_facts  # noqa: E402
from benchmarks.report import write_results  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "closed_loop_reading.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sessions", nargs="+", type=Path, help="session directories of `hivla run` (or folders of them)")
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="NAME=DIR",
                   help="grounded checkpoints to compare, each NAME=DIR (or DIR: named by its folder)")
    p.add_argument("--suite", default="base", help="the suite the sessions were run on")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--truth-cache", type=Path, default=None,
                   help="a JSON file keeping the replays' truth (written the first time, read after): replaying "
                        "is most of the time, and the truth of recorded sessions does not change")
    p.add_argument("--json", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    named = {}
    for spec in args.checkpoint:
        name, _, path = spec.rpartition("=")
        path = Path(path)
        if not (path / "model.safetensors").is_file():
            p.error(f"--checkpoint {spec}: no model.safetensors in {path}")
        named[name or path.name] = path
    args.checkpoint = named
    return args


def recorded_frames(paths: list[Path], suite: str, log, cache: Path | None = None) -> dict:
    """Every plan's frame and every fact's frame of the sessions, with the simulator's truth there (from
    `cache` where it holds the episode: {session/episode: [first drifted step or None, {step: facts}]})."""
    from agent.training.facts_finetune import plan_steps
    from policies.scene_line import Fact
    from policies.types import CorrectionKind
    from sessions.export.common import fact_frame_step
    from sessions.reader import iter_sessions

    frames = {"images": [], "tasks": [], "truth": [], "is_plan": [], "facts": [],  # facts: [(frame row, Fact)]
              "episode": [], "family": [], "state": []}
    kept = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    fresh = False
    episodes = drifted = 0
    for session in iter_sessions(paths, on_error=lambda path, err: log(f"skipping {path}: {err}")):
        for ep in session.episodes:
            if not ep.steps:
                continue
            plans = set(plan_steps(ep))
            said = [(fact_frame_step(ep, c), Fact.from_dict(c.fact.model_dump())) for c in ep.active_corrections
                    if c.kind is CorrectionKind.FACT and c.fact is not None]
            key, wanted = f"{session.header.session_id}/{ep.episode}", plans | {at for at, _ in said}
            if key in kept:  # a recorded episode's frames and truth do not change
                drift, truth = kept[key][0], {int(s): f for s, f in kept[key][1].items()}
            else:
                truth, drift = replay_facts(ep, suite, wanted)
                kept[key], fresh = [drift, {str(s): f for s, f in truth.items()}], True
            episodes += 1
            drifted += drift is not None
            rows = {}
            for step in sorted(truth):
                rows[step] = len(frames["tasks"])
                position = ep.position_of_step(step)
                frames["images"].append({cam: ep.frame(cam, position) for cam in ep.cameras})
                frames["tasks"].append(ep.start.task)
                frames["truth"].append(truth[step])
                frames["is_plan"].append(step in plans)
                frames["episode"].append(key)
                frames["family"].append(ep.start.family)
                frames["state"].append(ep.steps[position].state)
            frames["facts"] += [(rows[at], fact) for at, fact in said if at in rows]
    if cache is not None and fresh:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(kept))
    frames.update(episodes=episodes, drifted=drifted)
    return frames


def plans_before(frames: dict) -> "torch.Tensor":
    """For each frame, the row of its episode's last plan frame before it (-1: none): where a planner that
    carries a belief formed it. Rows come in step order within an episode."""
    import torch

    previous, last = [], {}
    for row, (episode, is_plan) in enumerate(zip(frames["episode"], frames["is_plan"])):
        previous.append(last.get(episode, -1))
        if is_plan:
            last[episode] = row
    return torch.tensor(previous, dtype=torch.long)


def misreadings(scene, true, wrong: list) -> list[str]:
    """What a read scene gets wrong against the true one (`wrong`: contradictions(scene, true)), one short
    kind per wrong object ("held read as table", "table: side", "missed: bowl", "phantom: table",
    "drawer"); the bowls read, and a line right but for the order of its blocks, count as one kind each."""
    from policies.scene_line import DRAWER, format_scene

    kinds = []
    for fact in wrong:
        believed = None if fact.subject == DRAWER else scene.block(fact.subject)
        if fact.subject == DRAWER:
            kinds.append("drawer")
        elif fact.place == "absent":
            kinds.append(f"phantom: {believed.place}")
        elif believed is None:
            kinds.append(f"missed: {fact.place}")
        elif believed.place == fact.place:
            kinds.append(f"{fact.place}: {'side' if fact.place == 'table' else 'where'}")
        else:
            kinds.append(f"{fact.place} read as {believed.place}")
    if scene.bowls != true.bowls:
        kinds.append("bowls")
    if not kinds and format_scene(scene) != format_scene(true):
        kinds.append("order of blocks only")
    return kinds


def read(path: Path, frames: dict, threads: int) -> dict:
    """One checkpoint's reading of the frames: lines right (exactly, and as a set of phrases: the order of
    blocks sharing an x, a stack or a bowl, aside), on plan frames and on fact frames; facts read as stated."""
    import numpy as np
    import torch

    from agent.training.facts_finetune import labels_from_fact, read_as_stated, _label_tensors
    from policies.pi05.objects import read_scenes
    from agent.training.readout_trainer import load_readout, read_in_order
    from policies.pi05.configuration import Pi05Config
    from policies.pi05.processor import stack_cameras
    from policies.scene_line import contradictions, format_scene, scene_from_facts

    torch.set_num_threads(threads)
    readout = load_readout(path)
    cfg = Pi05Config.load(path / "config.json")
    stacked = frames.setdefault("stacked", {})  # checkpoints of one config read the same resized frames
    key = (tuple(cfg.cameras), cfg.image_size)
    if key not in stacked:
        stacked[key] = torch.from_numpy(np.stack([stack_cameras(f, cfg.cameras, cfg.image_size)
                                                  for f in frames["images"]]))
    # a read-out with a belief reads each frame with what it read at its episode's plan before (as it ran)
    out = read_in_order(readout, stacked[key], plans_before(frames), "bf16", torch.device("cpu"))
    exact, as_set, blocks_exact = [], [], []
    misread, by_true_place = Counter(), {}  # on plan frames: kinds of misreading; each true block's place read right
    for scene, truth, task, is_plan in zip(read_scenes(out, frames["tasks"]), frames["truth"], frames["tasks"],
                                           frames["is_plan"]):
        true = scene_from_facts(truth, task, bowls=readout.reads_bowls)
        exact.append(format_scene(scene) == format_scene(true))
        # the line's blocks and drawer alone: what a fact can correct (no fact says which bowls are there)
        blocks_exact.append([b.phrase() for b in scene.blocks] == [b.phrase() for b in true.blocks]
                            and scene.drawer_open == true.drawer_open)
        if is_plan:
            wrong = contradictions(scene, true)
            misread.update(misreadings(scene, true, wrong))
            misnamed = {f.subject for f in wrong}
            for block in true.blocks:
                by_true_place.setdefault(block.place, []).append(block.name not in misnamed)
        as_set.append(sorted(b.phrase() for b in scene.blocks) == sorted(b.phrase() for b in true.blocks)
                      and scene.bowls == true.bowls and scene.drawer_open == true.drawer_open)
    fact_rows = [row for row, _ in frames["facts"]]
    stated = []
    if fact_rows:
        labels = _label_tensors([labels_from_fact(f) for _, f in frames["facts"]])
        stated = read_as_stated({k: v[fact_rows] for k, v in out.items()}, labels).tolist()

    def share(flags, rows):
        picked = [flags[i] for i in rows]
        return None if not picked else sum(picked) / len(picked)

    plan_rows = [i for i, is_plan in enumerate(frames["is_plan"]) if is_plan]
    fact_frames = sorted(set(fact_rows))
    return {"plan_frames": {"n": len(plan_rows), "lines_right": share(exact, plan_rows),
                            "lines_right_any_order": share(as_set, plan_rows),
                            "blocks_right": share(blocks_exact, plan_rows)},
            "plan_frames_misread": dict(misread.most_common()),
            "plan_frames_blocks_right_by_true_place": {place: {"n": len(v), "right": sum(v) / len(v)}
                                                       for place, v in sorted(by_true_place.items())},
            "fact_frames": {"n": len(fact_frames), "lines_right": share(exact, fact_frames),
                            "lines_right_any_order": share(as_set, fact_frames),
                            "blocks_right": share(blocks_exact, fact_frames)},
            "facts_read_as_stated": {"n": len(stated), "share": None if not stated else sum(stated) / len(stated)}}


def main(argv=None) -> int:
    from rich.table import Table

    from agent.commands.output import table_console

    args = parse_args(argv)
    console = table_console()
    started = time.perf_counter()
    frames = recorded_frames(args.sessions, args.suite, console.print, args.truth_cache)
    if not frames["tasks"]:
        raise SystemExit(f"{' '.join(map(str, args.sessions))}: no plan frame in these sessions; record some with "
                         f"`hivla run --high-level pi05:policies/checkpoints/grounded --out DIR`")
    results = {name: read(path, frames, args.threads) for name, path in args.checkpoint.items()}

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    t = Table(title=f"closed-loop reading: {frames['episodes']} episodes replayed ({frames['drifted']} drifted, read up "
                    f"to the drift)")
    for col in ("checkpoint", "plan frames", "lines right", "any order", "blocks right", "fact frames",
                "lines right ", "blocks right ", "facts read as stated"):
        t.add_column(col, justify="left" if col == "checkpoint" else "right")
    for name, r in results.items():
        t.add_row(name, str(r["plan_frames"]["n"]), pct(r["plan_frames"]["lines_right"]),
                  pct(r["plan_frames"]["lines_right_any_order"]), pct(r["plan_frames"]["blocks_right"]),
                  str(r["fact_frames"]["n"]), pct(r["fact_frames"]["lines_right"]),
                  pct(r["fact_frames"]["blocks_right"]),
                  f"{pct(r['facts_read_as_stated']['share'])} of {r['facts_read_as_stated']['n']}")
    console.print(t)
    kinds = sorted({k for r in results.values() for k in r["plan_frames_misread"]},
                   key=lambda k: -sum(r["plan_frames_misread"].get(k, 0) for r in results.values()))
    t = Table(title="what the plan frames' lines get wrong (objects misread, per 1,000 plan frames)")
    t.add_column("misreading")
    for name in results:
        t.add_column(name, justify="right")
    for kind in kinds:
        t.add_row(kind, *(f"{1000 * r['plan_frames_misread'].get(kind, 0) / max(r['plan_frames']['n'], 1):.1f}"
                          for r in results.values()))
    console.print(t)
    result = {"config": {"sessions": [str(p) for p in args.sessions], "suite": args.suite,
                         "checkpoints": {k: str(v) for k, v in args.checkpoint.items()}},
              "episodes": frames["episodes"], "episodes_drifted": frames["drifted"], "checkpoints": results,
              "wall_time_s": time.perf_counter() - started}
    write_results(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
