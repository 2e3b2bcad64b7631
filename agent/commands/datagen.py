"""`hivla datagen`: record oracle-planned, expert-executed episodes as training data.

    hivla datagen --suite base --episodes 200 --out runs/datagen --noise 0.1 --workers 2 --image-size 64
    hivla datagen --mode planner --episodes 10000 --out runs/planner_frames --noise 0.1 --image-size 64

`--mode sessions` (the default) records every step as a session (the low level's data). `--mode
planner` steps the physics unrendered and renders both cameras only at the frames the planner learns
from (every plan the loop asks for), into resumable shards (agent.training.planner_frames).

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
    parser.add_argument("--mode", choices=("sessions", "planner"), default="sessions",
                        help="sessions: every step recorded (low-level data); planner: only the planner's frames, "
                             "physics unrendered (many more scenes a minute)")
    parser.add_argument("--shard-episodes", type=int, default=50, help="--mode planner: episodes a shard")
    parser.add_argument("--low-level", default="expert", metavar="SPEC",
                        help="--mode planner: who executes the subtasks: expert (with --noise), or a learned spec "
                             "(vla:PATH; empty 'vla:' is not a path: use the shipped default with 'default'), so the "
                             "oracle labels the states the learned system reaches")
    parser.add_argument("--render-size", type=int, default=128,
                        help="--mode planner: cameras are rendered at this size (as `hivla run` and `coach` render "
                             "them) and stored at --image-size")
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
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.mode == "planner":
        return record_planner_frames(args)
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


def record_planner_frames(args: argparse.Namespace) -> int:
    """--mode planner: shards of `--shard-episodes` episodes, written by `--workers` processes; shards
    already on disk are skipped, so a killed run resumes where it stopped."""
    from concurrent.futures import ProcessPoolExecutor

    from agent.commands.output import progress_bar
    from agent.envs.tabletop import STATE_NAMES
    from agent.training import planner_frames as pf

    out = Path(args.out)
    pf.write_manifest(out, args.image_size, len(STATE_NAMES), args.render_size)
    done = {p.name for p in pf.shards(out)}
    blocks = [list(range(start, min(start + args.shard_episodes, args.seed + args.episodes)))
              for start in range(args.seed, args.seed + args.episodes, args.shard_episodes)]
    todo = [b for b in blocks if pf.shard_name(b[0]) not in done]
    print(f"planner frames: {len(blocks) - len(todo)} of {len(blocks)} shards already in {out}; "
          f"recording {sum(map(len, todo))} episodes with {args.workers} worker(s)", flush=True)
    low_level = None if args.low_level == "default" else args.low_level
    common = (args.suite, args.noise, args.image_size, args.max_steps, args.families, args.render_size, low_level)
    started = time.perf_counter()
    totals = {"episodes": 0, "successes": 0, "frames": 0}
    with progress_bar("planner frames", len(todo)) as advance, ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(pf.record_shard, str(out), block, *common) for block in todo]
        for future in futures:
            r = future.result()
            for k in totals:
                totals[k] += r[k]
            advance(f"{totals['episodes']} episodes, {totals['frames']} frames")
    wall = time.perf_counter() - started
    rate = totals["episodes"] / max(wall, 1e-9) * 60
    print(f"recorded {totals['episodes']} episodes ({totals['successes']} successful), {totals['frames']} frames "
          f"in {wall:.0f}s ({rate:.0f} episodes/min) to {out}", flush=True)
    return 0
