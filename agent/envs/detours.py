"""Planner wrappers that make low-level training data cover more than the task suite asks for.

No base task ends in "put it down on the table", so a planner that only solves tasks never shows the
low level that primitive. `PutDownDetours` wraps the oracle: each time a block has just been picked,
with probability `share` the held block is put down on the table first; the oracle then picks it up
again, so the data also holds re-picks from wherever a put-down left the block.
"""

from __future__ import annotations

import numpy as np

from policies.grammar import put_down
from policies.types import Observation, Plan, PlanContext


class PutDownDetours:
    """HighLevelPolicy: the wrapped planner, with occasional put-down detours while a block is held."""

    def __init__(self, planner, share: float, seed: int = 0):
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"put-down share must be in [0, 1], got {share}")
        self.planner = planner
        self.share = share
        # Seeded once, not on every reset: the loop resets its planner each episode, and a re-seeded
        # generator would make the same choice in every episode.
        self._rng = np.random.default_rng(seed)
        self.reset()

    def reset(self) -> None:
        self.planner.reset()
        self._stint_block: str | None = None  # the block held since the last roll of the dice
        self._detour = False

    def plan(self, obs: Observation, context: PlanContext) -> Plan:
        held = obs.privileged.held if obs.privileged is not None else None
        if held != self._stint_block:  # a new block in hand (or none): roll once per holding stint
            self._stint_block = held
            self._detour = held is not None and self._rng.random() < self.share
        if self._detour:
            return Plan(f"Set the {held} down on the table for now, then pick it up again.", put_down().text,
                        source="oracle")
        return self.planner.plan(obs, context)
