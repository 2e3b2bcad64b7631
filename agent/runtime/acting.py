"""The low level's side of a control step: the action chunk in progress, a nudge's steps, the grip held."""

from __future__ import annotations

from collections import deque

import numpy as np

from agent.runtime.protocols import LowLevel
from policies.types import Observation, Plan

NUDGE_STEPS = 4  # a nudge moves the end effector for this many control steps, then the chunk resumes
HOLD_ACTION = np.array([0.0, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)  # no motion; grip is set from last_grip


class Actor:
    def __init__(self, low: LowLevel, execute_steps: int | None = None) -> None:
        self.low = low
        self.execute_steps = execute_steps  # actions executed per chunk before asking again; None = whole chunk
        self.chunk: np.ndarray | None = None
        self.chunk_pos = 0
        self.nudges: deque[np.ndarray] = deque()
        # The bundled env has no "keep the grip" value (grip <= 0 opens the jaws), so holding still
        # and nudging repeat the last grip command; otherwise a pause or a nudge drops a held block.
        self.last_grip = -1.0
        self.problem: str | None = None  # why the low level held still, when it says so with a new chunk
        self.nudged = False  # the action just taken was a nudge's, a person's, not the low level's

    def reset(self) -> None:
        self.chunk = None
        self.nudges.clear()
        self.last_grip = -1.0

    def stop(self) -> None:
        """Drop the chunk and any nudge: the next action comes from a fresh chunk."""
        self.chunk = None
        self.nudges.clear()

    def nudge(self, offset: np.ndarray) -> None:
        self.nudges.extend([offset] * NUDGE_STEPS)
        self.chunk = None  # after the nudge, re-plan the motion from where the arm now is

    @property
    def fresh_chunk(self) -> bool:
        """The action just taken is the first of a new chunk."""
        return self.chunk is not None and self.chunk_pos == 1

    def next_action(self, obs: Observation, plan: Plan | None, holding: bool) -> np.ndarray:
        self.problem = None
        self.nudged = False
        if holding or (plan is not None and plan.is_done and not self.nudges):
            action = HOLD_ACTION.copy()  # paused, stopped, or nothing left to do
            action[4] = self.last_grip
            return action
        if self.nudges:
            self.nudged = True
            return self.nudges.popleft()
        limit = self.execute_steps
        if self.chunk is None or self.chunk_pos >= len(self.chunk) or (limit and self.chunk_pos >= limit):
            assert plan is not None
            chunk = np.asarray(self.low.act(obs, plan.subtask), dtype=np.float32)
            if chunk.ndim != 2 or len(chunk) == 0:
                raise ValueError(f"low level returned an action chunk of shape {chunk.shape}; expected [H, A] with H >= 1")
            self.chunk, self.chunk_pos = chunk, 0
            self.problem = getattr(self.low, "last_error", None) or None  # a low level that holds still says why
        action = self.chunk[self.chunk_pos]
        self.chunk_pos += 1
        return action

    def took(self, action: np.ndarray) -> None:
        if len(action) > 4:
            self.last_grip = float(action[4])
