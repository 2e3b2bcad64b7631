"""Planner training frames at scale: physics unrendered, both cameras rendered only where the planner
learns (`hivla datagen --mode planner`).

Each episode runs the real control loop (oracle high level, scripted expert with noise and recovery)
on an env that does not render. The oracle is wrapped by `FrameTap`: every time the loop asks for a
plan (episode start, a subtask done, the re-plan timer mid-subtask) the tap renders the two cameras
and keeps the frame with what the planner is given there (task, state, the coaching context the
loop built), the oracle's plan (the label), and the simulator's scene facts (labels of the scene
questions). Nothing else is rendered, which is what makes ten thousand scenes affordable.

On disk, a directory of shards, each one worker's block of episodes:

    planner_frames.json              manifest: version, image size, cameras, state size
    shard_0000123.jsonl              one row per frame: episode, family, the planner's context
                                     (policies.planning.PlannerContext), thought, subtask, scene facts
    shard_0000123.safetensors        images uint8 [N, n_cam, S, S, 3], states float32 [N, D]

Every row also carries what the planner's context rules out and what the task allows now
(policies/obey.py: `forbids`, the negations and rules in force as the planner reads them; `allowed`, the
reference's ready steps, privileged), so a plan decoded from the frame can be checked against them
(benchmarks/offline_eval.py); readers that do not need them ignore them.

Coached frames (`coach="scripted"`): sessions of `session_episodes` episodes, each run by a fresh loop
(fresh session memory) with the scripted coach standing in for a person whose preferences the oracle
was never told (agent/coaching/preferences.py: a block to leave alone, held for the session; a block
first, for an episode). The coach corrects the oracle's plans (constraints, negations, overrides),
the loop remembers rules said for good or said again, and the oracle reads what was said and obeys
it: so rows hold the corrections and remembered rules in force exactly as the planner reads them
(PlannerContext), labelled with a plan that obeys them. Same shard format; the manifest names the coach.

The safetensors file is written last (through a temporary name), so a shard exists only whole; a
killed run resumes by skipping the shards already there.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.runtime.planning import REPLAN_PERIOD_S
from policies.obey import Forbid, forbids_in_force
from policies.pi05.processor import resize_images
from policies.planning import CONTEXT_CORRECTIONS, PLANNING_KINDS, build_planner_context
from policies.types import Observation, Plan, PlanContext

MANIFEST = "planner_frames.json"
FORMAT_VERSION = 1
CAMERAS = ("front", "wrist")
COACHES = ("scripted",)  # who coaches the oracle's episodes (None: nobody)


@dataclass
class FrameTap:
    """A HighLevelPolicy that asks `planner` and keeps the frame each plan was made on."""

    planner: object
    env: object
    image_size: int
    episode: int = 0
    rows: list[dict] = field(default_factory=list)
    images: list[np.ndarray] = field(default_factory=list)
    states: list[np.ndarray] = field(default_factory=list)

    def reset(self) -> None:
        self.planner.reset()

    def plan(self, obs: Observation, context: PlanContext) -> Plan:
        from agent.coaching.preferences import allowed_steps
        from agent.envs.scene_facts import scene_facts

        plan = self.planner.plan(obs, context)
        cams = self.env.render_cameras()
        self.images.append(resize_images(np.stack([cams[c] for c in CAMERAS]), self.image_size))
        self.states.append(np.asarray(obs.state, np.float32))
        self.rows.append({
            "episode": self.episode,
            "family": getattr(obs.privileged.task, "family", None),
            "context": build_planner_context(context).to_dict(),
            "thought": plan.thought,
            "subtask": plan.subtask,
            "facts": scene_facts(obs.privileged),
            "remaining": remaining_subtasks(obs.privileged),
            "forbids": [f.to_dict() for f in read_forbids(context)],
            "allowed": allowed_steps({}, obs.privileged),
        })
        return plan


def read_forbids(context: PlanContext) -> list[Forbid]:
    """What the planner's context rules out (policies.obey), from the corrections it reads: the last
    CONTEXT_CORRECTIONS planning ones (as build_planner_context keeps them) and the session's rules."""
    said = [c for c in context.corrections if c.kind in PLANNING_KINDS][-CONTEXT_CORRECTIONS:]
    return forbids_in_force(said, context.memory)


def remaining_subtasks(world) -> list[str]:
    """The task's reference subtasks not yet satisfied, in the task's group order (a label of the
    grounded thought's "Left:" part; privileged, never a model input)."""
    task = world.task
    flags = task.group_flags(world)
    return [sub.text for group, done in zip(task.groups, flags) for sub, ok in zip(group.subtasks, done) if not ok]


@dataclass
class RenderedLowLevel:
    """A learned low level on an env that does not render: the cameras are rendered for it at each
    chunk it is asked for (what it needs, no more), so episodes can be executed by the learned policy
    and labelled by the oracle at every plan (DAgger for the planner: the states the learned system
    reaches, not only the expert's)."""

    low: object
    env: object

    def reset(self) -> None:
        self.low.reset()

    def act(self, obs: Observation, subtask: str) -> np.ndarray:
        seen = Observation(images=self.env.render_cameras(), state=obs.state, task=obs.task, time=obs.time,
                           privileged=obs.privileged)
        return self.low.act(seen, subtask)


def write_manifest(out: Path, image_size: int, state_dim: int, render_size: int = 128, coach: str | None = None,
                   session_episodes: int | None = None) -> None:
    path = out / MANIFEST
    meta = {"format": "hivla planner frames", "version": FORMAT_VERSION, "image_size": image_size,
            "render_size": render_size, "cameras": list(CAMERAS), "state_dim": state_dim}
    if coach is not None:  # only then: manifests of uncoached recordings stay as they were
        meta["coach"] = {"kind": coach, "session_episodes": session_episodes}
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != meta:
            raise ValueError(f"{out} holds planner frames recorded as {old}, not {meta}; use another --out")
        return
    path.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def shard_name(first_seed: int) -> str:
    return f"shard_{first_seed:07d}"


def record_shard(out: str, seeds: list[int], suite: str, noise: float, image_size: int, max_steps: int,
                 families: list[str] | None, render_size: int = 128, low_level: str | None = "expert",
                 coach: str | None = None, session_episodes: int = 5, replan_period_s: float = REPLAN_PERIOD_S) -> dict:
    """Run `seeds` as episodes and write them as one shard; returns counts. Frames are rendered at
    `render_size` and stored area-averaged to `image_size`: exactly what the planner's processor makes
    of the cameras `hivla run` and `hivla coach` render (128 px), where a native 64-px render differs
    at every edge (mean 4-5 levels, 1% of pixels by over 80: measured). `coach="scripted"`: sessions
    of `session_episodes` consecutive seeds, coached (module doc). `replan_period_s`: the loop's re-plan
    timer; shorter than the loop's own keeps more frames mid-subtask (the plan in force stands)."""
    if coach not in (None, *COACHES):
        raise ValueError(f"coach must be one of {COACHES} or None, got {coach!r}")
    if session_episodes < 1:
        raise ValueError(f"session_episodes must be at least 1, got {session_episodes}")
    os.environ.setdefault("MUJOCO_GL", "egl")
    from safetensors.numpy import save_file

    from agent.envs import SUITES, make_env
    from agent.envs.expert import ScriptedExpert
    from agent.envs.oracle import OraclePlanner
    from agent.runtime.factory import build_loop

    started = time.perf_counter()
    env = make_env(suite=suite, image_size=render_size, seed=seeds[0], render_images=False)
    tap = FrameTap(OraclePlanner(seed=seeds[0]), env, image_size)
    if low_level == "expert":
        low = ScriptedExpert(seed=seeds[0], noise_std=noise)
    else:  # a learned executor, None: the shipped default (it hands the loop the part of each chunk it executes)
        import torch

        from agent.specs import make_low_level

        torch.set_num_threads(1)
        low = RenderedLowLevel(make_low_level(low_level, seed=seeds[0]), env)
    fams = list(families or SUITES[suite])
    successes = steps = interventions = 0
    said: dict[str, int] = {}
    size = session_episodes if coach else len(seeds)  # uncoached: one loop for the shard, as always
    for session in [seeds[i:i + size] for i in range(0, len(seeds), size)]:
        scripted = None
        if coach == "scripted":  # a fresh person, coach and session memory for each session
            from agent.coaching.preferences import SessionPreferences
            from agent.coaching.scripted import ScriptedCoach

            # no facts: the oracle's scene line is the simulator's, so a fact could only be the coach
            # reading a block that moved since the plan (a landing), not a belief to correct
            scripted = ScriptedCoach(seed=session[0], intended=SessionPreferences(seed=session[0]), state_facts=False)
        loop = build_loop(env, tap, low, compute_model_plan=False, coach=scripted,
                          replan_period_s=replan_period_s)
        for seed in session:
            tap.episode = seed
            result = loop.run_episode(seed=seed, options={"family": fams[seed % len(fams)]}, max_steps=max_steps)
            successes += int(result.success)
            steps += result.steps
            interventions += result.interventions
        loop.close()
        if scripted is not None:
            for key, n in scripted.stats.items():
                if key.startswith("kind:"):
                    said[key[5:]] = said.get(key[5:], 0) + n
    name = Path(out) / shard_name(seeds[0])
    with open(f"{name}.jsonl", "w", encoding="utf-8") as f:
        for row in tap.rows:
            f.write(json.dumps(row) + "\n")
    tmp = f"{name}.tmp.safetensors"
    save_file({"images": np.stack(tap.images), "states": np.stack(tap.states)}, tmp)
    os.replace(tmp, f"{name}.safetensors")
    return {"episodes": len(seeds), "successes": successes, "steps": steps, "frames": len(tap.rows),
            "interventions": interventions, "said": said, "seconds": time.perf_counter() - started}


def shards(path: str | Path) -> list[Path]:
    """The complete shards under a planner-frames directory (sorted by first seed)."""
    return sorted(p.with_suffix("") for p in Path(path).glob("shard_*.safetensors") if ".tmp" not in p.name)


def is_planner_frames(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_shard(stem: Path) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """(rows, images uint8 [N, n_cam, S, S, 3], states [N, D]) of one shard; a damaged one is one line."""
    from safetensors.numpy import load_file

    try:
        arrays = load_file(f"{stem}.safetensors")
        rows = [json.loads(line) for line in Path(f"{stem}.jsonl").read_text(encoding="utf-8").splitlines() if line]
    except (OSError, ValueError) as err:
        raise ValueError(f"{stem}: unreadable planner-frames shard ({err}); delete it and run datagen again") from err
    if len(rows) != len(arrays["images"]):
        raise ValueError(f"{stem}: {len(rows)} rows but {len(arrays['images'])} frames; delete it and run datagen again")
    return rows, arrays["images"], arrays["states"]


def read_rows(paths) -> list[dict]:
    """The rows (no images) of every shard under `paths`, in the order collect_planner_frames reads
    their frames: row k is the frame `RawSamples.frame_of` calls k."""
    rows = []
    for path in paths:
        for stem in shards(path):
            lines = Path(f"{stem}.jsonl").read_text(encoding="utf-8").splitlines()
            rows += [json.loads(line) for line in lines if line]
    return rows
