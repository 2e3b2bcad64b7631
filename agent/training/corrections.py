"""Training samples from coaching corrections, for `hivla finetune`.

Where the corrections come from (`--data`): recorded session directories, or exports made from
them (`hivla export --format sft|pairs`), whose correction rows (speaker scripted or human) select
the corrections and whose `session` column says where the frames and states are.

What a correction teaches (`CorrectionLabel`): the subtask the coach wanted at that moment,
  override              the subtask it ordered
  negation, constraint  the plan the robot adopted because of it, if it is a different one and
                        the coach let it stand (no further correction within RECHECK_STEPS)
Pause, stop, resume, confirm and nudges say nothing about the next subtask and are skipped.

Samples (`correction_samples`): the frames around each correction relabelled with what the coach
wanted: up to `before` steps of the mistake before it (from its suspect_from_step; for a wrong
plan, from the step that plan was made, so the decision itself is relabelled) and up to `after`
steps while the taught subtask is being carried out. The context is the subtask in force just
before and, for a share `with_corrections` of the samples (a stable draw per frame), the
corrections said so far in the episode, as the model reads them in a coached run; the others get
none, the context of an uncoached run, where the model must come to do it by itself. (A model
trained only on uncoached contexts may not even parse a context with corrections in it.) The
target is a short thought saying how far the task is ("3 of 6 steps are done.", from the recorded
progress, as the oracle's thoughts do) and the taught subtask.

Approved decisions (`include_approved`): a coached episode also shows which of the model's own
plans the coach let stand: every plan made at the start, on the timer or when a subtask finished
that no correction replaced and that lies in no correction's suspect window (the export's plan rows
of weight 1), unless progress fell while it was in force (a wrong step that finished before the
coach could react, like taking a tidied block back out of the drawer). They are sampled at the step
they were made, with the same context and thought.
Without them the fine-tune would only see the states where the model was wrong, and could drift
where it was right (the states coaching visits, DAgger-style, labelled by the coach).

For a wrong plan (mistake wrong_order/wrong_object/broken_constraint) the frames up to and with the
correction show as "last subtask" the one in force before the wrong plan was made: the context in
which the right decision was due (after a finished step, say), not the model's own wrong plan.

Agreement samples (`agreement_samples`): one per correction, the frame at the moment it was said,
with that same context (the plan it replaced, for other mistakes); the model agrees if it now
decodes the taught subtask.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.training.dataset import RawSamples, last_completed
from policies.planning import planner_context
from policies.pi05.processor import resize_image

TEACHING_KINDS = ("override", "negation", "constraint")
PLAN_MISTAKES = ("wrong_order", "wrong_object", "broken_constraint")  # the plan itself was wrong
RECHECK_STEPS = 15  # a negation's re-plan counts as what the coach wanted if no correction follows this soon
COACHED_THOUGHT = "As I was taught."


class CorrectionDataError(ValueError):
    """Correction data that cannot be used; the message says which path and why."""


@dataclass
class CoachedEpisode:
    session: object  # sessions.reader.Session
    episode: object  # sessions.reader.EpisodeData
    labels: list  # CorrectionLabel, in step order
    approved: list[tuple[int, str]]  # (step, subtask) of the model's plans the coach let stand

    @property
    def key(self) -> str:
        return f"{self.session.header.session_id}/{self.episode.episode}"


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


# ---------------------------------------------------------------------------------------------
# where the corrections are
# ---------------------------------------------------------------------------------------------


def _export_selection(export_dir: Path) -> dict[str, tuple[set, set]]:
    """session path -> ({(episode, step)} of teaching correction rows, {(episode, step)} of plan rows of
    weight > 0 made by the model) of an sft/pairs export."""
    import pyarrow.parquet as pq

    manifest = json.loads((export_dir / "manifest.json").read_text(encoding="utf-8"))
    fmt = manifest.get("format")
    if fmt not in ("sft", "pairs"):
        raise CorrectionDataError(f"{export_dir}: a {fmt!r} export; finetune reads sft or pairs exports "
                                  "(or the session directories themselves)")
    chosen: dict[str, tuple[set, set]] = {}
    for name in manifest.get("files", {}).values():
        columns = ["session", "episode", "step", "kind"] + (["source", "weight"] if fmt == "sft" else ["speaker"])
        for row in pq.read_table(export_dir / name, columns=columns).to_pylist():
            corrections, approved = chosen.setdefault(row["session"], (set(), set()))
            speaker = row.get("source", row.get("speaker"))
            if row["kind"] in TEACHING_KINDS and speaker in ("scripted", "human"):
                corrections.add((row["episode"], row["step"]))
            elif row["kind"] == "plan" and speaker == "model" and (row.get("weight") or 0) > 0:
                approved.add((row["episode"], row["step"]))
    return chosen


def approved_decisions(session, ep) -> list[tuple[int, str]]:
    """(step, subtask) of the model's own plans that no correction replaced or put under suspicion,
    and that undid no progress while in force (a wrong step can finish before a coach reacts)."""
    from sessions.export.common import ExportOptions, decision_points

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


def load_coached_episodes(paths: Iterable[str | Path], log=print) -> list[CoachedEpisode]:
    """Every coached episode with at least one usable correction or approved plan."""
    from sessions.reader import SessionError, find_sessions, read_session

    selections: dict[str, tuple[set, set] | None] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise CorrectionDataError(f"{p}: no such file or directory")
        if (p / "manifest.json").is_file():
            for session, (corr, appr) in _export_selection(p).items():
                if not Path(session).is_dir():
                    raise CorrectionDataError(f"{p}: the export names session {session}, which is not on disk "
                                              "(finetune needs the recorded sessions for frames and states)")
                previous = selections.get(session)
                selections[session] = (corr, appr) if previous is None else (previous[0] | corr, previous[1] | appr)
        else:
            for s in find_sessions([p]):
                selections[str(s)] = None  # everything the session holds
    out = []
    for path, keys in selections.items():
        try:
            session = read_session(path)
        except SessionError as err:
            log(f"skipping {path}: {err}")
            continue
        for ep in session.episodes:
            if not ep.steps:
                continue
            labels = episode_labels(session.header.session_id, ep)
            approved = approved_decisions(session, ep)
            if keys is not None:
                labels = [lab for lab in labels if (ep.episode, lab.step) in keys[0]]
                approved = [a for a in approved if (ep.episode, a[0]) in keys[1]]
            if labels or approved:
                out.append(CoachedEpisode(session, ep, labels, approved))
    return out


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
        labels.append(CorrectionLabel(
            episode_key=f"{session_id}/{ep.episode}", step=c.step, kind=c.kind.value, text=c.text, subtask=subtask,
            replaced=c.replaced_plan.subtask if c.replaced_plan else None,
            model=c.model_plan.subtask if c.model_plan else None, family=ep.start.family, mistake=c.mistake,
            suspect_from_step=c.suspect_from_step,
        ))
    return labels


def is_held_out(episode_key: str, fraction: float) -> bool:
    """A stable episode-level split (crc32 of the key), independent of what else is loaded."""
    return fraction > 0 and (zlib.crc32(episode_key.encode()) % 10_000) / 10_000 < fraction


# ---------------------------------------------------------------------------------------------
# samples
# ---------------------------------------------------------------------------------------------


def said_before(ep, step: int) -> list[str]:
    """The planning corrections in the model's context at `step` (policies.planning's rule)."""
    return planner_context(ep.task, said=[c for c in ep.active_corrections if c.step <= step]).texts


def _draw(key: str, i: int, share: float) -> bool:
    return share > 0 and (zlib.crc32(f"{key}#{i}".encode()) % 10_000) / 10_000 < share


def progress_thought(ep, i: int) -> str:
    """The thought of a coaching sample: how far the task is, in the oracle's words ("2 of 6 steps are
    done."), from the recorded progress; the subtask then follows from what the frame shows."""
    done, total = ep.steps[i].subtask_index, len(ep.start.subtasks or ())
    if done is None or not total:
        return COACHED_THOUGHT
    return f"{min(done, total)} of {total} steps are done."


def _append(raw: RawSamples, ep, frames: dict, i: int, subtask: str, last: str | None, horizon: int,
            image_size: int, key: str, corrections: list[str] | None = None) -> None:
    step = ep.steps[i]
    actions = np.asarray([s.action for s in ep.steps[i: i + horizon]], np.float32)
    chunk = np.zeros((horizon, actions.shape[1]), np.float32)
    chunk[: len(actions)] = actions
    mask = np.zeros(horizon, bool)
    mask[: len(actions)] = True
    raw.images.append(np.stack([resize_image(frames[c][i], image_size) for c in frames]))
    raw.states.append(np.asarray(step.state, np.float32))
    raw.tasks.append(ep.task)
    raw.last_subtasks.append(last)
    raw.corrections.append(list(corrections or []))
    raw.thoughts.append(progress_thought(ep, i))
    raw.plan_subtasks.append(subtask)
    raw.subtasks.append(step.subtask or subtask)
    raw.actions.append(chunk)
    raw.action_masks.append(mask)
    raw.episode_keys.append(key)


_IN_FORCE = object()  # "last" is the subtask in force at the previous step, as recorded


def decision_context(ep, lab: CorrectionLabel) -> object:
    """The "last subtask" to show with the frames of a correction's mistake. For a wrong plan, the
    subtask in force before that plan was made (the context in which the right decision was due,
    e.g. the step just finished); otherwise the recorded one."""
    if lab.mistake not in PLAN_MISTAKES or lab.suspect_from_step is None:
        return _IN_FORCE
    decision = ep.position_of_step(lab.suspect_from_step) - 1  # the coach saw the plan a step after it was made
    return ep.steps[decision - 1].subtask if decision > 0 else None


def correction_samples(coached: list[CoachedEpisode], cameras: tuple[str, ...], image_size: int, horizon: int,
                       before: int = 10, after: int = 30, include_approved: bool = True,
                       with_corrections: float = 0.5, context_last: str = "in_force") -> tuple[RawSamples, list[int]]:
    """Relabelled frames around every correction (and the approved decisions); returns the samples
    and, per sample, the index of its correction in the flat list of labels (-1: an approved plan).
    With context_last="done" every sample's context names the subtask completed last at its step (what
    the model read there); otherwise the subtask in force, as below."""
    raw, owner = RawSamples(), []
    n_labels = 0
    for item in coached:
        ep, labels = item.episode, item.labels
        chosen: dict[int, tuple[str, int, object]] = {}  # position -> (subtask, label index, last); corrections win
        if include_approved:
            for step, subtask in item.approved:
                chosen[ep.position_of_step(step)] = (subtask, -1, _IN_FORCE)
        for k, lab in enumerate(labels):
            at = ep.position_of_step(lab.step)
            first = max(0, at - before)
            if lab.suspect_from_step is not None:
                suspect = ep.position_of_step(lab.suspect_from_step)
                if lab.mistake in PLAN_MISTAKES:
                    # the coach first sees a plan the step after it was made: include that decision
                    suspect -= 1
                first = max(first, suspect)
            before_mistake = decision_context(ep, lab)
            for i in range(first, at + 1):
                if not ep.steps[i].paused:
                    chosen[i] = (lab.subtask, n_labels + k, before_mistake)
            i = at + 1
            while i < len(ep.steps) and i <= at + after and ep.steps[i].subtask == lab.subtask:
                if not ep.steps[i].paused:
                    chosen[i] = (lab.subtask, n_labels + k, _IN_FORCE)
                i += 1
        n_labels += len(labels)
        if not chosen:
            continue
        frames = {c: ep.frames(c) for c in cameras}
        done = completed_subtasks(ep) if context_last == "done" else None
        for i in sorted(chosen):
            subtask, index, last = chosen[i]
            if done is not None:
                last = done[i]
            elif last is _IN_FORCE:
                last = ep.steps[i - 1].subtask if i > 0 else None
            said = said_before(ep, ep.steps[i].step) if _draw(item.key, i, with_corrections) else []
            _append(raw, ep, frames, i, subtask, last, horizon, image_size, item.key, said)
            owner.append(index)
    return raw, owner


def completed_subtasks(ep) -> list[str | None]:
    """Per step of a recorded episode, the subtask completed most recently (see dataset.last_completed)."""
    return last_completed(ep.steps, sorted(ep.plans, key=lambda p: p.plan_id))


def agreement_samples(coached: list[CoachedEpisode], cameras: tuple[str, ...], image_size: int,
                      horizon: int, context_last: str = "in_force") -> tuple[RawSamples, list[CorrectionLabel]]:
    """One sample per correction: the frame when it was said, the replaced plan (or, with
    context_last="done", the subtask completed last) as context."""
    raw, labels = RawSamples(), []
    for item in coached:
        if not item.labels:
            continue
        ep = item.episode
        frames = {c: ep.frames(c) for c in cameras}
        done = completed_subtasks(ep) if context_last == "done" else None
        for lab in item.labels:
            at = ep.position_of_step(lab.step)
            if done is not None:
                last = done[at]
            else:
                last = decision_context(ep, lab)
                last = lab.replaced if last is _IN_FORCE else last
            _append(raw, ep, frames, at, lab.subtask, last, horizon, image_size, item.key)
            labels.append(lab)
    return raw, labels
