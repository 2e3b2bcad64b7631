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

from policies.pi05.processor import resize_images
from policies.planning import build_planner_context
from policies.types import Observation, Plan, PlanContext

MANIFEST = "planner_frames.json"
FORMAT_VERSION = 1
CAMERAS = ("front", "wrist")


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
        })
        return plan


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


def write_manifest(out: Path, image_size: int, state_dim: int, render_size: int = 128) -> None:
    path = out / MANIFEST
    meta = {"format": "hivla planner frames", "version": FORMAT_VERSION, "image_size": image_size,
            "render_size": render_size, "cameras": list(CAMERAS), "state_dim": state_dim}
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != meta:
            raise ValueError(f"{out} holds planner frames recorded as {old}, not {meta}; use another --out")
        return
    path.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")


def shard_name(first_seed: int) -> str:
    return f"shard_{first_seed:07d}"


def record_shard(out: str, seeds: list[int], suite: str, noise: float, image_size: int, max_steps: int,
                 families: list[str] | None, render_size: int = 128, low_level: str | None = "expert") -> dict:
    """Run `seeds` as episodes and write them as one shard; returns counts. Frames are rendered at
    `render_size` and stored area-averaged to `image_size`: exactly what the planner's processor makes
    of the cameras `hivla run` and `hivla coach` render (128 px), where a native 64-px render differs
    at every edge (mean 4-5 levels, 1% of pixels by over 80: measured)."""
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
    loop = build_loop(env, tap, low, compute_model_plan=False)
    fams = list(families or SUITES[suite])
    successes = steps = 0
    for seed in seeds:
        tap.episode = seed
        result = loop.run_episode(seed=seed, options={"family": fams[seed % len(fams)]}, max_steps=max_steps)
        successes += int(result.success)
        steps += result.steps
    loop.close()
    name = Path(out) / shard_name(seeds[0])
    with open(f"{name}.jsonl", "w", encoding="utf-8") as f:
        for row in tap.rows:
            f.write(json.dumps(row) + "\n")
    tmp = f"{name}.tmp.safetensors"
    save_file({"images": np.stack(tap.images), "states": np.stack(tap.states)}, tmp)
    os.replace(tmp, f"{name}.safetensors")
    return {"episodes": len(seeds), "successes": successes, "steps": steps, "frames": len(tap.rows),
            "seconds": time.perf_counter() - started}


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
