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


@runtime_checkable
class SceneQuestionAnswerer(Protocol):
    """A high level that answers a person's question about the scene ("what do you see?", "why
    the blue one?") from the current observation. The console's `/ask` (and a typed question) goes
    here; the answer changes no plan and is never recorded as a correction."""

    def answer(self, obs: Observation, question: str) -> str: ...
