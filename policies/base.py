"""The two policy protocols. Any backend (oracle, expert, pi05, hf, openpi) implements one or both."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from policies.types import ActionChunk, Observation, Plan, PlanContext


@runtime_checkable
class HighLevelPolicy(Protocol):
    """Looks at the cameras and writes a chain of thought ending in the next subtask."""

    def reset(self) -> None: ...

    def plan(self, obs: Observation, context: PlanContext) -> Plan: ...


@runtime_checkable
class LowLevelPolicy(Protocol):
    """Turns a subtask into an action chunk float32[H, A]."""

    def reset(self) -> None: ...

    def act(self, obs: Observation, subtask: str) -> ActionChunk: ...
