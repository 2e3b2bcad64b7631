"""`hivla datagen`: record oracle-planned, expert-executed episodes as training data.

    hivla datagen --suite base --episodes 200 --out runs/datagen --noise 0.1 --workers 2 --image-size 64
    hivla datagen --mode planner --episodes 10000 --out runs/planner_frames --noise 0.1 --image-size 64
    hivla datagen --mode planner --coach scripted --episodes 2000 --out runs/planner_frames_coached \
                  --noise 0.1 --image-size 64
    hivla datagen --mode dagger --beta 0.5 --low-level default --episodes 600 --out runs/vla_dagger/r1 \
                  --image-size 64 --workers 2

`--mode sessions` (the default) records every step as a session (the low level's data). `--mode
planner` steps the physics unrendered and renders both cameras only at the frames the planner learns
from (every plan the loop asks for), into resumable shards (agent.training.planner_frames); with
`--coach scripted` the scripted coach corrects the oracle for a person's unspoken preferences, in
sessions of `--session-episodes` episodes, so the frames' contexts hold corrections and remembered
rules and their labels obey them (same shard format). `--mode
dagger` lets the learned low level act (the expert's chunk instead with probability --beta) and
records every step with the scripted expert's chunk from that state as its label, in resumable
session shards that `hivla train --model vla --data` reads (agent.training.dagger).

Each worker runs the real control loop (OraclePlanner + ScriptedExpert) and writes its own session
directory under --out through the session recorder, so plans (PlanEmitted) and the plan in force at
every step are recorded exactly as in any other run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("sessions", "planner", "dagger"), default="sessions",
                        help="sessions: every step recorded (low-level data); planner: only the planner's frames, "
                             "physics unrendered (many more scenes a minute); dagger: the learned low level acts "
                             "and the scripted expert labels every state it visits (a DAgger round)")
    parser.add_argument("--shard-episodes", type=int, default=None,
                        help="--mode planner / dagger: episodes a shard, the unit a killed run resumes from "
                             "(planner 50, dagger 10)")
    parser.add_argument("--low-level", default=None, metavar="SPEC",
                        help="--mode planner: who executes the subtasks: expert (the default, with --noise), or a "
                             "learned spec (vla:PATH; empty 'vla:' is not a path: use the shipped default with "
                             "'default'), so the oracle labels the states the learned system reaches; --mode dagger: "
                             "the VLA that acts, 'default' (the shipped one, the default) or vla:PATH")
    parser.add_argument("--coach", choices=("none", "scripted"), default="none",
                        help="--mode planner: 'scripted': the scripted coach corrects the oracle (overrides, "
                             "negations, rules, session memory) for preferences it was never told, so the frames' "
                             "contexts hold what was said and their labels obey it (agent/coaching/preferences.py)")
    parser.add_argument("--session-episodes", type=int, default=None,
                        help="--coach scripted: episodes a coached session (one person, one session memory); "
                             "default 5")
    parser.add_argument("--replan-period", type=float, default=None, metavar="SECONDS",
                        help="--mode planner: the loop's re-plan timer (default: the loop's 2 s, as `hivla run`); shorter keeps "
                             "more frames where a subtask is still under way and the plan in force should stand")
    parser.add_argument("--beta", type=float, default=None,
                        help="--mode dagger (required): the probability that a chunk is the expert's instead of the "
                             "learned policy's; decays over rounds (e.g. 0.5, 0.25, 0)")
    parser.add_argument("--render-size", type=int, default=128,
                        help="--mode planner / dagger: cameras are rendered at this size (as `hivla run` and `coach` "
                             "render them) and stored at --image-size")
    parser.add_argument("--suite", default="base")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--out", required=True, help="directory for the recorded sessions")
    parser.add_argument("--noise", type=float, default=0.0, help="std of Gaussian noise the scripted expert adds to its actions")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=128, help="camera resolution recorded (the model resizes)")
    parser.add_argument("--max-steps", type=int, default=400, help="per-episode step limit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", nargs="*", default=None, help="restrict to these task families")
    parser.add_argument("--put-down-share", type=float, default=0.0,
                        help="share of picks followed by 'put it down on the table' before the task goes on "
                             "(low-level data: no task asks for that primitive)")


def record_episodes(out: str, worker: int, episode_seeds: list[int], suite: str, noise: float, image_size: int,
                    max_steps: int, families: list[str] | None, put_down_share: float = 0.0) -> dict:
    """Record the given episodes into one session directory; returns counts."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from agent.envs import SUITES, make_env
    from agent.envs.detours import PutDownDetours
    from agent.envs.expert import ScriptedExpert
    from agent.envs.oracle import OraclePlanner
    from agent.runtime.factory import build_loop
    from sessions.recorder import SessionRecorder, make_header

    base_seed = episode_seeds[0] if episode_seeds else 0
    env = make_env(suite=suite, image_size=image_size, seed=base_seed)
    high = OraclePlanner(seed=base_seed)
    if put_down_share > 0:
        high = PutDownDetours(high, put_down_share, seed=base_seed)
    low = ScriptedExpert(seed=base_seed, noise_std=noise)
    obs, _ = env.reset(seed=base_seed)
    header = make_header(
        high_level="oracle", low_level=f"expert(noise={noise})",
        cameras={k: tuple(v.shape[:2]) for k, v in obs["images"].items()},
        state_names=[f"s{i}" for i in range(len(obs["state"]))],
        action_names=["dx", "dy", "dz", "dyaw", "grip"],
        env={"suite": suite, "image_size": image_size, "noise": noise, "worker": worker,
             "put_down_share": put_down_share},
        notes="hivla datagen",
    )
    fams = list(families or SUITES[suite])  # the suite's families only (other suites register theirs too)
    successes = steps = 0
    session_dir = Path(out) / f"datagen_w{worker}_{int(time.time())}"
    with SessionRecorder(session_dir, header) as rec:
        loop = build_loop(env, high, low, recorder=rec, compute_model_plan=False)
        for i, seed in enumerate(episode_seeds):
            result = loop.run_episode(seed=seed, options={"family": fams[seed % len(fams)]}, max_steps=max_steps)
            successes += int(result.success)
            steps += result.steps
            print(f"[worker {worker}] episode {i + 1}/{len(episode_seeds)} {result.family} "
                  f"success={result.success} steps={result.steps}", flush=True)
        loop.close()
    return {"episodes": len(episode_seeds), "successes": successes, "steps": steps, "session": str(session_dir)}


def main(args: argparse.Namespace) -> int:
    from concurrent.futures import ProcessPoolExecutor

    if args.episodes < 1 or args.workers < 1:
        raise SystemExit("--episodes and --workers must be at least 1")
    problem = mode_problem(args)
    if problem:
        raise SystemExit(problem)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.mode == "planner":
        return record_planner_frames(args)
    if args.mode == "dagger":
        return record_dagger(args)
    seeds = [args.seed + i for i in range(args.episodes)]
    shards = [seeds[w:: args.workers] for w in range(args.workers)]
    started = time.perf_counter()
    common = (args.suite, args.noise, args.image_size, args.max_steps, args.families, args.put_down_share)
    if args.workers == 1:
        results = [record_episodes(args.out, 0, shards[0], *common)]
    else:
        with ProcessPoolExecutor(args.workers) as pool:
            futures = [pool.submit(record_episodes, args.out, w, shard, *common) for w, shard in enumerate(shards) if shard]
            results = [f.result() for f in futures]
    total = sum(r["episodes"] for r in results)
    ok = sum(r["successes"] for r in results)
    steps = sum(r["steps"] for r in results)
    wall = time.perf_counter() - started
    print(f"recorded {total} episodes ({ok} successful, {steps} steps) in {wall:.0f}s to {args.out}")
    return 0


def mode_problem(args: argparse.Namespace) -> str | None:
    """An option the chosen --mode does not use or needs and lacks, as one line (nothing is ignored silently)."""
    if args.mode != "dagger" and args.beta is not None:
        return "--beta is for --mode dagger"
    if args.mode == "sessions" and (args.low_level not in (None, "expert") or args.shard_episodes is not None):
        return "--mode sessions records the expert in one session a worker: --low-level and --shard-episodes are " \
               "for --mode planner and --mode dagger"
    if args.shard_episodes is not None and args.shard_episodes < 1:
        return "--shard-episodes must be at least 1"
    if args.coach != "none" and args.mode != "planner":
        return "--coach is for --mode planner (coached planner frames)"
    if args.replan_period is not None and args.mode != "planner":
        return "--replan-period is for --mode planner"
    if args.replan_period is not None and args.replan_period <= 0:
        return f"--replan-period must be positive, got {args.replan_period}"
    if args.session_episodes is not None and args.coach == "none":
        return "--session-episodes is for --coach scripted"
    if args.session_episodes is not None and args.session_episodes < 1:
        return "--session-episodes must be at least 1"
    if args.mode == "dagger":
        if args.beta is None or not 0.0 <= args.beta <= 1.0:
            return ("--mode dagger needs --beta in [0, 1]: the share of chunks the expert executes this round "
                    "(e.g. 0.5, then 0.25, then 0)")
        if args.low_level not in (None, "default") and not args.low_level.startswith("vla:"):
            return f"--mode dagger lets the learned VLA act: --low-level default or vla:PATH, not {args.low_level!r}"
        if args.noise:
            return ("--noise is not used by --mode dagger: an executed expert chunk is the noise-free label "
                    "itself, and the learned policy's own mistakes are the perturbation")
    return None


def _blocks(args: argparse.Namespace, default_size: int) -> list[list[int]]:
    """The episodes' seeds in shards of --shard-episodes (a shard is named by its first seed)."""
    size = args.shard_episodes or default_size
    end = args.seed + args.episodes
    return [list(range(start, min(start + size, end))) for start in range(args.seed, end, size)]


def record_blocks(label: str, record_shard, out, todo: list[list[int]], common: tuple, workers: int, add) -> None:
    """Record each block of episode seeds as one shard with `record_shard(out, block, *common)`, under a
    progress bar, handing each shard's counts to `add(counts, advance)`. One worker records in this
    process: no pool to fork from a process already using torch, and a test sees its errors directly."""
    from concurrent.futures import ProcessPoolExecutor

    from agent.commands.output import progress_bar

    with progress_bar(label, len(todo)) as advance:
        if workers == 1:
            for block in todo:
                add(record_shard(str(out), block, *common), advance)
        else:
            with ProcessPoolExecutor(workers) as pool:
                for future in [pool.submit(record_shard, str(out), block, *common) for block in todo]:
                    add(future.result(), advance)


def record_dagger(args: argparse.Namespace) -> int:
    """--mode dagger: shards of --shard-episodes episodes (agent.training.dagger), written by --workers
    processes; the shards already in --out are skipped, so a killed round resumes where it stopped."""
    from agent.training import dagger

    out = Path(args.out)
    low_level = None if args.low_level in (None, "default") else args.low_level
    blocks = _blocks(args, 10)
    dagger.write_manifest(out, {
        "suite": args.suite, "policy": args.low_level or "default", "beta": args.beta,
        "image_size": args.image_size, "render_size": args.render_size, "max_steps": args.max_steps,
        "families": args.families or None, "put_down_share": args.put_down_share, "shard_episodes": args.shard_episodes or 10})
    done = set(dagger.done_shards(out))
    todo = [b for b in blocks if dagger.shard_name(b[0]) not in done]
    print(f"dagger (beta {args.beta}): {len(blocks) - len(todo)} of {len(blocks)} shards already in {out}; "
          f"recording {sum(map(len, todo))} episodes with {args.workers} worker(s)", flush=True)
    common = (args.suite, low_level, args.beta, args.image_size, args.render_size, args.max_steps, args.families,
              args.put_down_share)
    started = time.perf_counter()
    totals = {"episodes": 0, "successes": 0, "steps": 0, "labelled_steps": 0, "expert_chunks": 0, "policy_chunks": 0}

    def add(r: dict, advance) -> None:
        for k in totals:
            totals[k] += r[k]
        advance(f"{totals['episodes']} episodes, {totals['labelled_steps']} labelled steps")

    record_blocks("dagger", dagger.record_shard, out, todo, common, args.workers, add)
    wall = time.perf_counter() - started
    chunks = totals["expert_chunks"] + totals["policy_chunks"]
    whole = dagger.round_summary(out)
    print(f"recorded {totals['episodes']} episodes ({totals['successes']} successful), {totals['steps']} steps "
          f"({totals['labelled_steps']} labelled), "
          f"{totals['expert_chunks']} of {chunks} chunks the expert's, in {wall:.0f}s to {out}; the round now holds "
          f"{int(whole.get('episodes', 0))} episodes, {int(whole.get('labelled_steps', 0))} labelled steps", flush=True)
    return 0


def record_planner_frames(args: argparse.Namespace) -> int:
    """--mode planner: shards of `--shard-episodes` episodes, written by `--workers` processes; shards
    already on disk are skipped, so a killed run resumes where it stopped."""
    from agent.envs.tabletop import STATE_NAMES
    from agent.runtime.planning import REPLAN_PERIOD_S
    from agent.training import planner_frames as pf

    out = Path(args.out)
    coach = None if args.coach == "none" else args.coach
    session_episodes = (args.session_episodes or 5) if coach else None
    try:
        pf.write_manifest(out, args.image_size, len(STATE_NAMES), args.render_size, coach, session_episodes)
    except ValueError as err:  # frames of other settings already there: one line, not a traceback
        raise SystemExit(str(err)) from err
    done = {p.name for p in pf.shards(out)}
    blocks = _blocks(args, 50)
    todo = [b for b in blocks if pf.shard_name(b[0]) not in done]
    print(f"planner frames: {len(blocks) - len(todo)} of {len(blocks)} shards already in {out}; "
          f"recording {sum(map(len, todo))} episodes with {args.workers} worker(s)", flush=True)
    low_level = "expert" if args.low_level is None else None if args.low_level == "default" else args.low_level
    common = (args.suite, args.noise, args.image_size, args.max_steps, args.families, args.render_size, low_level,
              coach, session_episodes or 5, args.replan_period or REPLAN_PERIOD_S)
    started = time.perf_counter()
    totals = {"episodes": 0, "successes": 0, "frames": 0, "interventions": 0}
    said: dict[str, int] = {}

    def add(r: dict, advance) -> None:
        for k in totals:
            totals[k] += r[k]
        for kind, n in r["said"].items():
            said[kind] = said.get(kind, 0) + n
        advance(f"{totals['episodes']} episodes, {totals['frames']} frames")

    record_blocks("planner frames", pf.record_shard, out, todo, common, args.workers, add)
    wall = time.perf_counter() - started
    rate = totals["episodes"] / max(wall, 1e-9) * 60
    print(f"recorded {totals['episodes']} episodes ({totals['successes']} successful), {totals['frames']} frames "
          f"in {wall:.0f}s ({rate:.0f} episodes/min) to {out}", flush=True)
    if coach:
        print(f"the coach intervened {totals['interventions']} times: "
              + (", ".join(f"{n} {kind}" for kind, n in sorted(said.items())) or "nothing said"), flush=True)
    return 0
