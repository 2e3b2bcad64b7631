"""The loop's recorder interface kept in memory, for tests that read back what the loop recorded."""

from __future__ import annotations


class MemoryRecorder:
    def __init__(self):
        self.events, self.steps = [], []

    def record(self, event):
        self.events.append(event)

    def record_step(self, step, images):
        self.steps.append(step)

    def corrections(self) -> list:
        return [e for e in self.events if type(e).__name__ == "CorrectionRecord"]
