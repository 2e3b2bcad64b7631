"""Observers the loop always has: the console's snapshot and the correction latency probe."""

from __future__ import annotations

import threading

from agent.runtime import events as ev
from agent.runtime.state import LoopSnapshot


class SnapshotBox:
    """Holds the latest LoopSnapshot for readers on other threads (the console's view, tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: LoopSnapshot | None = None

    def on_event(self, event: ev.LoopEvent) -> None:
        if isinstance(event, ev.SnapshotPublished):
            with self._lock:
                self._snapshot = event.snapshot

    def get(self) -> LoopSnapshot | None:
        with self._lock:
            return self._snapshot


class LatencyProbe:
    """Seconds from a correction's submission to the first step acted on the plan it asked for.

    Armed by a correction that re-plans once its plan is known; read at the next step that acts
    (not held, not awaiting a plan): it counts if that step's subtask is the correction's, and
    disarms either way."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self._armed: tuple[float, str] | None = None

    def on_event(self, event: ev.LoopEvent) -> None:
        if isinstance(event, ev.CorrectionApplied):
            if event.replanned and event.resulting_plan is not None:
                self._armed = (event.submitted, event.resulting_plan.subtask)
        elif isinstance(event, ev.StepTaken):
            if self._armed is not None and not event.paused and not event.awaiting_plan and event.subtask is not None:
                submitted, subtask = self._armed
                if event.subtask == subtask:
                    self.latencies.append(event.acted_at - submitted)
                self._armed = None

