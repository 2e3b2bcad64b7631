"""One round of nudges teaching the low level (issue 32, item 4): does the VLA, fine-tuned on the nudges
a coach gave it and the motion they caused, get through the situations it was nudged in, and does
nothing else regress?

  a. coached episodes: the oracle plans, the VLA executes, the scripted coach corrects, recorded. It nudges
     only to answer "stuck" (no task progress for 80 steps with the subtask it wants in force, and a clear
     way to move: agent/coaching/scripted.py, coach_sight.nudge_words), 7 times in 10; with the shipped
     VLA that is 0.36 nudges an episode (39 in 108 episodes, seeds 7000-7001 and 8000-8009), 18 of them
     followed by their subtask completed: enough to collect by coaching more episodes, no nudgier coach
        hivla run --high-level oracle --low-level vla:CKPT --suite base --episodes N --seed S --coach scripted \\
                  --out W/coached/sessions --json W/coached/run.json
  b. the nudges and the steps each moved (agent/coaching/nudge_bursts.py), and the LeRobot export of the
     nudged episodes, whose `complementary_info.is_intervention` column marks those steps
        hivla export W/coached/sessions --format lerobot --kind nudge --only-corrections --out W/export
  c. one fine-tune of the VLA on the nudge samples (each step a nudge moved, its chunk what ran from there,
     of nudges after which the subtask was completed), mixed with a fresh scripted-expert set recorded as
     the VLA's own data was (its model card): the expert set rehearses what the checkpoint was trained on,
     so what the nudges teach is added without the rest drifting. The coached sessions' other steps are
     not used: they are the VLA's own actions, mistakes included, with no label saying what was right.
     The expert set is thinned (--stride: many scenes, a few steps of each) so that nudge samples are
     --nudge-share of the fine-tune data (15%: from 450 coached episodes about 300 nudge samples beside
     about 1,700 expert samples of 300 episodes; 1,000 steps of 64 show each sample about 30 times).
        hivla datagen --suite base --episodes E --out W/expert --noise 0.004 --image-size 128 --max-steps 500 \\
                      --seed X --put-down-share 0.15
        hivla train --model vla --init-from CKPT --data W/expert --nudge-data W/coached/sessions \\
                    --stride K --out W/vla_nudged --steps T --lr 3e-4 --closed-loop-every 0
  d. BEFORE (CKPT) and AFTER (W/vla_nudged), nobody coaching: the same seeds of the nudged families
     replayed (recorded, so each nudged subtask can be looked up: was it completed without a nudge?), and
     the whole suite on held-out seeds
        hivla run --high-level oracle --low-level vla:X --suite base --family F... --episodes N --seed S \\
                  --out W/{before,after}/sessions --json W/{before,after}/nudged_run.json
        hivla run --high-level oracle --low-level vla:X --suite base --episodes M --seed H \\
                  --json W/{before,after}/heldout.json

    python benchmarks/nudge_round.py --workers 2         # the full round (see --help for the sizes)
    python benchmarks/nudge_round.py --preset tiny       # a self-contained miniature (a tiny VLA trained here)

Every stage is the documented command, run as a subprocess and logged to W/nudge_round.log; a stage
whose output is in --workdir already is skipped, so an interrupted round continues where it stopped
(the fine-tune itself resumes). A "nudged situation" is a (family, seed, subtask) the coach nudged in:
BEFORE and AFTER say how many of them the replay completed. The replay starts from the same scene but
is not the coached episode: corrections said before the nudge (overrides after a drop) are not said,
so a few situations are never reached the same way. Prints one table and writes
benchmarks/results/nudge_round.json (or --json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.stages import TimedStages  # noqa: E402
from benchmarks.report import write_results  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "nudge_round.json"
SHIPPED_VLA = ROOT / "policies" / "checkpoints" / "vla"
TRAINER_STATE = "trainer_state.json"  # agent/training/loop.py (not imported: no torch here)
TINY_FAMILIES = ("put_color_in_bowl", "push_to_side")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="full", choices=["full", "tiny"], help="tiny: a miniature round (minutes)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="the VLA to coach and fine-tune (default: the shipped one; tiny: one trained here)")
    p.add_argument("--family", action="append", default=None,
                   help="only this base family (repeatable; default: all nine; tiny: put_color_in_bowl, push_to_side)")
    p.add_argument("--episodes", type=int, default=None, help="coached episodes per family (default 50; tiny 2)")
    p.add_argument("--seed", type=int, default=70_000, help="seeds of the coached episodes, replayed BEFORE and AFTER")
    p.add_argument("--heldout-episodes", type=int, default=None,
                   help="held-out evaluation episodes per family (default 20; tiny 1)")
    p.add_argument("--heldout-seed", type=int, default=170_000)
    p.add_argument("--expert-episodes", type=int, default=None,
                   help="scripted-expert episodes mixed into the fine-tune (default 300; tiny 4)")
    p.add_argument("--expert-seed", type=int, default=270_000)
    p.add_argument("--nudge-share", type=float, default=0.15,
                   help="share of nudge samples in the fine-tune data; the expert set's --stride is chosen for it")
    p.add_argument("--all-nudges", action="store_true",
                   help="train on every nudge, also those after which the subtask was not completed (tiny: on)")
    p.add_argument("--steps", type=int, default=None, help="fine-tune optimizer steps (default 1000; tiny 20)")
    p.add_argument("--lr", type=float, default=None, help="fine-tune peak learning rate (default 3e-4; tiny 1e-3)")
    p.add_argument("--batch-size", type=int, default=None, help="(default 64; tiny 16)")
    p.add_argument("--workers", type=int, default=1, help="parallel episode workers of each run and the datagen")
    p.add_argument("--workdir", type=Path, default=None, help="default runs/nudge_round[_tiny]")
    p.add_argument("--json", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    tiny = args.preset == "tiny"
    args.family = args.family or (list(TINY_FAMILIES) if tiny else None)
    args.episodes = args.episodes or (2 if tiny else 50)
    args.heldout_episodes = args.heldout_episodes or (1 if tiny else 20)
    args.expert_episodes = args.expert_episodes or (4 if tiny else 300)
    args.steps = args.steps or (20 if tiny else 1000)
    args.lr = args.lr or (1e-3 if tiny else 3e-4)
    args.batch_size = args.batch_size or (16 if tiny else 64)
    args.all_nudges = args.all_nudges or tiny  # a tiny VLA rarely finishes a subtask, nudged or not
    args.workdir = (args.workdir or ROOT / "runs" / ("nudge_round_tiny" if tiny else "nudge_round")).resolve()
    for name in ("episodes", "heldout_episodes", "expert_episodes", "steps", "batch_size", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < args.nudge_share < 1:
        p.error(f"--nudge-share must be between 0 and 1, got {args.nudge_share}")
    return args


# --- running the CLI -----------------------------------------------------------------------------------
def run_flags(args) -> list:
    """What every `hivla run` of the round shares: the planner, the suite, the size of a tiny round."""
    flags = ["--high-level", "oracle", "--suite", "base", "--workers", args.workers, "--quiet"]
    return flags + (["--image-size", 32, "--max-steps", 150] if args.preset == "tiny" else [])


def family_flags(args, flag: str = "--family") -> list:
    if not args.family:
        return []
    return [x for f in args.family for x in (flag, f)] if flag == "--family" else [flag, *args.family]


def trained(out: Path, steps: int) -> bool:
    state = out / TRAINER_STATE
    return state.is_file() and json.loads(state.read_text()).get("step", 0) >= steps


def tiny_checkpoint(stages: TimedStages, args) -> Path:
    """--preset tiny: a tiny VLA trained here on a few scripted-expert episodes (it gets stuck: the coach nudges)."""
    data, ckpt = args.workdir / "base_data", args.workdir / "base_vla"
    if not trained(ckpt, 150):
        if not (ckpt / TRAINER_STATE).is_file():
            shutil.rmtree(data, ignore_errors=True)  # an interrupted datagen's sessions would be read twice
            stages.hivla("setup", "datagen", "--suite", "base", *family_flags(args, "--families"), "--episodes", 6,
                         "--out", data, "--image-size", 32, "--max-steps", 150, "--seed", 0)
        stages.hivla("setup", "train", "--model", "vla", "--preset", "tiny", "--data", data, "--out", ckpt,
                     "--steps", 150, "--batch-size", 16, "--lr", 3e-3, "--closed-loop-every", 0, "--threads", 1,
                     *(["--resume"] if (ckpt / TRAINER_STATE).is_file() else []))
    return ckpt


# --- the round -----------------------------------------------------------------------------------------
def coached_run(stages: TimedStages, args, checkpoint: Path) -> dict:
    out = args.workdir / "coached"
    path = out / "run.json"
    if not path.is_file():
        shutil.rmtree(out / "sessions", ignore_errors=True)  # a partial run's sessions would be counted twice
        stages.hivla("a_coached", "run", *run_flags(args), "--low-level", f"vla:{checkpoint}", *family_flags(args),
                     "--episodes", args.episodes, "--seed", args.seed, "--coach", "scripted",
                     "--out", out / "sessions", "--json", path)
    return json.loads(path.read_text())


def nudges(args) -> dict:
    """Every nudge of the coached run, the steps it moved and whether its subtask was then completed."""
    path = args.workdir / "coached" / "nudges.json"
    if not path.is_file():
        from agent.coaching.nudge_bursts import summarise

        path.write_text(json.dumps(summarise([args.workdir / "coached" / "sessions"]), indent=1) + "\n")
    return json.loads(path.read_text())


def export(stages: TimedStages, args) -> dict:
    """The nudged episodes as a LeRobot dataset; how many frames its intervention column marks."""
    import pyarrow.parquet as pq

    out = args.workdir / "export"
    if not (out / "meta" / "info.json").is_file():
        stages.hivla("b_export", "export", args.workdir / "coached" / "sessions", "--format", "lerobot", "--kind",
                     "nudge", "--only-corrections", "--out", out, "--force")
    from sessions.export.lerobot_files import DATA_PATH, INTERVENTION

    flags = pq.read_table(out / DATA_PATH.format(chunk_index=0, file_index=0), columns=[INTERVENTION])[INTERVENTION]
    return {"frames": len(flags), "intervention_frames": int(sum(flags.to_pylist()))}


def expert_data(stages: TimedStages, args) -> dict:
    out, counts = args.workdir / "expert", args.workdir / "expert.json"
    if not counts.is_file():
        shutil.rmtree(out, ignore_errors=True)  # an interrupted datagen's sessions would be read twice
        stages.hivla("c_expert_data", "datagen", "--suite", "base", *family_flags(args, "--families"),
                     "--episodes", args.expert_episodes, "--out", out, "--noise", 0.004,
                     "--image-size", 32 if args.preset == "tiny" else 128, "--max-steps", 500,
                     "--seed", args.expert_seed, "--put-down-share", 0.15, "--workers", args.workers)
        from sessions.reader import iter_sessions

        eps = [ep for s in iter_sessions([out]) for ep in s.episodes]
        counts.write_text(json.dumps({"episodes": len(eps), "steps": sum(len(ep.steps) for ep in eps)}) + "\n")
    return json.loads(counts.read_text())


def finetune(stages: TimedStages, args, checkpoint: Path, nudge_steps: int, expert_steps: int) -> tuple[Path, dict]:
    """One fine-tune of `checkpoint` on the nudge samples and the expert set thinned to --nudge-share."""
    out = args.workdir / "vla_nudged"
    share = args.nudge_share
    stride = max(1, round(expert_steps * share / (nudge_steps * (1 - share))))
    if not trained(out, args.steps):
        stages.hivla("c_finetune", "train", "--model", "vla", "--init-from", checkpoint, "--data",
                     args.workdir / "expert", "--nudge-data", args.workdir / "coached" / "sessions",
                     *(["--all-nudges"] if args.all_nudges else []), "--stride", stride, "--out", out,
                     "--steps", args.steps, "--lr", args.lr, "--batch-size", args.batch_size,
                     "--closed-loop-every", 0, "--threads", 1,
                     *(["--resume"] if (out / TRAINER_STATE).is_file() else []))
    meta = json.loads((out / "vla_cache.json").read_text())
    state = json.loads((out / TRAINER_STATE).read_text())
    return out, {"stride": stride, "samples": meta["samples"], "nudge_samples": meta["nudge_samples"],
                 "nudge_share": meta["nudge_samples"] / meta["samples"], "steps": state["step"],
                 "train_time_s": state["elapsed_s"]}


def evaluate(stages: TimedStages, args, checkpoint: Path, when: str, families: list[str], last_seed: int) -> dict:
    """`checkpoint` with nobody coaching: the nudged families on the coached seeds (recorded), and held-out seeds."""
    from agent.coaching.nudge_bursts import completed_subtasks
    from sessions.reader import iter_sessions

    out = args.workdir / when
    replay, heldout = out / "nudged_run.json", out / "heldout.json"
    if not replay.is_file():
        shutil.rmtree(out / "sessions", ignore_errors=True)
        stages.hivla(f"d_{when}", "run", *run_flags(args), "--low-level", f"vla:{checkpoint}",
                     *[x for f in families for x in ("--family", f)], "--episodes", last_seed - args.seed + 1,
                     "--seed", args.seed, "--out", out / "sessions", "--json", replay)
    if not heldout.is_file():
        stages.hivla(f"d_{when}", "run", *run_flags(args), "--low-level", f"vla:{checkpoint}", *family_flags(args),
                     "--episodes", args.heldout_episodes, "--seed", args.heldout_seed, "--json", heldout)
    episodes = {(ep.start.family, ep.start.seed): {"completed": completed_subtasks(ep), "success": bool(ep.success)}
                for s in iter_sessions([out / "sessions"]) for ep in s.episodes}
    return {"episodes": episodes, "replay": json.loads(replay.read_text()), "heldout": json.loads(heldout.read_text())}


def situations(rows: list[dict], trained_only: bool) -> list[tuple[str, int, str]]:
    """The (family, seed, subtask) the coach nudged in, once each (of the nudges trained on, or all)."""
    return sorted({(r["family"], r["seed"], r["subtask"]) for r in rows
                   if r["subtask"] and r["burst_steps"] and (r["helped"] or not trained_only)})


def rates(evaluation: dict, trained_on: list, nudged: list) -> dict:
    eps = evaluation["episodes"]

    def completed(group):
        hits = [s in eps.get((f, seed), {}).get("completed", ()) for f, seed, s in group]
        return {"n": len(hits), "completed": sum(hits), "rate": sum(hits) / len(hits) if hits else None}

    nudged_eps = sorted({(f, seed) for f, seed, _ in nudged})
    ok = [eps.get(key, {}).get("success", False) for key in nudged_eps]
    return {"nudged_subtasks_trained_on": completed(trained_on), "nudged_subtasks_all": completed(nudged),
            "nudged_episodes": {"n": len(ok), "success": sum(ok), "rate": sum(ok) / len(ok) if ok else None},
            "nudged_families_same_seeds": evaluation["replay"]["success_rate"],
            "heldout_success": evaluation["heldout"]["success_rate"],
            "heldout_episodes": evaluation["heldout"]["episodes"]}


# --- the table -----------------------------------------------------------------------------------------
def table(result: dict):
    from rich.table import Table

    n, d, ft = result["nudges"], result["data"], result["finetune"]
    t = Table(title=f"nudge round: {result['coached']['episodes']} coached episodes, {n['nudges']} nudges "
                    f"({n['helped']} followed by the subtask done), {ft['nudge_samples']} nudge samples of "
                    f"{ft['samples']} ({100 * ft['nudge_share']:.0f}%), {ft['steps']} steps; export marks "
                    f"{d['export']['intervention_frames']} frames")
    for col in ("on", "n", "BEFORE", "AFTER", "change"):
        t.add_column(col, justify="left" if col == "on" else "right")
    before, after = result["before"], result["after"]

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    def row(label, key, n_key=None):
        b, a = before[key], after[key]
        if isinstance(b, dict):
            nums, b, a = str(b["n"]), b["rate"], a["rate"]
        else:
            nums = str(n_key) if n_key is not None else ""
        change = "-" if b is None or a is None else f"{100 * (a - b):+.1f}"
        t.add_row(label, nums, pct(b), pct(a), change)

    row("nudged subtasks completed (trained on)", "nudged_subtasks_trained_on")
    row("nudged subtasks completed (all nudged)", "nudged_subtasks_all")
    row("nudged episodes succeeded", "nudged_episodes")
    row("nudged families, coached seeds: success", "nudged_families_same_seeds", result["replay_episodes"])
    row("held-out seeds, suite: success", "heldout_success", before["heldout_episodes"])
    return t


def main(argv=None) -> int:
    from agent.commands.output import table_console

    args = parse_args(argv)
    console = table_console()
    args.workdir.mkdir(parents=True, exist_ok=True)
    stages = TimedStages(args.workdir, "nudge_round.log", console)
    started = time.perf_counter()
    checkpoint = args.checkpoint or (tiny_checkpoint(stages, args) if args.preset == "tiny" else SHIPPED_VLA)
    checkpoint = checkpoint.resolve()
    if not (checkpoint / "model.safetensors").is_file():
        raise SystemExit(f"no VLA checkpoint at {checkpoint}; pass --checkpoint (or --preset tiny for a miniature)")

    coached = coached_run(stages, args, checkpoint)
    said = nudges(args)
    rows = said["rows"]
    nudge_steps = said["burst_steps"] if args.all_nudges else said["helped_steps"]
    if not nudge_steps:
        raise SystemExit(f"{said['nudges']} nudges in {said['episodes']} coached episodes, none "
                         f"{'moved the arm' if args.all_nudges else 'followed by its subtask completed'}: "
                         "nothing to learn from; coach more episodes (--episodes)" +
                         ("" if args.all_nudges else " or train on every nudge (--all-nudges)"))
    exported = export(stages, args)
    expert = expert_data(stages, args)
    tuned, ft = finetune(stages, args, checkpoint, nudge_steps, expert["steps"])

    nudged = situations(rows, trained_only=False)
    trained_on = situations(rows, trained_only=not args.all_nudges)
    families = sorted({f for f, _, _ in nudged})
    last_seed = max(seed for _, seed, _ in nudged)
    evals = {when: evaluate(stages, args, ckpt, when, families, last_seed)
             for when, ckpt in (("before", checkpoint), ("after", tuned))}
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        | {"checkpoint": str(checkpoint)},
        "coached": {k: coached.get(k)
                    for k in ("episodes", "success_rate", "interventions_per_episode", "wall_time_s")},
        "nudges": {k: v for k, v in said.items() if k != "rows"}
        | {"per_episode": said["nudges"] / max(1, said["episodes"])},
        "data": {"export": exported, "expert": expert},
        "finetune": ft,
        "replay_families": families,
        "replay_episodes": evals["before"]["replay"]["episodes"],
        "before": rates(evals["before"], trained_on, nudged),
        "after": rates(evals["after"], trained_on, nudged),
        "situations": {"trained_on": trained_on, "all": nudged},
        "nudge_rows": rows,
        "wall_time_s": {**stages.wall, "this_run": time.perf_counter() - started},
    }
    console.print(table(result))
    write_results(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
