"""The recorder as one of the loop's observers: each event becomes the session record it stands for.

One owner for the mapping, so a recorder (sessions.recorder), the live rerun log and a test's list
all receive exactly the same records. Events with no record (a plan asked, a subtask done, a
snapshot) pass by.
"""

from __future__ import annotations

import sys
from typing import Callable

from agent.runtime import events as ev
from agent.runtime.protocols import LoopObserver, Recorder
from policies.types import Plan
from sessions import schema


def plan_data(plan: Plan | None) -> schema.PlanData | None:
    return None if plan is None else schema.PlanData(thought=plan.thought, subtask=plan.subtask, source=plan.source)


def _correction(e: ev.CorrectionApplied) -> schema.CorrectionRecord:
    c = e.correction
    return schema.CorrectionRecord(
        episode=e.episode, step=e.step, correction_id=e.correction_id, kind=c.kind, text=c.text, subtask=c.subtask,
        speaker=getattr(c, "speaker", None) or "human", replaced_plan=plan_data(e.replaced_plan),
        model_plan=plan_data(e.model_plan), resulting_plan=plan_data(e.resulting_plan),
        suspect_from_step=e.suspect_from_step, mistake=getattr(c, "mistake", None),
        fact=None if c.fact is None else schema.FactData(**c.fact.to_dict()), wall_time=e.wall_time)


_RECORDS: dict[type, Callable] = {
    ev.EpisodeStarted: lambda e: schema.EpisodeStart(episode=e.episode, task=e.task, family=e.family, seed=e.seed,
                                                     subtasks=list(e.subtasks), wall_time=e.wall_time),
    ev.PlanLanded: lambda e: schema.PlanEmitted(
        episode=e.episode, step=e.step, plan_id=e.plan_id, plan=plan_data(e.plan), reason=e.reason,
        latency_s=e.latency_s, wall_time=e.wall_time, asked_step=e.asked_step, asked_wall_time=e.asked_wall_time,
        context=schema.ContextData.model_validate(e.context.to_dict())),
    ev.CorrectionApplied: _correction,
    ev.CorrectionUndone: lambda e: schema.CorrectionWithdrawn(episode=e.episode, step=e.step,
                                                              correction_id=e.correction_id, wall_time=e.wall_time),
    ev.RuleKept: lambda e: schema.RuleRemembered(episode=e.episode, step=e.step, rule_id=e.rule_id, text=e.text,
                                                 how=e.how, correction_id=e.correction_id, wall_time=e.wall_time),
    ev.RuleDropped: lambda e: schema.RuleForgotten(episode=e.episode, step=e.step, rule_id=e.rule_id,
                                                   wall_time=e.wall_time),
    ev.QuestionAnswered: lambda e: schema.QuestionAnswered(episode=e.episode, step=e.step, question=e.question,
                                                           answer=e.answer, wall_time=e.wall_time),
    ev.EpisodeEnded: lambda e: schema.EpisodeEnd(
        episode=e.episode, steps=e.steps, success=e.success, subtasks_completed=e.subtasks_completed,
        subtasks_total=e.subtasks_total, reason=e.reason, wall_time=e.wall_time),
}


def step_record(e: ev.StepTaken) -> schema.Step:
    return schema.Step(
        episode=e.episode, step=e.step, frame=e.step, time=e.obs.time, wall_time=e.wall_time,
        state=[float(x) for x in e.obs.state], action=[float(x) for x in e.action], plan_id=e.plan_id,
        subtask=e.subtask, subtask_index=e.subtask_index, paused=e.paused, intervention=e.intervention)


class RecordingObserver:
    """Writes the loop's events to a Recorder."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def on_event(self, event: ev.LoopEvent) -> None:
        if isinstance(event, ev.StepTaken):
            self.recorder.record_step(step_record(event), event.obs.images)
            return
        to_record = _RECORDS.get(type(event))
        if to_record is not None:
            self.recorder.record(to_record(event))

    def __repr__(self) -> str:
        return repr(self.recorder)


class Guarded:
    """An observer that must not stop the robot (the live rerun log): the first error drops it with
    one message on stderr, and the loop goes on."""

    def __init__(self, observer: LoopObserver, label: str = "hivla") -> None:
        self.observer: LoopObserver | None = observer
        self.label = label

    def on_event(self, event: ev.LoopEvent) -> None:
        if self.observer is None:
            return
        try:
            self.observer.on_event(event)
        except Exception as err:
            print(f"{self.label}: stopped logging to {self.observer}: {type(err).__name__}: {err}", file=sys.stderr)
            self.observer = None
