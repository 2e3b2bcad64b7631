"""Which recorded steps a nudge moved: each nudge correction of a recorded episode and the steps its
burst drove the arm. Sessions of schema 7 on say which steps a person's action drove
(`Step.intervention`, set by the loop when it took a nudge's action); the queue below assigns those
steps to the nudges said. Older sessions do not say it, so it is read back from what they hold:

The loop's rule (agent/runtime/corrections.py, agent/runtime/acting.py), replayed over the records:
a nudge said at step s is applied at the start of step s; its action offset (agent/coaching/nudge.py,
from the words and the grip held then, i.e. the previous action's grip) is queued NUDGE_STEPS times
behind any nudge still running; every step that acts takes the next queued offset; a held step
(paused, stopped, or, planning asynchronously, waiting for a plan) takes none; a stop empties the
queue. A step counts as a burst step when it acts (not paused) and its recorded action is the offset
at the head of the queue, so a step held while a plan was awaited (recorded as acting, but with the
hold action) is never taken for one. A step lost from the recording (damaged frames) takes no offset.

Whether a burst **helped**: the subtask in force at its first step was completed (a "subtask_done"
plan naming it, or the episode's success while it was in force) before another subtask came into
force and before the next nudge was said. A nudge followed by another one did not finish the job:
the last of a series gets the credit.

    python -m agent.coaching.nudge_bursts runs/coached/sessions       # counts, as JSON
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from agent.coaching.nudge import nudge_to_action_offset
from agent.runtime.acting import NUDGE_STEPS
from policies.types import TASK_DONE, CorrectionKind
from sessions.reader import EpisodeData
from sessions.schema import CorrectionRecord, PlanEmitted


@dataclass(frozen=True)
class NudgeBurst:
    correction: CorrectionRecord  # the nudge said (withdrawn ones too: /undo does not stop a motion)
    positions: tuple[int, ...]  # indexes into episode.steps of the steps its offset drove, in order
    subtask: str | None  # the subtask in force at its first step (None: it never ran)
    helped: bool  # that subtask was completed after it (see the module docstring)


def nudge_bursts(ep: EpisodeData) -> list[NudgeBurst]:
    """Every nudge of `ep` with the steps it moved, in the order said."""
    said = sorted((c for c in ep.corrections if c.kind in (CorrectionKind.NUDGE, CorrectionKind.STOP)),
                  key=lambda c: c.step)  # stable: corrections of one step stay in the order applied
    if not any(c.kind is CorrectionKind.NUDGE for c in said):
        return []
    nudges: list[CorrectionRecord] = []
    offsets: list[np.ndarray] = []
    moved: list[list[int]] = []
    queue: deque[int] = deque()  # the nudge each queued step belongs to
    last_grip, k = -1.0, 0  # the loop's Actor starts an episode with the jaws open
    flagged = any(s.intervention for s in ep.steps)  # schema 7: the loop said which actions were a nudge's
    for pos, step in enumerate(ep.steps):
        while k < len(said) and said[k].step <= step.step:
            c = said[k]
            k += 1
            if c.kind is CorrectionKind.STOP:
                queue.clear()
                continue
            nudges.append(c)
            offsets.append(nudge_to_action_offset(c.text, grip_closed=last_grip > 0))
            moved.append([])
            queue.extend([len(nudges) - 1] * NUDGE_STEPS)
        action = np.asarray(step.action, np.float32)
        if queue and (step.intervention if flagged else _replayed_nudge(step, action, offsets[queue[0]])):
            moved[queue.popleft()].append(pos)
        if len(action) > 4:
            last_grip = float(action[4])
    said_at = [c.step for c in nudges]
    out = []
    for i, (c, positions) in enumerate(zip(nudges, moved)):
        subtask = ep.steps[positions[0]].subtask if positions else None
        next_said = said_at[i + 1] if i + 1 < len(said_at) else None
        helped = bool(positions) and _completed_after(ep, positions[0], subtask, next_said)
        out.append(NudgeBurst(c, tuple(positions), subtask, helped))
    return out


def _replayed_nudge(step, action: np.ndarray, offset: np.ndarray) -> bool:
    """A session older than schema 7: the step acted and its action is the queued nudge's offset."""
    return not step.paused and np.allclose(action, offset, atol=1e-6)


def intervention_positions(ep: EpisodeData) -> set[int]:
    """Indexes into `ep.steps` whose action a person (or the scripted coach) caused: every nudge's burst."""
    return {p for burst in nudge_bursts(ep) for p in burst.positions}


def completed_subtask(plan: PlanEmitted, ep: EpisodeData) -> str | None:
    """The subtask a "subtask_done" plan says was just completed (None for other plans): the last one its
    context lists as done; a session without contexts (schema 1): the subtask in force the step before."""
    if plan.reason != "subtask_done":
        return None
    if plan.context is not None and plan.context.done:
        return plan.context.done[-1]
    before = ep.position_of_step(plan.step - 1)
    return ep.steps[before].subtask if ep.steps and plan.step > 0 else None


def completed_subtasks(ep: EpisodeData) -> list[str]:
    """The subtasks `ep` completed, in order (a success completes the one in force at the end)."""
    done = [s for p in ep.plans if (s := completed_subtask(p, ep)) is not None]
    if ep.success and ep.steps and ep.steps[-1].subtask not in (None, TASK_DONE):
        done.append(ep.steps[-1].subtask)
    return done


def _completed_after(ep: EpisodeData, first: int, subtask: str | None, next_said: int | None) -> bool:
    if subtask in (None, TASK_DONE):
        return False
    done_at: dict[int, list[str]] = {}
    for p in ep.plans:
        if (s := completed_subtask(p, ep)) is not None:
            done_at.setdefault(p.step, []).append(s)
    for step in ep.steps[first + 1:]:
        if subtask in done_at.get(step.step, ()):  # lands at the start of this step, before it acts
            return True
        if step.subtask != subtask or (next_said is not None and step.step >= next_said):
            return False
    return bool(ep.success)  # the episode ended with this subtask in force: done only if the task was


def summarise(paths: list[str]) -> dict:
    """Counts over the sessions under `paths`, and one row per nudge (where, what, whether it helped)."""
    from sessions.reader import iter_sessions

    rows = []
    episodes = 0
    for session in iter_sessions(paths):
        for ep in session.episodes:
            episodes += 1
            for b in nudge_bursts(ep):
                rows.append({"session": session.header.session_id, "episode": ep.episode, "family": ep.start.family,
                             "seed": ep.start.seed, "step": b.correction.step, "text": b.correction.text,
                             "subtask": b.subtask, "burst_steps": len(b.positions), "helped": b.helped,
                             "episode_success": ep.success})
    return {"episodes": episodes, "nudges": len(rows), "executed": sum(r["burst_steps"] > 0 for r in rows),
            "helped": sum(r["helped"] for r in rows), "burst_steps": sum(r["burst_steps"] for r in rows),
            "helped_steps": sum(r["burst_steps"] for r in rows if r["helped"]), "rows": rows}


if __name__ == "__main__":
    import json
    import sys

    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m agent.coaching.nudge_bursts SESSIONS_OR_DIRS...")
    print(json.dumps(summarise(sys.argv[1:]), indent=1))
