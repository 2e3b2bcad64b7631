"""Learning from coaching, end to end: do coached mistakes stop recurring?

Round 0 evaluates a checkpoint autonomously (no coach) on the `coaching` and `base` suites. Each
round r = 1..R then
  1. runs M coached episodes on `coaching` with the current checkpoint (scripted coach, recorded),
  2. exports the coached sessions of every round so far (`hivla export --format sft`: the corrections
     and the plans the coach let stand),
  3. fine-tunes the high level of the *base* checkpoint on base data ∪ that coaching data
     (`hivla finetune`, share of each batch from coaching data 0.1),
  4. evaluates the new checkpoint autonomously on both suites again (same seeds every round).
After the last round, M more coached episodes with the final checkpoint measure how often the
coach still has to step in. Every stage is the documented CLI command, run as a subprocess.

    # the shipped grounded planner (its scene line read by a frozen read-out, the history context) and
    # the shipped VLA as the low level; base data: the planner frames it was trained on (~30 min on 2 cores)
    python benchmarks/coaching_rounds.py --preset grounded --base-data runs/grounded_frames \\
        runs/grounded_frames_vla runs/grounded_frames_swap runs/grounded_frames_coached \\
        --episodes 10 --base-episodes 4 --coached 10 --rounds 2 --workers 2 \\
        --finetune-steps 1000 --correction-share 0.3 --workdir runs/coaching_rounds_grounded
    python benchmarks/coaching_rounds.py --checkpoint policies/checkpoints/small --preset small \\
        --base-data runs/ckpt_small --low-level expert --episodes 10 --base-episodes 4 --coached 10 --rounds 2 \\
        --workers 2 --finetune-steps 1000 --correction-share 0.3      # the run in the README (~30 min on 2 cores)
    python benchmarks/coaching_rounds.py --preset tiny                  # a self-contained miniature

Stages whose results are already in --workdir (eval JSON, coached.json, a finished fine-tune) are
not run again, so an interrupted run continues where it stopped.

With `--preset tiny` and no checkpoint, a tiny base checkpoint is first trained on a few
`hivla datagen` episodes; with `grounded` (the default) or `small` and no checkpoint, the shipped one of
that name is the base. The low level (`--low-level`): `vla`, the shipped VLA (what `hivla run` executes
with when no --low-level is given; the default for a planner-only checkpoint such as `grounded`);
`base`, the base checkpoint's own action expert (the literal "low level frozen"; the default
otherwise); `finetuned`, each round's checkpoint for both levels; `expert`, the scripted expert. Without
--base-data the fine-tune reads the data the base checkpoint records (its checkpoint_info.json); from
round 2 on, the base samples round 1's fine-tune cached (base_cache.safetensors: the same draw, read
without decoding the base data again). Prints one table (round, autonomous success per suite,
interventions per coached episode, corrections collected, correction data as a share of the base
data, wall time) and writes benchmarks/results/coaching_rounds.json (or --json).
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

from benchmarks.stages import CommandLog  # noqa: E402
from benchmarks.report import write_results  # noqa: E402
BASE_CACHE_FILE = "base_cache.safetensors"  # agent/training/finetune_data.py (not imported: no torch here)
RESULTS = ROOT / "benchmarks" / "results" / "coaching_rounds.json"
LOW_LEVELS = ("vla", "base", "finetuned", "expert")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=None, help="base checkpoint (default: the shipped one the preset names; "
                                                      "with --preset tiny, one trained here)")
    p.add_argument("--preset", default="grounded", choices=["tiny", "small", "grounded"],
                   help="which model: the shipped grounded planner (default), the shipped small checkpoint, or tiny "
                        "(a miniature run)")
    p.add_argument("--base-data", nargs="+", default=None,
                   help="the base checkpoint's training data (datagen sessions, planner-frame directories, or a dir "
                        "with its data cache; default: what its checkpoint_info.json records)")
    p.add_argument("--episodes", type=int, default=20, help="autonomous evaluation episodes per coaching family")
    p.add_argument("--base-episodes", type=int, default=6, help="autonomous evaluation episodes per base family")
    p.add_argument("--coached", type=int, default=10, help="M: coached episodes per coaching family and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--low-level", default=None, choices=LOW_LEVELS,
                   help="vla: the shipped VLA; base: the base checkpoint's action expert; finetuned: each round's "
                        "checkpoint; expert: the scripted expert (default: vla for a planner-only checkpoint, "
                        "else base)")
    p.add_argument("--max-base-samples", type=int, default=None,
                   help="base samples each fine-tune keeps in memory (default: hivla finetune's)")
    p.add_argument("--finetune-steps", type=int, default=None, help="(default: 1500; tiny 120)")
    p.add_argument("--correction-share", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: 3e-4; tiny 3e-3)")
    p.add_argument("--image-size", type=int, default=None,
                   help="camera resolution (default: hivla run's, 128; tiny 32)")
    p.add_argument("--max-steps", type=int, default=None, help="per-episode step cap (default: the family budget)")
    p.add_argument("--workers", type=int, default=1, help="parallel episode workers in each run")
    p.add_argument("--seed", type=int, default=1000, help="evaluation seeds (coached episodes use others)")
    p.add_argument("--workdir", type=Path, default=None, help="where sessions, exports and checkpoints go")
    p.add_argument("--json", type=Path, default=RESULTS)
    p.add_argument("--no-final-coached", action="store_true", help="skip the coached episodes after the last round")
    args = p.parse_args(argv)
    tiny = args.preset == "tiny"
    args.finetune_steps = args.finetune_steps or (120 if tiny else 1500)
    args.lr = args.lr or (3e-3 if tiny else 3e-4)
    args.workdir = args.workdir or ROOT / "runs" / f"coaching_rounds_{args.preset}"
    if tiny and args.image_size is None:
        args.image_size = 32  # the tiny model sees 32 px; rendering more is wasted
    for name in ("episodes", "base_episodes", "coached", "rounds", "workers"):
        if getattr(args, name) < (0 if name in ("base_episodes",) else 1):
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_base_samples is not None and args.max_base_samples < 1:
        p.error("--max-base-samples must be at least 1")
    return args


# --- running the CLI -----------------------------------------------------------------------------------
def planner_only(checkpoint: Path) -> bool:
    """A checkpoint whose action expert was never trained (flow_loss_weight 0): it cannot be a low level."""
    config = Path(checkpoint) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("flow_loss_weight", 1.0) == 0


def policy_specs(args, checkpoint: Path, base: Path) -> tuple[str, str | None]:
    """The --high-level and --low-level specs of a run (None: no --low-level, so `hivla run` executes
    with its shipped VLA)."""
    low = {"vla": None, "base": f"pi05:{base}", "finetuned": f"pi05:{checkpoint}", "expert": "expert"}[args.low_level]
    return f"pi05:{checkpoint}", low


def level_flags(args, checkpoint: Path, base: Path) -> list:
    high, low = policy_specs(args, checkpoint, base)
    return ["--high-level", high] + (["--low-level", low] if low else [])


def evaluate(stages: CommandLog, args, checkpoint: Path, base: Path, out: Path) -> dict:
    """Autonomous success on both suites."""
    results = {}
    for suite, n in (("coaching", args.episodes), ("base", args.base_episodes)):
        if n == 0:
            continue
        path = out / f"eval_{suite}.json"
        if path.is_file():  # done by an earlier, interrupted run of this benchmark
            results[suite] = json.loads(path.read_text())
            continue
        stages.hivla("run", *level_flags(args, checkpoint, base), "--suite", suite, "--episodes", n,
                     "--seed", args.seed, "--workers", args.workers, "--quiet", "--json", path, *common_run_flags(args))
        results[suite] = json.loads(path.read_text())
    return results


def coached_run(stages: CommandLog, args, checkpoint: Path, base: Path, out: Path, seed: int) -> dict:
    path = out / "coached.json"
    if not path.is_file():
        shutil.rmtree(out / "sessions", ignore_errors=True)  # a partial run's sessions would be counted twice
        stages.hivla("run", *level_flags(args, checkpoint, base), "--suite", "coaching", "--episodes", args.coached,
                     "--seed", seed, "--workers", args.workers, "--coach", "scripted", "--out", out / "sessions",
                     "--quiet", "--json", path, *common_run_flags(args))
    summary = json.loads(path.read_text())
    summary["corrections"] = count_corrections(out / "sessions")
    return summary


def common_run_flags(args) -> list:
    flags = []
    if args.image_size:
        flags += ["--image-size", args.image_size]
    if args.max_steps:
        flags += ["--max-steps", args.max_steps]
    return flags


def count_corrections(sessions: Path) -> dict:
    """Correction records by kind and mistake in the coached sessions (confirm/resume excluded)."""
    from sessions.reader import iter_sessions

    kinds: dict[str, int] = {}
    mistakes: dict[str, int] = {}
    for session in iter_sessions([sessions]):
        for ep in session.episodes:
            for c in ep.active_corrections:
                if c.kind.value in ("confirm", "resume"):
                    continue
                kinds[c.kind.value] = kinds.get(c.kind.value, 0) + 1
                mistakes[c.mistake or "-"] = mistakes.get(c.mistake or "-", 0) + 1
    return {"total": sum(kinds.values()), "by_kind": kinds, "by_mistake": mistakes}


def tiny_base_checkpoint(stages: CommandLog, args) -> tuple[Path, list[str]]:
    """A tiny checkpoint trained here on a few oracle/expert episodes of the base suite."""
    data, ckpt = args.workdir / "base_data", args.workdir / "base_ckpt"
    if not (ckpt / "model.safetensors").is_file():
        stages.hivla("datagen", "--suite", "base", "--episodes", 18, "--out", data, "--image-size", args.image_size or 32,
                     "--max-steps", 250)
        stages.hivla("train", "--data", data, "--preset", "tiny", "--out", ckpt, "--steps", 400, "--lr", 3e-3,
                     "--batch-size", 16, "--set", "image_size=32", "--eval-every", 400, "--threads", 2)
    return ckpt, [str(data)]


def base_checkpoint(stages: CommandLog, args) -> tuple[Path, list[str] | None]:
    """The base checkpoint and its base data (None: the fine-tune reads what the checkpoint records)."""
    if args.checkpoint:
        return Path(args.checkpoint).resolve(), args.base_data
    if args.preset == "tiny":
        base, base_data = tiny_base_checkpoint(stages, args)
        return base.resolve(), args.base_data or base_data
    from agent.specs import CHECKPOINTS

    return CHECKPOINTS / args.preset, args.base_data


# --- the rounds ---------------------------------------------------------------------------------------
def row_of(round_no: int, evals: dict, coached: dict | None, finetune: dict | None, wall: float) -> dict:
    def rate(suite):
        return evals[suite]["success_rate"] if suite in evals else None

    return {
        "round": round_no,
        "coaching_success": rate("coaching"),
        "base_success": rate("base"),
        "coaching_per_family": {f: s.get("success_rate") for f, s in evals.get("coaching", {}).get("per_family", {}).items()},
        "interventions_per_episode": coached["interventions_per_episode"] if coached else None,
        "coached_success": coached["success_rate"] if coached else None,
        "coached_per_family": {f: {"success": v.get("success_rate"), "interventions": v.get("interventions_per_episode")}
                               for f, v in coached.get("per_family", {}).items()} if coached else None,
        "corrections_collected": coached["corrections"]["total"] if coached else None,
        "corrections_by_mistake": coached["corrections"]["by_mistake"] if coached else None,
        "correction_samples": finetune["corrections"]["correction_samples"] if finetune else 0,
        "correction_share_of_base": finetune["correction_share_of_base"] if finetune else 0.0,
        "agreement_before": finetune["before"] if finetune else None,
        "agreement_after": finetune["after"] if finetune else None,
        "wall_time_s": wall,
    }


def table(rows: list[dict], title: str):
    from rich.table import Table

    t = Table(title=title)
    # short headers: the table must fit an 80-column terminal
    for col in ("round", "coaching\nsuccess", "base\nsuccess", "interv./\ncoached ep", "corrections\ncollected",
                "corr. data\n/ base", "held-out\nagreement", "wall s"):
        t.add_column(col, justify="right")

    def pct(v, digits=0):
        return "-" if v is None else f"{100 * v:.{digits}f}%"

    for r in rows:
        after = (r["agreement_after"] or {}).get("held_out_agreement")
        t.add_row(str(r["round"]), pct(r["coaching_success"]), pct(r["base_success"]),
                  "-" if r["interventions_per_episode"] is None else f"{r['interventions_per_episode']:.2f}",
                  "-" if r["corrections_collected"] is None else str(r["corrections_collected"]),
                  pct(r["correction_share_of_base"], 2), pct(after), f"{r['wall_time_s']:.0f}")
    return t


def main(argv=None) -> int:
    from agent.commands.output import table_console

    args = parse_args(argv)
    console = table_console()
    args.workdir.mkdir(parents=True, exist_ok=True)
    stages = CommandLog(args.workdir / "coaching_rounds.log", console)
    started = time.perf_counter()
    base, base_data = base_checkpoint(stages, args)
    if not (base / "model.safetensors").is_file():
        raise SystemExit(f"no checkpoint at {base}; pass --checkpoint (or --preset tiny for a miniature run)")
    if args.low_level is None:
        args.low_level = "vla" if planner_only(base) else "base"
    if planner_only(base) and args.low_level in ("base", "finetuned"):
        raise SystemExit(f"{base} is a planner only (flow_loss_weight 0): its action expert is untrained; "
                         f"use --low-level vla or expert")

    rows: list[dict] = []
    t0 = time.perf_counter()
    evals = evaluate(stages, args, base, base, args.workdir / "round0")
    checkpoint, finetune_summary = base, None
    for r in range(1, args.rounds + 1):
        out = args.workdir / f"round{r}"
        coached = coached_run(stages, args, checkpoint, base, out, seed=args.seed + 10_000 * r)
        rows.append(row_of(r - 1, evals, coached, finetune_summary, time.perf_counter() - t0))
        console.print(table(rows, "coaching rounds (so far)"))
        t0 = time.perf_counter()
        sessions = [args.workdir / f"round{k}" / "sessions" for k in range(1, r + 1)]
        new_ckpt = out / "ckpt"
        if not (new_ckpt / "finetune_summary.json").is_file():
            stages.hivla("export", *sessions, "--format", "sft", "--out", out / "export", "--force")
        flags = ["--base", base, "--data", out / "export", "--out", new_ckpt, "--steps", args.finetune_steps,
                 "--correction-share", args.correction_share, "--lr", args.lr]
        first_cache = args.workdir / "round1" / "ckpt"
        if r > 1 and (first_cache / BASE_CACHE_FILE).is_file():
            flags += ["--base-data", first_cache]  # round 1's draw of the base data, not decoded again
        elif base_data:
            flags += ["--base-data", *base_data]
        if args.max_base_samples:
            flags += ["--max-base-samples", args.max_base_samples]
        if args.preset == "tiny":
            flags += ["--batch-size", 16]
        if not (new_ckpt / "finetune_summary.json").is_file():
            shutil.rmtree(new_ckpt, ignore_errors=True)
            stages.hivla("finetune", *flags)
        finetune_summary = json.loads((new_ckpt / "finetune_summary.json").read_text())
        checkpoint = new_ckpt
        evals = evaluate(stages, args, checkpoint, base, out)
    coached = None
    if not args.no_final_coached:
        coached = coached_run(stages, args, checkpoint, base, args.workdir / "final", seed=args.seed + 10_000 * (args.rounds + 1))
    rows.append(row_of(args.rounds, evals, coached, finetune_summary, time.perf_counter() - t0))

    wall = time.perf_counter() - started
    console.print(table(rows, f"coaching rounds: {args.preset}, {args.rounds} rounds x {args.coached} coached "
                              f"episodes/family, low level {args.low_level}, {wall / 60:.0f} min"))
    first, last = rows[0], rows[-1]
    summary = {
        "coaching_success_gain_points": None if first["coaching_success"] is None else
        100 * (last["coaching_success"] - first["coaching_success"]),
        "base_success_change_points": None if first["base_success"] is None or last["base_success"] is None else
        100 * (last["base_success"] - first["base_success"]),
        "interventions_ratio": None if not first["interventions_per_episode"] or last["interventions_per_episode"] is None
        else last["interventions_per_episode"] / first["interventions_per_episode"],
        "final_correction_share_of_base": last["correction_share_of_base"],
    }
    # the bar: +25 points on coaching, interventions halved, base within 3 points, data <= 10%
    summary["targets_met"] = {
        "coaching_success_+25_points": summary["coaching_success_gain_points"] is not None
        and summary["coaching_success_gain_points"] >= 25,
        "interventions_halved": summary["interventions_ratio"] is not None and summary["interventions_ratio"] <= 0.5,
        "base_drop_at_most_3_points": summary["base_success_change_points"] is not None
        and summary["base_success_change_points"] >= -3,
        "correction_data_at_most_10%": last["correction_share_of_base"] <= 0.10,
    }
    console.print(summary)
    write_results({
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()} | {"checkpoint": str(base)},
        "rows": rows, "summary": summary, "wall_time_s": wall}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
