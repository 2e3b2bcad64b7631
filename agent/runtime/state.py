"""What the control loop knows about an episode, and the read-only copies it hands out."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from policies.types import Correction, Plan

CONTROL_HZ = 10.0


def expire_facts(facts: list[Correction], subtask: str) -> None:
    """Drop the facts a completed subtask ended (policies.scene_line.Fact.ended_by): a fact about a block
    holds until the robot moves that block, one about the drawer until a drawer subtask; the rest hold
    until the episode ends (a new episode starts with no facts)."""
    for correction in list(facts):
        if correction.fact is not None and correction.fact.ended_by(subtask):
            facts.remove(correction)


def episode_over_reply(success: bool, step: int, what_next: str | None = None) -> str:
    """What a correction typed after the episode ended is answered with (nothing is recorded);
    `what_next` replaces the default hint (the console knows when the next episode starts)."""
    how = "succeeded" if success else "ended"
    return f"the episode {how} at step {step}: nothing recorded; " + (
        what_next or "/reset starts a new episode, /task TEXT a new task")


@dataclass(frozen=True)
class EpisodeResult:
    success: bool
    subtasks_completed: int
    subtasks_total: int
    steps: int
    interventions: int
    wall_time: float
    family: str | None
    reason: str
    last_subtask: str | None  # the subtask in force when it ended: what a timeout was stuck on


@dataclass(frozen=True)
class PlanChange:
    """A correction (or its withdrawal) that changed the subtask in force, for the console to show
    old -> new for a few seconds and where the robot was when it was said."""

    kind: str  # the CorrectionKind value
    text: str
    old: str | None  # subtask in force before
    new: str | None  # subtask in force after
    step: int  # control step at which the correction was said
    sim_time: float
    reference_index: int | None  # the reference subtask being worked on when it was said
    withdrawn: bool = False  # True: this is /undo taking the correction back
    at: float = field(default_factory=time.monotonic)  # when it happened (wall clock, for fading out)


@dataclass(frozen=True)
class LoopSnapshot:
    """A consistent, read-only view of the loop for UIs and tests."""

    episode: int
    step: int
    sim_time: float
    task: str
    family: str | None
    plan: Plan | None
    subtasks: tuple[str, ...]
    subtasks_done: tuple[bool, ...]
    corrections: tuple[Correction, ...]
    paused: bool
    stopped: bool
    front_image: np.ndarray | None
    last_reply: str
    episode_over: bool
    success: bool
    end_reason: str = ""
    corrections_given: int = 0  # corrections in force this episode (withdrawn ones not counted)
    plan_change: PlanChange | None = None  # the latest change a correction made to the plan
    withdrawn: tuple[Correction, ...] = ()  # corrections withdrawn with /undo this episode, oldest first
    memory: tuple[str, ...] = ()  # rules remembered for the session, in /rules order


@dataclass
class Episode:
    """The episode in progress, owned by the loop's thread."""

    index: int
    task: str
    family: str | None
    start_wall: float
    step: int = 0
    interventions: int = 0
    over: bool = False
    success: bool = False
    end_reason: str = ""
    corrections: list[Correction] = field(default_factory=list)
    correction_ids: list[int] = field(default_factory=list)
    withdrawn: list[Correction] = field(default_factory=list)
    plan_change: PlanChange | None = None
