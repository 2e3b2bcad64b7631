"""What the control loop tells its observers, one frozen record per thing that happened.

The loop emits these and nothing else: agent.runtime.recording turns them into the session's
records, the console reads the latest LoopSnapshot from SnapshotPublished, the latency probe pairs
a correction with the first step acted on its plan, session memory keeps the rules said for good
(agent.runtime.session_memory). Each is emitted on the loop's thread, at the moment it happens, so
observers see them in the order the loop did them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Union

import numpy as np

from policies.planning import PlannerContext
from policies.types import Correction, Observation, Plan

if TYPE_CHECKING:
    from agent.runtime.state import LoopSnapshot

ReplanReason = Literal["start", "timer", "subtask_done", "correction", "reset", "task_change"]


@dataclass(frozen=True)
class EpisodeStarted:
    episode: int
    task: str
    family: str | None
    seed: int | None
    subtasks: tuple[str, ...]
    wall_time: float


@dataclass(frozen=True)
class PlanAsked:
    """The high level was asked for a plan (in the step, or handed to the planner thread)."""

    episode: int
    step: int
    reason: ReplanReason
    generation: int  # the context generation it was asked under (a plan of an older one is stale)


@dataclass(frozen=True)
class PlanLanded:
    """A plan is in force from this step on."""

    episode: int
    step: int
    plan_id: int
    plan: Plan
    reason: ReplanReason
    latency_s: float | None  # None: nobody waited for it (a person's override)
    asked_step: int | None
    asked_wall_time: float | None
    context: PlannerContext  # what the high level read for it
    wall_time: float


@dataclass(frozen=True)
class CorrectionSaid:
    """A correction reached the loop, stamped with its step, before anything acts on it (session
    memory offers a rule a place here, so the plan the rule asks for already reads it)."""

    episode: int
    step: int
    correction_id: int
    correction: Correction


@dataclass(frozen=True)
class CorrectionApplied:
    """A correction took effect. Emitted when its plan is known: at once, or (asynchronous planning,
    a negation or rule) when the plan it asked for lands or will never come."""

    episode: int
    step: int
    correction_id: int
    correction: Correction
    replaced_plan: Plan | None  # in force when it was said
    model_plan: Plan | None  # what the high level would have done
    resulting_plan: Plan | None  # in force after it
    suspect_from_step: int | None  # where the mistake it corrects may have started
    replanned: bool  # it changed what is planned (override, negation, rule): its latency is measured
    submitted: float  # time.perf_counter() when it was submitted
    wall_time: float


@dataclass(frozen=True)
class CorrectionUndone:
    episode: int
    step: int
    correction_id: int
    wall_time: float


@dataclass(frozen=True)
class RuleKept:
    """Session memory kept a rule for later episodes (agent.memory)."""

    episode: int
    step: int
    rule_id: int
    text: str
    how: str
    correction_id: int
    wall_time: float


@dataclass(frozen=True)
class RuleDropped:
    episode: int
    step: int
    rule_id: int
    wall_time: float


@dataclass(frozen=True)
class SubtaskDone:
    episode: int
    step: int
    subtask: str


@dataclass(frozen=True)
class QuestionAnswered:
    episode: int
    step: int
    question: str
    answer: str
    wall_time: float


@dataclass(frozen=True)
class StepTaken:
    """One control step: `obs` is what the action was chosen on."""

    episode: int
    step: int
    obs: Observation
    action: np.ndarray
    plan_id: int | None
    subtask: str | None
    subtask_index: int | None
    paused: bool  # held still: paused, stopped, or the low level unreachable
    awaiting_plan: bool  # held still for an asked plan (asynchronous planning)
    intervention: bool  # the action was a person's (a nudge's burst), not the low level's
    acted_at: float  # time.perf_counter() when the action was chosen, before the env stepped
    wall_time: float


@dataclass(frozen=True)
class EpisodeEnded:
    episode: int
    steps: int
    success: bool
    subtasks_completed: int
    subtasks_total: int
    reason: str
    wall_time: float


@dataclass(frozen=True)
class SnapshotPublished:
    """The loop's state changed; UIs on other threads read this copy."""

    snapshot: LoopSnapshot


LoopEvent = Union[EpisodeStarted, PlanAsked, PlanLanded, CorrectionSaid, CorrectionApplied, CorrectionUndone, RuleKept,
                  RuleDropped, SubtaskDone, QuestionAnswered, StepTaken, EpisodeEnded, SnapshotPublished]
