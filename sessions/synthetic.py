"""Synthetic sessions written through the real recorder, for tests and benchmarks.

They look like what the control loop records -- plans on start / timer / subtask completion,
corrections of every kind with the plans they replaced, a withdrawn correction, episode ends --
without needing the simulator. Images are a deterministic function of (seed, episode, frame,
camera), so a test can recompute what each frame must contain.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from policies.types import CorrectionKind
from sessions.recorder import SessionRecorder, make_header
from sessions.schema import CorrectionRecord, CorrectionWithdrawn, EpisodeEnd, EpisodeStart, PlanData, PlanEmitted, Step

STATE_NAMES = ["x", "y", "z", "yaw", "grip", "vx", "vy", "vz"]
ACTION_NAMES = ["dx", "dy", "dz", "dyaw", "grip"]
COLORS = ["red", "green", "blue", "yellow"]
FAMILIES = ["pick_place", "stack", "drawer"]


def synthetic_image(seed: int, episode: int, frame: int, camera: str, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: coarse random blocks upscaled, so video codecs see real structure."""
    cam = 0 if camera == "front" else 1
    rng = np.random.default_rng([seed, episode, frame, cam])
    cells = max(2, size // 8)
    coarse = rng.integers(0, 256, size=(cells, cells, 3), dtype=np.uint8)
    reps = -(-size // cells)
    return np.kron(coarse, np.ones((reps, reps, 1), dtype=np.uint8))[:size, :size]


def episode_subtasks(rng: np.random.Generator) -> tuple[str, str, list[str]]:
    family = FAMILIES[int(rng.integers(len(FAMILIES)))]
    a, b = rng.choice(COLORS, size=2, replace=False)
    if family == "drawer":
        subtasks = ["open the drawer", f"pick up the {a} block", "put it in the drawer", "close the drawer"]
        task = f"put the {a} block in the drawer and close it"
    elif family == "stack":
        subtasks = [f"pick up the {a} block", f"stack it on the {b} block"]
        task = f"stack the {a} block on the {b} block"
    else:
        subtasks = [f"pick up the {a} block", f"place it in the {b} bowl"]
        task = f"put the {a} block in the {b} bowl"
    return family, task, subtasks


CORRECTION_TEXT = {
    CorrectionKind.OVERRIDE: "no, {subtask} first",
    CorrectionKind.NEGATION: "not that one",
    CorrectionKind.CONSTRAINT: "leave the green block alone",
    CorrectionKind.NUDGE: "a bit more to the left",
    CorrectionKind.CONFIRM: "yes, that's right",
    CorrectionKind.PAUSE: "wait",
    CorrectionKind.RESUME: "go on",
    CorrectionKind.STOP: "stop",
}


def write_synthetic_session(
    out_dir: str | os.PathLike,
    *,
    episodes: int = 2,
    steps: int = 40,
    image_size: int = 32,
    seed: int = 0,
    corrections_per_episode: int = 3,
    high_level: str = "pi05:synthetic",
    speaker: str = "scripted",
) -> Path:
    """Record a complete synthetic session to `out_dir` and return its path."""
    rng = np.random.default_rng(seed)
    header = make_header(
        high_level=high_level,
        low_level="expert",
        cameras={"front": (image_size, image_size), "wrist": (image_size, image_size)},
        state_names=STATE_NAMES,
        action_names=ACTION_NAMES,
        env={"suite": "synthetic", "image_size": image_size, "seed": seed},
    )
    kinds = [CorrectionKind.OVERRIDE, CorrectionKind.NEGATION, CorrectionKind.NUDGE, CorrectionKind.CONSTRAINT, CorrectionKind.CONFIRM]
    plan_id = 0
    correction_id = 0
    with SessionRecorder(out_dir, header) as rec:
        for ep in range(episodes):
            family, task, subtasks = episode_subtasks(rng)
            t0 = time.time()
            rec.start_episode(EpisodeStart(episode=ep, task=task, family=family, seed=seed * 1000 + ep, subtasks=subtasks, wall_time=t0))
            per_subtask = max(1, steps // len(subtasks))
            correction_steps = sorted(rng.choice(np.arange(3, steps), size=min(corrections_per_episode, steps - 3), replace=False).tolist())
            current = PlanData(thought=f"nothing is done yet, so first {subtasks[0]}", subtask=subtasks[0], source="model")
            rec.record(PlanEmitted(episode=ep, step=0, plan_id=plan_id, plan=current, reason="start", latency_s=0.05, wall_time=t0))
            for k in range(steps):
                index = min(k // per_subtask, len(subtasks) - 1)
                if k > 0 and k % per_subtask == 0 and k // per_subtask < len(subtasks):
                    plan_id += 1
                    current = PlanData(
                        thought=f"{subtasks[index - 1]} is done, so next {subtasks[index]}",
                        subtask=subtasks[index],
                        source="model",
                    )
                    rec.record(PlanEmitted(episode=ep, step=k, plan_id=plan_id, plan=current, reason="subtask_done", latency_s=0.04, wall_time=t0 + k / 10))
                if k in correction_steps:
                    kind = kinds[(correction_id + ep) % len(kinds)]
                    human_subtask = subtasks[(index + 1) % len(subtasks)] if kind is CorrectionKind.OVERRIDE else current.subtask
                    resulting = PlanData(thought=f"the person said so; {human_subtask}", subtask=human_subtask, source="human")
                    rec.record(
                        CorrectionRecord(
                            episode=ep,
                            step=k,
                            correction_id=correction_id,
                            kind=kind,
                            text=CORRECTION_TEXT[kind].format(subtask=human_subtask),
                            speaker=speaker,
                            replaced_plan=current,
                            model_plan=current,
                            resulting_plan=resulting if kind in (CorrectionKind.OVERRIDE, CorrectionKind.NEGATION) else None,
                            suspect_from_step=max(0, k - 3),
                            mistake="wrong_order" if kind is CorrectionKind.OVERRIDE else None,
                            wall_time=t0 + k / 10,
                        )
                    )
                    if kind in (CorrectionKind.OVERRIDE, CorrectionKind.NEGATION):
                        plan_id += 1
                        current = resulting
                        rec.record(PlanEmitted(episode=ep, step=k, plan_id=plan_id, plan=current, reason="correction", wall_time=t0 + k / 10))
                    correction_id += 1
                images = {cam: synthetic_image(seed, ep, k, cam, image_size) for cam in ("front", "wrist")}
                state = rng.normal(size=len(STATE_NAMES)).astype(np.float32)
                action = rng.uniform(-1, 1, size=len(ACTION_NAMES)).astype(np.float32)
                rec.record_step(
                    Step(
                        episode=ep, step=k, frame=k, time=k / 10, wall_time=t0 + k / 10,
                        state=state.tolist(), action=action.tolist(), plan_id=plan_id,
                        subtask=current.subtask, subtask_index=index,
                    ),
                    images,
                )
            if ep == 0 and correction_id > 0:
                # the last correction of the first episode is taken back ("undo")
                rec.record(CorrectionWithdrawn(episode=ep, step=steps - 1, correction_id=correction_id - 1, wall_time=t0 + steps / 10))
            rec.record(
                EpisodeEnd(
                    episode=ep, steps=steps, success=bool(ep % 2 == 0), subtasks_completed=len(subtasks) - ep % 2,
                    subtasks_total=len(subtasks), reason="success" if ep % 2 == 0 else "timeout", wall_time=t0 + steps / 10,
                )
            )
    return Path(out_dir)
