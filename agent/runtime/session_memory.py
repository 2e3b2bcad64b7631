"""Session memory's bookkeeping, as one of the loop's observers (agent.memory decides what is kept).

A correction said (CorrectionSaid) is offered to the SessionMemory; a rule it keeps joins `in_force`,
the list every plan context of the session reads as its memory (PlanContext.memory), so the plan the
rule asks for already reads it. A kept rule withdrawn with /undo (CorrectionUndone) is forgotten, as
is rule N on /forget N (the loop's command, which calls `forget`).

What it keeps and drops it tells the other observers (RuleKept, RuleDropped: the recorder's
RuleRemembered and RuleForgotten). It stands first among the loop's observers, so what it tells
reaches the recorder before the event it answers (a rule before the correction that said it, a rule
forgotten before the withdrawal that dropped it).
"""

from __future__ import annotations

import time
from typing import Callable

from agent.memory import Remembered, SessionMemory
from agent.runtime import events as ev
from policies.types import Correction


class MemoryObserver:
    def __init__(self, memory: SessionMemory, emit: Callable[[ev.LoopEvent], None]) -> None:
        self.memory = memory
        self.in_force: list[Correction] = memory.corrections()  # the rules every plan context reads
        self._emit = emit
        self._kept: dict[int, Correction] = {}  # correction id -> the rule it became

    def on_event(self, event: ev.LoopEvent) -> None:
        if isinstance(event, ev.CorrectionSaid):
            kept = self.memory.offer(event.correction, event.episode)
            if kept is None:
                return
            self.in_force.append(event.correction)
            self._kept[event.correction_id] = event.correction
            self._emit(ev.RuleKept(episode=event.episode, step=event.step, rule_id=kept.rule_id,
                                   text=event.correction.text, how=kept.how, correction_id=event.correction_id,
                                   wall_time=time.time()))
        elif isinstance(event, ev.CorrectionUndone) and event.correction_id in self._kept:
            number = self.memory.number_of(self._kept.pop(event.correction_id))
            if number is not None:  # a rule withdrawn is not kept for later episodes either
                self.forget(number, event.episode, event.step)

    def forget(self, number: int, episode: int, step: int) -> Remembered | None:
        """Drop remembered rule `number` (as /rules lists them) from this step on; None: no such rule."""
        gone = self.memory.forget(number)
        if gone is None:
            return None
        self.in_force.remove(gone.correction)
        self._emit(ev.RuleDropped(episode=episode, step=step, rule_id=gone.rule_id, wall_time=time.time()))
        return gone
