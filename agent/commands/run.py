"""`hivla run`: many episodes over a task suite, with an optional scripted coach.

    hivla run --high-level oracle --low-level expert --suite base --episodes 20 --seed 0 \\
              --json runs/base.json [--workers 2] [--family stack_three] [--coach scripted|facts] [--out runs/s]

`--episodes` counts per family; episode i of every family uses seed `--seed + i`, so a run is
reproducible and two runs with the same flags see the same scenes. Prints a rich progress bar and a
per-family table; `--json` writes
{"episodes", "success_rate", "mean_subtasks_completed", "interventions_per_episode", "per_family"}
(and "config", whose "coach" names the coach that ran). `--coach facts` is the scripted coach that only
states facts: it speaks when the planner's scene line contradicts the simulator, and says nothing else.
Workers are spawned processes (one simulator and policy copy each, torch limited to one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.commands.devices import add_device_arguments, device_problem
from agent.envs.scene import ROOMS
from agent.errors import UserError
from agent.runtime.state import EpisodeResult


COACHES = ("none", "scripted", "facts")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--high-level", default=None, help="high-level policy spec: oracle | pi05:PATH (default: shipped)")
    parser.add_argument("--low-level", default=None, help="low-level policy spec: expert | pi05:PATH (default: shipped)")
    parser.add_argument("--suite", default="base", help="task suite (default: base)")
    parser.add_argument("--family", action="append", default=None,
                        help="run only this task family (repeatable); default: every family of the suite")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per family (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="episode i of each family uses seed + i")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes (default: 1)")
    parser.add_argument("--coach", choices=COACHES, default="none",
                        help="a scripted coach that watches and corrects; facts: one that only states what the "
                             "planner's scene line gets wrong (default: none)")
    parser.add_argument("--coach-error-rate", type=float, default=0.0,
                        help="the scripted coach's error rate (for --coach facts: the share of facts it misses)")
    parser.add_argument("--image-size", type=int, default=128, help="camera resolution (default: 128)")
    parser.add_argument("--room", choices=sorted(ROOMS), default="training",
                        help="how the room looks (agent/envs/scene.py ROOMS): training (default, where every "
                             "model learned) or dim, a table and light no model was trained in")
    parser.add_argument("--max-steps", type=int, default=None, help="per-episode step cap (default: the family budget)")
    parser.add_argument("--json", type=Path, default=None, help="write the metrics here")
    parser.add_argument("--out", type=Path, default=None, help="record sessions into this directory")
    add_device_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


@dataclass(frozen=True)
class RunConfig:
    high_level: str | None
    low_level: str | None
    suite: str
    image_size: int
    coach: str
    coach_error_rate: float
    max_steps: int | None
    out: str | None
    device: str
    dtype: str = "fp32"
    room: str = "training"


@dataclass(frozen=True)
class EpisodeRecord(EpisodeResult):
    """One episode of a run: what the loop's run_episode returned, under the job's family, and its seed."""

    seed: int


# --- worker side ----------------------------------------------------------------------------------
def _init_worker() -> None:
    """Spawned workers share 2 cores with the parent: one torch thread each."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # torch is only needed by model policies
        pass


def _make_coach(config: RunConfig, seed: int):
    if config.coach == "none":
        return None
    try:
        from agent.coaching.scripted import ScriptedCoach
    except ImportError as err:
        raise SystemExit(f"--coach {config.coach} needs agent.coaching.scripted, which is not available: "
                         f"{err}") from err
    options = dict(facts_only=True) if config.coach == "facts" else {}
    if config.suite == "coaching":  # families whose intended behaviour only the coach knows
        from agent.coaching.intended import make_coach

        return make_coach(seed=seed, error_rate=config.coach_error_rate, **options)
    return ScriptedCoach(seed=seed, error_rate=config.coach_error_rate, **options)


def run_shard(config: RunConfig, jobs: list[tuple[str, int]], worker: int, progress=None) -> list[EpisodeRecord]:
    """Run (family, seed) jobs in this process with one env, one policy pair and one loop."""
    _init_worker()
    from agent.envs import make_env
    from agent.envs.scene import SceneConfig
    from agent.runtime.factory import build_loop

    first_seed = jobs[0][1] if jobs else 0
    env = make_env(suite=config.suite, image_size=config.image_size, scene_config=SceneConfig(room=config.room))
    coach = _make_coach(config, first_seed + 7919 * worker)
    recorder = _make_recorder(config, env, worker) if config.out else None
    records = []
    try:
        loop = build_loop(env, config.high_level, config.low_level, seed=first_seed, device=config.device,
                          dtype=config.dtype, recorder=recorder, coach=coach, compute_model_plan=recorder is not None)
        for family, seed in jobs:
            for policy in (loop.high, loop.low):  # seeded per episode, so results do not depend on --workers
                if hasattr(policy, "seed"):
                    policy.seed = seed
            result = loop.run_episode(seed=seed, options={"family": family}, max_steps=config.max_steps)
            record = EpisodeRecord(**asdict(result) | {"family": family, "seed": seed})
            records.append(record)
            if progress is not None:
                progress(record)
        loop.close()
    finally:
        if recorder is not None:
            recorder.close()
        env.close()
    return records


def _make_recorder(config: RunConfig, env, worker: int):
    from agent.envs.tabletop import ACTION_NAMES, CAMERAS, STATE_NAMES
    from sessions.recorder import SessionRecorder, make_header

    header = make_header(
        high_level=config.high_level or "default", low_level=config.low_level or "default",
        cameras={c: (config.image_size, config.image_size) for c in CAMERAS},
        state_names=list(STATE_NAMES), action_names=list(ACTION_NAMES),
        env={"suite": config.suite, "image_size": config.image_size, "coach": config.coach, "worker": worker,
             "room": config.room},
        notes="hivla run",
    )
    path = Path(config.out) / f"run_{time.strftime('%Y%m%d-%H%M%S')}_w{worker}"
    return SessionRecorder(path, header)


def _run_shard_queued(config: RunConfig, jobs: list[tuple[str, int]], worker: int, queue) -> list[EpisodeRecord]:
    return run_shard(config, jobs, worker, progress=lambda record: queue.put(asdict(record)))


# --- metrics --------------------------------------------------------------------------------------
def summarise(records: list[EpisodeRecord], families: list[str]) -> dict:
    def stats(rs: list[EpisodeRecord]) -> dict:
        n = len(rs)
        if n == 0:
            return {"episodes": 0}
        return {
            "episodes": n,
            "success_rate": sum(r.success for r in rs) / n,
            "mean_subtasks_completed": sum(r.subtasks_completed for r in rs) / n,
            "mean_subtasks_total": sum(r.subtasks_total for r in rs) / n,
            "mean_steps": sum(r.steps for r in rs) / n,
            "interventions_per_episode": sum(r.interventions for r in rs) / n,
            "wall_time_s": sum(r.wall_time for r in rs),
            # where the failures stopped: the subtask in force at the end, most frequent first
            "failed_on": dict(Counter(r.last_subtask or "(no plan)" for r in rs if not r.success).most_common()),
        }

    overall = stats(records)
    overall["per_family"] = {f: stats([r for r in records if r.family == f]) for f in families}
    overall["episodes_detail"] = [asdict(r) for r in records]
    return overall


def _table(summary: dict, title: str):
    from rich.table import Table

    table = Table(title=title)
    table.add_column("family", no_wrap=True)
    for col in ("episodes", "success", "subtasks", "steps", "interv.", "wall s"):
        table.add_column(col, justify="right", no_wrap=True)

    def row(name, s, style=None):
        if not s.get("episodes"):
            table.add_row(name, "0", "-", "-", "-", "-", "-")
            return
        table.add_row(
            name, str(s["episodes"]), f"{100 * s['success_rate']:.0f}%",
            f"{s['mean_subtasks_completed']:.2f}/{s['mean_subtasks_total']:.1f}", f"{s['mean_steps']:.0f}",
            f"{s['interventions_per_episode']:.2f}", f"{s['wall_time_s']:.1f}", style=style,
        )

    for name, s in summary["per_family"].items():
        row(name, s)
    row("all", summary, style="bold")
    return table


# --- main -----------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agent.commands.output import table_console
    from agent.envs.tasks import get_family, get_suite

    console = Console(stderr=True)
    problem = check_args(args)
    if problem:
        raise UserError(problem)
    try:
        families = list(get_suite(args.suite))
        if args.family:
            for name in args.family:
                get_family(name)
            families = list(args.family)
    except ValueError as err:
        raise SystemExit(str(err)) from err
    if args.coach != "none":
        try:
            import agent.coaching.scripted  # noqa: F401
        except ImportError as err:
            raise SystemExit(f"--coach {args.coach} is not available yet: {err}") from err

    from agent.specs import describe_spec, make_high_level, make_low_level, resolve_specs

    high_level, low_level = resolve_specs(args.high_level, args.low_level)  # the run JSON names what acted
    # Build the policies once here, so a bad spec or checkpoint is one clear line before any episode
    # runs (a single worker reuses these models: the loaders cache them).
    make_high_level(high_level, seed=args.seed, device=args.device, dtype=args.dtype)
    make_low_level(low_level, seed=args.seed, device=args.device, dtype=args.dtype)
    config = RunConfig(high_level, low_level, args.suite, args.image_size, args.coach,
                       args.coach_error_rate, args.max_steps, str(args.out) if args.out else None, args.device,
                       args.dtype, args.room)
    jobs = [(family, args.seed + i) for i in range(args.episodes) for family in families]
    workers = min(args.workers, len(jobs))
    shards = [jobs[w::workers] for w in range(workers)]
    started = time.perf_counter()
    records: list[EpisodeRecord] = []
    columns = (TextColumn("[bold]hivla run"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, disable=args.quiet) as progress:
        bar = progress.add_task("", total=len(jobs))

        def advance(record: EpisodeRecord) -> None:
            records.append(record)
            ok = sum(r.success for r in records)
            progress.update(bar, advance=1, description=f"{ok}/{len(records)} ok  last: {record.family}")

        if workers == 1:
            run_shard(config, shards[0], 0, progress=advance)
        else:
            _run_parallel(config, shards, advance)
    wall = time.perf_counter() - started

    summary = summarise(sorted(records, key=lambda r: (families.index(r.family), r.seed)), families)
    summary["wall_time_s"] = wall
    summary["config"] = {**asdict(config), "episodes_per_family": args.episodes, "seed": args.seed,
                         "workers": workers, "families": families}
    table_console().print(_table(summary, f"hivla run: {describe_spec(high_level)} + {describe_spec(low_level)}"
                                    f" on {args.suite}{'' if args.room == 'training' else f' in the {args.room} room'}, "
                                    f"coach: {args.coach}, {len(records)} episodes in {wall:.0f}s"))
    if args.json:
        try:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(summary, indent=2))
        except OSError as err:  # checked before the run, but the disk can still refuse: keep the metrics
            print(json.dumps(summary, indent=2))
            raise UserError(f"cannot write --json {args.json} ({err.strerror or err}); the metrics are printed "
                            "above as JSON") from err
        console.print(f"wrote {args.json}")
    return 0


def check_args(args: argparse.Namespace) -> str | None:
    """The first problem with the arguments that can be seen before any episode runs, or None."""
    if args.episodes < 1:
        return "--episodes must be at least 1"
    if args.workers < 1:
        return "--workers must be at least 1"
    if args.seed < 0:
        return "--seed must be non-negative"
    if args.max_steps is not None and args.max_steps < 1:
        return f"--max-steps must be at least 1, got {args.max_steps} (omit it for the family's own budget)"
    if args.image_size < 16:
        return f"--image-size must be at least 16, got {args.image_size}"
    if not 0.0 <= args.coach_error_rate <= 1.0:
        return f"--coach-error-rate must be between 0 and 1, got {args.coach_error_rate}"
    if args.coach_error_rate and args.coach == "none":
        return "--coach-error-rate is for --coach scripted or --coach facts"
    if args.json is not None:
        if args.json.is_dir():
            return f"--json {args.json} is a directory; give a file path, e.g. --json {args.json / 'run.json'}"
        parent = next((p for p in args.json.parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            return f"--json {args.json}: {parent} is a file, not a directory"
        if parent is not None and not os.access(parent, os.W_OK):
            return f"--json {args.json}: {parent} is not writable"
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        return f"--out {args.out} is a file; give a directory to record sessions into"
    return device_problem(args.device)


def _run_parallel(config: RunConfig, shards, advance) -> None:
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor

    ctx = mp.get_context("spawn")  # fresh interpreters: no forked EGL contexts or torch thread pools
    with ctx.Manager() as manager:
        q = manager.Queue()
        with ProcessPoolExecutor(len(shards), mp_context=ctx, initializer=_init_worker) as pool:
            futures = [pool.submit(_run_shard_queued, config, shard, w, q) for w, shard in enumerate(shards)]
            pending = set(futures)
            while pending:
                try:
                    advance(EpisodeRecord(**q.get(timeout=0.2)))
                except queue_mod.Empty:
                    pass
                for f in [f for f in pending if f.done()]:
                    pending.discard(f)
                    f.result()  # re-raise a worker's error here
            while True:  # drain what arrived after the last future finished
                try:
                    advance(EpisodeRecord(**q.get_nowait()))
                except queue_mod.Empty:
                    break


if __name__ == "__main__":
    from agent.cli import main as cli_main

    sys.exit(cli_main(["run", *sys.argv[1:]]))
