"""One round of learning from facts (issue 33): does reading improve where people corrected it, and do
decisions hold?

  a. coached episodes: the grounded planner with the shipped VLA as the low level, on the base suite,
     the scripted coach stating only facts (what the planner's scene line gets wrong), recorded
        hivla run --high-level pi05:BASE --suite base --episodes N --seed S --coach facts --out W/sessions ...
  b. their facts exported
        hivla export W/sessions --format sft --kind fact --out W/export
  c. the read-out fine-tuned on them, each on the frames it refers to (the coach's: those the plan it
     contradicted was read from), the facts the base read-out already reads as stated there left out
     (facts.skipped), planner frames mixed in (heads only: decisions given a line cannot change)
        hivla finetune --base BASE --data W/export --readout-facts --base-data ... --out W/facts_ckpt
  d. BEFORE and AFTER, on held-out planner frames of seeds neither model saw (--heldout): reading
     (agent.training.facts_finetune.reading_by_kind: objects right and whole scene lines right, by the
     kind of place a fact can correct, and over the frames of the kinds the facts corrected) and
     base decisions (benchmarks/offline_eval.py --frames F --questions 0: the plan decoded after the
     planner's own line, and after the true line)

    python benchmarks/facts_round.py                     # the full round: 100 coached episodes (12 a family)
    python benchmarks/facts_round.py --preset tiny       # a self-contained miniature (a tiny grounded
                                                         # planner trained here, the expert as low level)
    python benchmarks/facts_round.py --fact-share 0      # the control arm, in the same --workdir
    python benchmarks/facts_round.py --room dim ...      # the coached episodes in a room no model was
                                                         # trained in (agent/envs/scene.py ROOMS)

The control arm (`--fact-share 0`) is the identical fine-tune (steps, lr, batch size, seed) with no fact
row in any batch: planner frames alone. Run in the workdir of a round, it reuses that round's coached
sessions, export and BEFORE evaluations, so the facts are the same ones, chosen and read before and
after exactly as in the round, and its JSON compares with the round's side by side: what the facts
did is the difference between the arms' AFTER. Each fact share has its own fine-tune and AFTER files
(W/facts_ckpt and W/*_after.json for the default 0.25; W/facts_ckpt_control and W/*_after_control.json
for 0; W/facts_ckpt_share0.5 ... for another), and its own default --json.

Every stage is the documented command, run as a subprocess and logged to W/facts_round.log; a stage
whose output is in --workdir already is skipped, so an interrupted round continues where it stopped
(the fine-tune itself resumes). The must-show of issue 33: scene lines right on the frames of the
corrected kinds up, base decisions (own line) down at most 1 point. Prints one table and writes
benchmarks/results/facts_round.json (the control arm: facts_round_control.json; or --json).
"""

from __future__ import annotations

import argparse
import json
import math
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
RESULTS = ROOT / "benchmarks" / "results" / "facts_round.json"
# planner frames mixed into the full round's fine-tune: the four sets policies/checkpoints/grounded/MODEL_CARD.md
# records after the push fix (step 6d), labelled as the held-out frames are (runs/grounded_frames_heldout_v2,
# re-recorded after it). The read-out learned from runs/grounded_frames and runs/grounded_frames_vla, recorded
# before it: a block pushed by closed jaws is labelled held there and on the table in the held-out frames.
# The fifth, frames of episodes the shipped VLA executes recorded after the fix (session 13), keeps the states
# the learned low level leaves in the mix: without it the fine-tune, facts or none, read held-out frames of
# VLA-executed episodes 1.2-1.4 points worse (facts_round_v4_*_on_vla.json). Record it with
#   hivla datagen --mode planner --low-level default --episodes 1000 --shard-episodes 50 --seed 220000 \
#       --workers 2 --out runs/grounded_frames_vla_v2 --noise 0.004 --max-steps 500 --image-size 64
BASE_DATA = ("grounded_frames_v2", "grounded_frames_coached_v2", "grounded_frames_push", "grounded_frames_swap_v2",
             "grounded_frames_vla_v2")
# held-out frames of VLA-executed episodes, seeds never trained on (--heldout runs/grounded_frames_heldout_vla):
#   hivla datagen --mode planner --low-level default --episodes 300 --shard-episodes 50 --seed 970000 \
#       --workers 2 --out runs/grounded_frames_heldout_vla --noise 0.004 --max-steps 500 --image-size 64
HELDOUT = "grounded_frames_heldout_v2"
FACT_SHARE = 0.25  # the round's default; its files keep their plain names (a round's workdir from before arms)
N_FAMILIES = 9  # the base suite's
# the tiny grounded planner of --preset tiny (as tests/test_grounded.py's TINY)
TINY = {"image_size": 32, "width": 32, "depth": 1, "mlp_dim": 64, "head_dim": 16, "vision_width": 32,
        "vision_depth": 1, "vision_heads": 2, "vision_mlp_dim": 32}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="full", choices=["full", "tiny"], help="tiny: a miniature round (minutes)")
    p.add_argument("--checkpoint", default=None, help="the grounded planner (default: the shipped one)")
    p.add_argument("--low-level", default=None, help="low-level spec of the coached run (default: the shipped VLA; "
                                                     "tiny: expert)")
    p.add_argument("--episodes", type=int, default=None,
                   help="coached episodes in all, rounded up to whole episodes a family (default 100: 12 a family)")
    p.add_argument("--seed", type=int, default=500_000, help="seeds of the coached episodes (none trained or held out)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--room", default="training", choices=["training", "dim"],
                   help="the room the coached episodes run in (agent/envs/scene.py ROOMS): dim, one no model "
                        "was trained in, asks what the facts teach a robot somewhere new")
    p.add_argument("--base-data", nargs="+", default=None,
                   help="planner frames mixed into the fine-tune (default: BASE_DATA, the frame sets the "
                        "shipped checkpoint's card records after the push fix, labelled as --heldout is)")
    p.add_argument("--heldout", default=None,
                   help="planner frames of seeds never trained on (default: runs/grounded_frames_heldout_v2)")
    p.add_argument("--finetune-steps", type=int, default=None, help="(default 300; tiny 40)")
    p.add_argument("--fact-share", type=float, default=FACT_SHARE,
                   help=f"share of every fine-tune batch from facts, in [0, 1] (default {FACT_SHARE}); 0: the "
                        f"control arm, the same fine-tune on planner frames alone, the facts only evaluated")
    p.add_argument("--lr", type=float, default=None, help="fine-tune peak learning rate (default 1e-3; tiny 1e-2)")
    p.add_argument("--scope", default="heads", choices=["heads", "readout"], help="what the fine-tune trains")
    p.add_argument("--fact-span", type=int, default=0,
                   help="also learn each fact on the frames within this many steps of its own while it holds "
                        "(the fine-tune then reads the coached sessions, not the export: it keeps one frame a fact)")
    p.add_argument("--finetune-seed", type=int, default=0,
                   help="the fine-tune's seed (which planner frames, which batches); "
                        "arms differing only here measure the fine-tune's own noise")
    p.add_argument("--fact-weight", type=float, default=1.0,
                   help="weight of the fact rows' loss against the planner frames' (1: equal terms)")
    p.add_argument("--labelled-frames", nargs="+", default=None,
                   help="planner frames with every label known, drawn into the fact share (the ceiling arm: "
                        "benchmarks/closed_loop_frames.py on this round's own sessions)")
    p.add_argument("--fact-unsaid", default="ignore", choices=["ignore", "base"],
                   help="a fact row's other objects: unlabelled, or the base read-out's reading")
    p.add_argument("--frames", type=int, default=None, help="offline_eval plan frames (default 1000; tiny 40)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the fine-tune and the evaluations")
    p.add_argument("--workdir", type=Path, default=None,
                   help="sessions, export, checkpoints (default runs/facts_round[_tiny])")
    p.add_argument("--json", type=Path, default=None, help="default benchmarks/results/facts_round[ARM].json")
    args = p.parse_args(argv)
    tiny = args.preset == "tiny"
    args.episodes = args.episodes or (N_FAMILIES if tiny else 100)
    args.finetune_steps = args.finetune_steps or (40 if tiny else 300)
    args.frames = args.frames or (40 if tiny else 1000)
    args.lr = args.lr or default_lr(args)
    args.workdir = (args.workdir or ROOT / "runs" / ("facts_round_tiny" if tiny else "facts_round")).resolve()
    if tiny and args.low_level is None:
        args.low_level = "expert"
    for name in ("episodes", "workers", "finetune_steps", "frames", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0.0 <= args.fact_share <= 1.0:
        p.error(f"--fact-share must be in [0, 1] (0: the control arm), got {args.fact_share}")
    args.json = args.json or RESULTS.with_name(f"{RESULTS.stem}{arm(args)}.json")
    return args


def arm(args) -> str:
    """The suffix of this arm's fine-tune and AFTER files: none for the default share, `_control` for 0,
    `_share0.5` for another, then `_readout` and `_lr3e-4` where scope or lr are not the defaults (so arms
    that differ only there keep their own files); the coached run, the export and BEFORE are every arm's."""
    share = "" if args.fact_share == FACT_SHARE else "_control" if args.fact_share == 0 else f"_share{args.fact_share:g}"
    scope = "" if args.scope == "heads" else f"_{args.scope}"
    lr = "" if args.lr == default_lr(args) else f"_lr{args.lr:g}"
    span = f"_span{args.fact_span}" if args.fact_span else ""
    unsaid = "" if args.fact_unsaid == "ignore" else f"_unsaid{args.fact_unsaid}"
    weight = "" if args.fact_weight == 1.0 else f"_w{args.fact_weight:g}"
    seed = f"_seed{args.finetune_seed}" if args.finetune_seed else ""
    labelled = "_labelled" if args.labelled_frames else ""
    return share + scope + lr + span + unsaid + weight + seed + labelled


def default_lr(args) -> float:
    return 1e-2 if args.preset == "tiny" else 1e-3


# --- running the CLI -----------------------------------------------------------------------------------
def tiny_setup(stages: TimedStages, args) -> tuple[Path, list[str], str]:
    """--preset tiny: planner frames (training and held out) and a tiny grounded planner trained on them."""
    w = args.workdir
    frames, heldout, readout, ckpt = w / "frames", w / "heldout", w / "readout", w / "base_ckpt"
    common = ["--mode", "planner", "--suite", "base", "--image-size", 32, "--render-size", 32, "--max-steps", 200]
    if not any(frames.glob("shard_*.safetensors")):
        stages.hivla("setup", "datagen", *common, "--episodes", 2 * N_FAMILIES, "--seed", 0, "--out", frames)
    if not any(heldout.glob("shard_*.safetensors")):
        stages.hivla("setup", "datagen", *common, "--episodes", N_FAMILIES, "--seed", 900_000, "--out", heldout)
    tiny = [x for k, v in TINY.items() for x in ("--set", f"{k}={v}")]
    if not (readout / "model.safetensors").is_file():
        stages.hivla("setup", "train", "--model", "readout", "--preset", "grounded", "--data", frames, "--out", readout,
                     "--steps", 60, "--batch-size", 16, "--lr", 3e-3, "--eval-every", 60, "--threads", args.threads,
                     *tiny)
    if not (ckpt / "model.safetensors").is_file():
        stages.hivla("setup", "train", "--preset", "grounded", "--readout", readout, "--data", frames, "--out", ckpt,
                     "--steps", 20, "--batch-size", 8, "--eval-every", 20, "--threads", args.threads, *tiny)
    return ckpt, [str(frames)], str(heldout)


# --- the round -----------------------------------------------------------------------------------------
def coached_run(stages: TimedStages, args, base: Path) -> dict:
    w = args.workdir
    path = w / "coached.json"
    if not path.is_file():
        shutil.rmtree(w / "sessions", ignore_errors=True)  # a partial run's sessions would be counted twice
        per_family = math.ceil(args.episodes / N_FAMILIES)
        low = ["--low-level", args.low_level] if args.low_level else []
        tiny = ["--image-size", 32, "--max-steps", 80] if args.preset == "tiny" else []
        stages.hivla("a_coached_run", "run", "--high-level", f"pi05:{base}", *low, "--suite", "base",
                     "--episodes", per_family, "--seed", args.seed, "--coach", "facts", "--out", w / "sessions",
                     "--workers", args.workers, "--quiet", "--json", path, "--room", args.room, *tiny)
    return json.loads(path.read_text())


def export(stages: TimedStages, args) -> Path:
    out = args.workdir / "export"
    if not (out / "manifest.json").is_file():
        stages.hivla("b_export", "export", args.workdir / "sessions", "--format", "sft", "--kind", "fact",
                     "--out", out, "--force")
    return out


def finetune(stages: TimedStages, args, base: Path, data: Path, base_data: list[str]) -> tuple[Path, dict]:
    out = args.workdir / f"facts_ckpt{arm(args)}"
    summary = out / "finetune_summary.json"
    if summary.is_file():
        check_finetuned_as_asked(args, out)
    else:
        source = args.workdir / "sessions" if args.fact_span else data  # an export keeps one frame a fact
        stages.hivla("c_finetune", "finetune", "--base", base, "--data", source, "--readout-facts", "--base-data",
                     *base_data, "--out", out, "--steps", args.finetune_steps, "--fact-share", args.fact_share,
                     "--lr", args.lr, "--readout-scope", args.scope, "--fact-span", args.fact_span,
                     "--fact-unsaid", args.fact_unsaid, "--fact-weight", args.fact_weight, "--seed", args.finetune_seed,
                     *(["--labelled-frames", *args.labelled_frames] if args.labelled_frames else []), "--threads", args.threads, "--resume")
    return out, json.loads(summary.read_text())


def check_finetuned_as_asked(args, out: Path) -> None:
    """A fine-tune already in the workdir is reused only if it was run as asked now: another share, lr,
    step count or scope there would be reported under this one's flags."""
    info = json.loads((out / "checkpoint_info.json").read_text()).get("readout_facts") or {}
    asked = {"fact_share": args.fact_share, "lr": args.lr, "steps": args.finetune_steps, "scope": args.scope,
             "span": args.fact_span, "unsaid": args.fact_unsaid, "fact_weight": args.fact_weight}
    before_flags = {"span": 0, "unsaid": "ignore", "fact_weight": 1.0}  # what a fine-tune from before these flags did
    differ = [f"{k} {info.get(k, before_flags.get(k))} (asked {v})" for k, v in asked.items()
              if info.get(k, before_flags.get(k)) != v]
    if differ:
        raise SystemExit(f"{out} was fine-tuned otherwise: {', '.join(differ)}; pass another --workdir, or remove "
                         f"{out} and {args.workdir}/*_after{arm(args)}.json to run it again")


def reading(args, checkpoint: Path, heldout: str, corrected: tuple[str, ...], path: Path) -> dict:
    """The read-out's reading of every held-out frame, by kind (in this process: the read-out alone)."""
    if path.is_file():
        return json.loads(path.read_text())
    import torch

    from agent.training.facts_finetune import reading_by_kind
    from agent.training.readout_trainer import load_frames
    from policies.pi05.policy import load_checkpoint

    torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(checkpoint)
    frames = load_frames([heldout], model.cfg.image_size, log=lambda *_: None)
    result = reading_by_kind(model.vision, frames, torch.arange(len(frames.tasks)), "bf16", torch.device("cpu"),
                             corrected=corrected)
    path.write_text(json.dumps(result, indent=1) + "\n")
    return result


def decisions(stages: TimedStages, args, checkpoint: Path, heldout: str, path: Path) -> dict:
    if not path.is_file():
        stages.script("d_offline_eval", "benchmarks/offline_eval.py", "--checkpoint", checkpoint, "--data", heldout,
                      "--frames", args.frames, "--questions", 0, "--threads", args.threads, "--json", path)
    return json.loads(path.read_text())["decisions"]


# --- the table -----------------------------------------------------------------------------------------
def table(result: dict):
    from rich.table import Table

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    before, after = result["before"], result["after"]
    corrected = set(result["corrected_kinds"])
    control = " CONTROL ARM (--fact-share 0: no fact trained on; the facts only read)" \
        if result["finetune"]["control"] else f" (fact share {result['finetune']['fact_share']:g})"
    t = Table(title=f"facts round{control}: {result['facts']['total']} facts from {result['coached']['episodes']} "
                    f"coached episodes; held-out frames {before['reading']['frames']}")
    for col in ("held-out frames", "facts", "objects\nbefore", "objects\nafter", "lines\nbefore", "lines\nafter"):
        t.add_column(col, justify="left" if col.startswith("held") else "right")
    by_kind = result["facts"]["train_by_kind"]
    for kind, b in before["reading"]["kinds"].items():
        a = after["reading"]["kinds"][kind]
        t.add_row(f"{kind}{' *' if kind in corrected else ''} (n={b['frames']})", str(by_kind.get(kind, 0)),
                  pct(b["objects_right"]), pct(a["objects_right"]), pct(b["lines_right"]), pct(a["lines_right"]))
    b, a = before["reading"]["corrected_kinds"], after["reading"]["corrected_kinds"]
    t.add_row(f"corrected kinds * (n={b.get('frames', 0)})", str(result["facts"]["train"]), pct(b.get("objects_right")),
              pct(a.get("objects_right")), pct(b.get("lines_right")), pct(a.get("lines_right")))
    t.add_row(f"all frames (n={before['reading']['frames']})", "", pct(before["reading"]["objects_right"]),
              pct(after["reading"]["objects_right"]), pct(before["reading"]["scene_lines_right"]),
              pct(after["reading"]["scene_lines_right"]))
    facts = result["facts_read_as_stated"]
    t.add_row(f"training facts read as stated (n={facts['train_n']}; {facts['train_skipped']} more already were, "
              f"left out)", "", pct(facts["train_before"]), pct(facts["train_after"]), "", "")
    t.add_row(f"held-out facts read as stated (n={facts['held_out_n']})", "", pct(facts["held_out_before"]),
              pct(facts["held_out_after"]), "", "")
    for group in ("all", "decision due"):
        for given in ("", " (true line given)"):
            key = group + given
            if key in before["decisions"]:
                t.add_row(f"decisions: {key} (n={before['decisions'][key]['frames']})", "",
                          pct(before["decisions"][key]["accuracy"]), pct(after["decisions"][key]["accuracy"]), "", "")
    return t


def main(argv=None) -> int:
    from agent.commands.output import table_console

    args = parse_args(argv)
    console = table_console()
    args.workdir.mkdir(parents=True, exist_ok=True)
    stages = TimedStages(args.workdir, "facts_round.log", console)
    started = time.perf_counter()
    if args.preset == "tiny" and args.checkpoint is None:
        base, base_data, heldout = tiny_setup(stages, args)
    else:
        from agent.specs import SHIPPED_CHECKPOINT

        base = Path(args.checkpoint or SHIPPED_CHECKPOINT)
        base_data = args.base_data or [str(ROOT / "runs" / name) for name in BASE_DATA]
        heldout = args.heldout or str(ROOT / "runs" / HELDOUT)
    base = base.resolve()
    if not (base / "model.safetensors").is_file():
        raise SystemExit(f"no checkpoint at {base}; pass --checkpoint (or --preset tiny for a miniature round)")
    for path in [*base_data, heldout]:
        if not (Path(path) / "planner_frames.json").is_file():
            raise SystemExit(f"{path}: no planner frames; record them with `hivla datagen --mode planner` "
                             f"(see policies/checkpoints/grounded/MODEL_CARD.md)")

    coached = coached_run(stages, args, base)
    data = export(stages, args)
    tuned, summary = finetune(stages, args, base, data, base_data)
    corrected = tuple(summary["facts"]["train_by_kind"])
    w = args.workdir
    result_reading = {}
    # BEFORE (the base checkpoint) is every arm's; frames other than the default held-out set, their own files
    on = "" if args.preset == "tiny" or Path(heldout).name == HELDOUT else f"_on_{Path(heldout).name}"
    files = {"before": on, "after": arm(args) + on}
    for when, ckpt in (("before", base), ("after", tuned)):
        t0 = time.perf_counter()
        path = w / f"reading_{when}{files[when]}.json"
        fresh = not path.is_file()
        result_reading[when] = reading(args, ckpt, heldout, corrected, path)
        if fresh:
            stages.add("d_reading", time.perf_counter() - t0)
    result_decisions = {when: decisions(stages, args, ckpt, heldout, w / f"offline_{when}{files[when]}.json")
                        for when, ckpt in (("before", base), ("after", tuned))}

    def acc(when: str, key: str):
        row = result_decisions[when].get(key)
        return row["accuracy"] if row else None

    lines_b = result_reading["before"]["corrected_kinds"].get("lines_right")
    lines_a = result_reading["after"]["corrected_kinds"].get("lines_right")
    drop = None if acc("before", "all") is None else 100 * (acc("before", "all") - acc("after", "all"))
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        | {"checkpoint": str(base), "base_data": base_data, "heldout": heldout,
           "episodes_per_family": math.ceil(args.episodes / N_FAMILIES)},
        "coached": {k: coached.get(k)
                    for k in ("episodes", "success_rate", "interventions_per_episode", "wall_time_s")},
        "facts": summary["facts"],
        "corrected_kinds": list(corrected),
        "facts_read_as_stated": {
            "train_n": summary["before"]["facts_train"]["n"],
            "train_skipped": (summary["facts"].get("skipped") or {}).get("already read as stated", 0),
            "train_before": summary["before"]["facts_train"]["as_stated"],
            "train_after": summary["after"]["facts_train"]["as_stated"],
            "held_out_n": summary["before"]["facts_held_out"]["n"],
            "held_out_before": summary["before"]["facts_held_out"]["as_stated"],
            "held_out_after": summary["after"]["facts_held_out"]["as_stated"]},
        "finetune": {"scope": summary["scope"], "steps": summary["step"], "train_time_s": summary["elapsed_s"],
                     "trainable_parameters": summary["trainable_parameters"], "checkpoint": str(tuned),
                     "fact_share": args.fact_share, "control": args.fact_share == 0,
                     "batch": summary.get("batch")},
        "before": {"reading": result_reading["before"], "decisions": result_decisions["before"]},
        "after": {"reading": result_reading["after"], "decisions": result_decisions["after"]},
        "must_show": {
            "corrected_kinds_lines_right": [lines_b, lines_a],
            "corrected_kinds_lines_up": None if lines_b is None or lines_a is None else lines_a > lines_b,
            "decisions_drop_points": drop,
            "decisions_down_at_most_1_point": None if drop is None else drop <= 1.0},
        "wall_time_s": {**stages.wall, "this_run": time.perf_counter() - started},
    }
    console.print(table(result))
    console.print(("control arm (no fact trained on): " if args.fact_share == 0 else "")
                  + f"scene lines right on the corrected kinds' frames: "
                  f"{'-' if lines_b is None else f'{100 * lines_b:.1f}%'} -> "
                  f"{'-' if lines_a is None else f'{100 * lines_a:.1f}%'}; base decisions (own line) "
                  f"{'-' if drop is None else f'{-drop:+.1f}'} points")
    write_results(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
