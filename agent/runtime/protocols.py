"""The loop's seams, as structural types: what the control loop calls on each part, and nothing more.

The high and low level are the models' own protocols (policies.base); the rest are the runtime's.
A new environment, recorder, coach or viewer fits by having these methods; nothing subclasses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from policies.base import HighLevelPolicy as HighLevel
from policies.base import LowLevelPolicy as LowLevel
from policies.types import Observation, Plan

if TYPE_CHECKING:
    from agent.inputs import UserInput
    from agent.runtime.events import LoopEvent
    from sessions.schema import Event, Step

__all__ = ["Coach", "Env", "HighLevel", "LoopObserver", "LowLevel", "Recorder", "SubtaskJudge"]


@runtime_checkable
class Env(Protocol):
    """A gymnasium-style world that also turns its raw output into the policies' Observation."""

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]: ...

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]: ...  # obs, reward, terminated, truncated, info

    def observation(self, obs: dict, info: dict) -> Observation: ...


@runtime_checkable
class SubtaskJudge(Protocol):
    """An Env that can tell when a subtask is finished (the bundled simulator can); without it the
    loop re-plans only on its timer and on corrections."""

    def subtask_done(self, subtask: str, info: dict) -> bool | None: ...


@runtime_checkable
class Recorder(Protocol):
    """Where a session's records go (sessions.recorder.SessionRecorder; the live rerun log; a test's list)."""

    def record(self, event: Event) -> None: ...

    def record_step(self, step: Step, images: dict[str, np.ndarray]) -> None: ...


@runtime_checkable
class Coach(Protocol):
    """Someone watching who may say something after a step (the scripted coach)."""

    def reset(self) -> None: ...

    def observe(self, obs: Observation, info: dict, plan: Plan | None, step: int) -> UserInput | str | None: ...


@runtime_checkable
class LoopObserver(Protocol):
    """Subscribes to the loop's events (agent.runtime.events): the recorder, the console's snapshot,
    the latency probe. Called on the loop's thread, in order; an observer that raises stops the step."""

    def on_event(self, event: LoopEvent) -> None: ...
