"""What coached episodes teach the high level, computed once at export: the coaching table.

The sft and pairs exports write it as `coaching.parquet` beside their split files (the manifest names
it under "coaching"), LeRobot exports as `meta/hivla_coaching.parquet` (hivla_manifest.json names it),
without images and with each frame's episode_index, frame_index and index in the dataset (its frames
are in the videos; steps outside an exported window are not in the table). `hivla finetune` on a
pi05 checkpoint reads it and nothing else (no session, no re-run of the decision points:
agent/training/corrections.py). One row per step of every exported episode that teaches something:

  session_id, episode, step, task, family
  cameras, images  the frame of each camera at this step (PNG; `datasets` reads a list of Image)
  state, action    as recorded
  subtask          the subtask in force (what the recorded actions executed: the low level's instruction)
  paused
  thought          how far the task is, in the oracle's words ("2 of 6 steps are done.")
  last_in_force    the subtask in force the step before (what a context_last="in_force" model reads)
  done             the subtasks completed when the step's plan was made, each once, the most recent last
                   (PlannerContext.done: with last_in_force, what a context_last="history" model reads)
  last_done        the last of them, the subtask completed most recently (context_last="done")
  said             the planning corrections in the planner's context at this step, after the rules
                   remembered for the session ("rule: ..."), as PlannerContext.read_texts lists them
  approved         the subtask of a plan of the model's made at this step that the coach let stand, else None
  labels           what each teaching correction said at this step wanted (CorrectionLabel's fields)

What a correction teaches (`CorrectionLabel`): the subtask the coach wanted at that moment,
  override              the subtask it ordered
  negation, constraint  the plan the robot adopted because of it, if it is a different one and
                        the coach let it stand (no further correction within RECHECK_STEPS)
Pause, stop, resume, confirm and nudges say nothing about the next subtask and are skipped; free
text the low level cannot execute (no subtask of the grammar) is skipped too.

Approved decisions: every plan of the model's made at the start, on the timer or when a subtask
finished that no correction replaced and that lies in no correction's suspect window (the export's
plan rows of weight 1), unless progress fell while it was in force (a wrong step that finished
before the coach could react, like taking a tidied block back out of the drawer).

For a wrong plan (mistake wrong_order/wrong_object/broken_constraint) the label also records the
subtask in force before that plan was made (`before_wrong_plan`): the context in which the right
decision was due (after a finished step, say), not the model's own wrong plan.

The export's filters choose, as for its rows: corrections of a teaching kind said by the scripted
coach or a person, plans made by the model (none with --only-corrections, as in pairs exports).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from policies.planning import planner_context, record_completion
from sessions.export.common import ExportOptions, decision_points, memory_at, safe_join
from sessions.export.hf_features import IMAGE_TYPE, with_hf_features
from sessions.export.png import encode_png
from sessions.reader import EpisodeData, Session

COACHING_FILE = "coaching.parquet"
TEACHING_KINDS = ("override", "negation", "constraint")
PLAN_MISTAKES = ("wrong_order", "wrong_object", "broken_constraint")  # the plan itself was wrong
RECHECK_STEPS = 15  # a negation's re-plan counts as what the coach wanted if no correction follows this soon
COACHED_THOUGHT = "As I was taught."


@dataclass(frozen=True)
class CorrectionLabel:
    episode_key: str  # "session_id/episode"
    step: int
    kind: str
    text: str
    subtask: str  # what the coach wanted
    replaced: str | None  # the subtask in force when the correction came
    model: str | None  # what the model itself would have planned then (if recorded)
    family: str | None
    mistake: str | None
    suspect_from_step: int | None
    wrong_plan: bool = False  # the mistake was the plan itself, made at suspect_from_step - 1
    before_wrong_plan: str | None = None  # then: the subtask in force before that plan was made


LABEL_FIELDS = ("kind", "text", "subtask", "replaced", "model", "mistake", "suspect_from_step", "wrong_plan",
                "before_wrong_plan")


def episode_labels(session_id: str, ep) -> list[CorrectionLabel]:
    """What each teaching correction of an episode wanted (see the module docstring)."""
    from policies.grammar import SubtaskParseError, parse_subtask

    active = sorted((c for c in ep.corrections if not c.withdrawn), key=lambda c: (c.step, c.correction_id))
    steering = [c for c in active if c.kind.value in TEACHING_KINDS]
    labels = []
    for i, c in enumerate(steering):
        if c.resulting_plan is None:
            continue
        if c.kind.value != "override":
            if c.replaced_plan is not None and c.resulting_plan.subtask == c.replaced_plan.subtask:
                continue  # the re-plan is the plan the coach said no to
            later = steering[i + 1] if i + 1 < len(steering) else None
            if later is not None and later.step - c.step <= RECHECK_STEPS:
                continue  # the coach did not let this re-plan stand
        subtask = c.resulting_plan.subtask
        try:
            parse_subtask(subtask)
        except SubtaskParseError:
            continue  # free text the low level cannot execute teaches the planner nothing usable
        wrong_plan = c.mistake in PLAN_MISTAKES and c.suspect_from_step is not None
        labels.append(CorrectionLabel(
            episode_key=f"{session_id}/{ep.episode}", step=c.step, kind=c.kind.value, text=c.text, subtask=subtask,
            replaced=c.replaced_plan.subtask if c.replaced_plan else None,
            model=c.model_plan.subtask if c.model_plan else None, family=ep.start.family, mistake=c.mistake,
            suspect_from_step=c.suspect_from_step, wrong_plan=wrong_plan,
            before_wrong_plan=_before_wrong_plan(ep, c.suspect_from_step) if wrong_plan else None,
        ))
    return labels


def _before_wrong_plan(ep, suspect_from_step: int) -> str | None:
    decision = ep.position_of_step(suspect_from_step) - 1  # the coach saw the plan a step after it was made
    return ep.steps[decision - 1].subtask if decision > 0 else None


def approved_decisions(session, ep) -> list[tuple[int, str]]:
    """(step, subtask) of the model's own plans that no correction replaced or put under suspicion,
    and that undid no progress while in force (a wrong step can finish before a coach reacts)."""
    points = decision_points(session, ep, ExportOptions(format="sft"))
    approved = [(p.step, p.target.subtask) for p in points
                if p.kind == "plan" and p.source == "model" and p.weight > 0 and p.target is not None]
    return [a for a in approved if not undid_progress(ep, a[0])]


def undid_progress(ep, step: int) -> bool:
    """Whether the episode's progress (Step.subtask_index) fell while the plan made at `step` was in force."""
    later = sorted(p.step for p in ep.plans if p.step > step)
    end = later[0] if later else ep.steps[-1].step + 1
    start = ep.steps[ep.position_of_step(step)].subtask_index
    if start is None:
        return False
    tenure = [s.subtask_index for s in ep.steps if step <= s.step < end and s.subtask_index is not None]
    return bool(tenure) and min(tenure) < start


def progress_thought(ep, i: int) -> str:
    """The thought of a coaching sample: how far the task is, in the oracle's words ("2 of 6 steps are
    done."), from the recorded progress; the subtask then follows from what the frame shows."""
    done, total = ep.steps[i].subtask_index, len(ep.start.subtasks or ())
    if done is None or not total:
        return COACHED_THOUGHT
    return f"{min(done, total)} of {total} steps are done."


def said_before(ep, step: int) -> list[str]:
    """The remembered rules and planning corrections in the model's context at `step` (policies.planning's rule)."""
    return planner_context(ep.task, said=[c for c in ep.active_corrections if c.step <= step],
                           memory=memory_at(ep, step)).read_texts


def subtasks_done(steps: list, plans: list) -> list[list[str]]:
    """Per step, the subtasks completed when the step's plan was made, each once, the most recent last:
    what the control loop's PlanContext.completed_subtasks held (policies.planning.record_completion). A plan re-made because its predecessor finished (reason "subtask_done") marks that
    predecessor, the plan in force the step before, done. `plans`: the episode's PlanEmitted, any order.
    The one rule the coaching table and the base data (agent.training.dataset) read from sessions."""
    plan_of = {p.plan_id: p for p in plans}
    out: list[list[str]] = []
    done: list[str] = []
    for i, step in enumerate(steps):
        made = plan_of.get(step.plan_id)
        before = plan_of.get(steps[i - 1].plan_id) if i > 0 else None
        if made is not None and before is not None and made is not before and made.reason == "subtask_done":
            record_completion(done, before.plan.subtask)
        out.append(list(done))
    return out


def completed_subtasks(ep: EpisodeData) -> list[str | None]:
    """Per step, the subtask completed most recently when the step's plan was made (what the control
    loop's PlanContext.completed_subtasks[-1] held): the last of `subtasks_done`."""
    return [done[-1] if done else None for done in subtasks_done(ep.steps, ep.plans)]


def episode_teaching(session: Session, ep: EpisodeData, options: ExportOptions) -> tuple[list[CorrectionLabel], list[tuple[int, str]]]:
    """The labels and approved decisions of one episode that the export's filters keep."""
    points = [p for p in decision_points(session, ep, options) if p.target is not None]
    corrections = {p.step for p in points if p.kind in TEACHING_KINDS and p.source in ("scripted", "human")}
    plans = {p.step for p in points if p.kind == "plan" and p.source == "model" and p.weight > 0}
    labels = [lab for lab in episode_labels(session.header.session_id, ep) if lab.step in corrections]
    approved = [a for a in approved_decisions(session, ep) if a[0] in plans]
    return labels, approved


def coaching_rows(session: Session, ep: EpisodeData, options: ExportOptions,
                  frames_of: Callable[[str], np.ndarray] | None = None, images: bool = True) -> list[dict]:
    """The coaching table's rows of one episode, one a step in order (none if it teaches nothing the
    filters keep); `frames_of(camera)`: the episode's decoded frames, when the caller has them
    already; images=False: no `images` column (a LeRobot export has the frames in its videos)."""
    labels, approved = episode_teaching(session, ep, options)
    if not labels and not approved:
        return []
    cameras = sorted(session.header.cameras)
    frames = {c: (frames_of or ep.frames)(c) for c in cameras} if images else {}
    done = subtasks_done(ep.steps, ep.plans)
    approved_at = dict(approved)
    labels_at: dict[int, list[dict]] = {}
    for lab in labels:
        labels_at.setdefault(lab.step, []).append({k: getattr(lab, k) for k in LABEL_FIELDS})
    rows = []
    for i, s in enumerate(ep.steps):
        rows.append({
            "session_id": session.header.session_id, "episode": ep.episode, "step": s.step, "task": ep.task,
            "family": ep.start.family, "cameras": cameras,
            **({"images": [{"bytes": encode_png(frames[c][i], level=1), "path": None} for c in cameras]} if images else {}),
            "state": list(s.state), "action": list(s.action), "subtask": s.subtask, "paused": bool(s.paused),
            "subtask_index": s.subtask_index, "thought": progress_thought(ep, i),
            "last_in_force": ep.steps[i - 1].subtask if i > 0 else None, "done": done[i],
            "last_done": done[i][-1] if done[i] else None,
            "said": said_before(ep, s.step), "approved": approved_at.get(s.step), "labels": labels_at.get(s.step, []),
        })
    return rows


def coaching_schema(images: bool = True, lerobot: bool = False) -> pa.Schema:
    """The table's schema; without `images`, and with lerobot=True the frame's place in a LeRobot
    dataset (episode_index, frame_index, index) instead."""
    label = pa.struct([("kind", pa.string()), ("text", pa.string()), ("subtask", pa.string()),
                       ("replaced", pa.string()), ("model", pa.string()), ("mistake", pa.string()),
                       ("suspect_from_step", pa.int64()), ("wrong_plan", pa.bool_()),
                       ("before_wrong_plan", pa.string())])
    where = [("episode_index", pa.int64()), ("frame_index", pa.int64()), ("index", pa.int64())] if lerobot else []
    frames = [("images", pa.list_(IMAGE_TYPE))] if images else []
    return with_hf_features(pa.schema([
        *where, ("session_id", pa.string()), ("episode", pa.int64()), ("step", pa.int64()), ("task", pa.string()),
        ("family", pa.string()), ("cameras", pa.list_(pa.string())), *frames,
        ("state", pa.list_(pa.float32())), ("action", pa.list_(pa.float32())), ("subtask", pa.string()),
        ("paused", pa.bool_()), ("subtask_index", pa.int64()), ("thought", pa.string()),
        ("last_in_force", pa.string()), ("done", pa.list_(pa.string())), ("last_done", pa.string()),
        ("said", pa.list_(pa.string())),
        ("approved", pa.string()), ("labels", pa.list_(label)),
    ]), image_lists=("images",) if images else ())


class CoachingWriter:
    """Appends episodes' coaching rows to `root/coaching.parquet`, one episode at a time (frames of
    one episode in memory, not the whole export's)."""

    def __init__(self, root: Path, options: ExportOptions) -> None:
        self.path = safe_join(root, COACHING_FILE)
        self.options = options
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def add(self, session: Session, ep: EpisodeData, frames_of: Callable[[str], np.ndarray] | None = None) -> None:
        rows = coaching_rows(session, ep, self.options, frames_of)
        if not rows:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, coaching_schema(), compression="zstd")
        self._writer.write_table(pa.Table.from_pylist(rows, schema=coaching_schema()))
        self.rows += len(rows)

    def close(self) -> dict:
        """What the manifest says of the table: {"coaching": file, "coaching_rows": n}."""
        if self._writer is None:  # an empty table all the same: this export has the columns, no row uses them
            pq.write_table(coaching_schema().empty_table(), self.path, compression="zstd")
        else:
            self._writer.close()
        return {"coaching": COACHING_FILE, "coaching_rows": self.rows}


def label_from_row(episode_key: str, step: int, family: str | None, data: dict) -> CorrectionLabel:
    return CorrectionLabel(episode_key=episode_key, step=step, family=family, **{k: data[k] for k in LABEL_FIELDS})

