"""What a person's (or the scripted coach's) input does to the loop: the inbox, commands, corrections,
/undo, /rules and /forget. A mixin of ControlLoop (agent.runtime.loop). Session memory keeps its rules
as an observer of the corrections said and withdrawn (agent.runtime.session_memory).

Input is drained at the start of a control step. A correction changes the planner's context at
once; an override is in force at once, a negation or rule re-plans (asynchronous: the correction is
emitted when its plan lands, so its record names the plan it led to). A fact changes what the planner
believes, never what it does: it joins the facts in force (PlanContext.facts, which a grounded planner
writes into its scene line) and re-plans as a rule does; it sets no subtask and forbids none.
"""

from __future__ import annotations

import queue
import time
from typing import TYPE_CHECKING
from dataclasses import replace

import numpy as np

from agent.inputs import Command, CommandName, UserInput
from agent.memory import SessionMemory
from agent.planner_thread import PlannerThread
from agent.runtime import events as ev
from agent.runtime.acting import Actor
from agent.runtime.session_memory import MemoryObserver
from agent.runtime.state import Episode, PlanChange, episode_over_reply
from policies.types import Correction, CorrectionKind, Observation, Plan, PlanContext

_REPLANS = (CorrectionKind.OVERRIDE, CorrectionKind.NEGATION, CorrectionKind.CONSTRAINT, CorrectionKind.FACT)


def _starts_episode(item: object) -> bool:
    """Input a finished episode still takes: the commands that start the next one."""
    return isinstance(item, Command) and item.name in (CommandName.RESET, CommandName.TASK)


class Corrections:
    memory: SessionMemory
    _rules: MemoryObserver
    compute_model_plan: bool
    suspect_window_steps: int
    _inbox: queue.SimpleQueue[tuple[float, UserInput]]
    _episode: Episode | None
    _obs: Observation | None
    _info: dict
    _context: PlanContext | None
    _plan: Plan | None
    _planner: PlannerThread | None
    _awaiting: str | None
    _pending_corrections: list[ev.CorrectionApplied]
    _last_model_plan: Plan | None
    _correction_counter: int
    _pending_reset: dict | None
    _paused: bool
    _stopped: bool
    _last_reply: str
    _actor: Actor

    if TYPE_CHECKING:  # provided by ControlLoop and the other mixin
        def _emit(self, event: ev.LoopEvent) -> None: ...

        def _context_changed(self) -> None: ...

        def _replan(self, reason, *, hold: bool = True, now: bool = False) -> None: ...

        def _set_plan(self, plan: Plan, reason, latency=None, asked=None, seen=None) -> None: ...

        def _ask_model(self) -> Plan | None: ...

        def _flush_pending_corrections(self) -> None: ...

    def _drain_inbox(self) -> None:
        # Stops at a /reset or /task: what was typed after it belongs to the next episode, so it
        # stays queued and is applied there (never recorded against the episode being ended).
        while self._pending_reset is None:
            try:
                submitted, item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if self._episode is not None and self._episode.over and not _starts_episode(item):
                # A finished episode takes no correction: nobody saw a step to attach it to, and a
                # recorded one would become training data about a robot that had stopped.
                self._last_reply = episode_over_reply(self._episode.success, self._episode.step)
            elif isinstance(item, Command):
                self._apply_command(item)
            elif isinstance(item, Correction):
                self._apply_correction(item, submitted)
            else:  # a classifier reply with nothing to do (empty line, unknown command, ...)
                self._last_reply = getattr(item, "reply", "") or str(item)

    def _discard_queued(self) -> None:
        discarded = 0
        while True:
            try:
                self._inbox.get_nowait()
            except queue.Empty:
                break
            discarded += 1
        if discarded:
            self._last_reply = f"not applied: {discarded} input(s) said about episode {self._episode.index} came after it ended"

    def _apply_command(self, cmd: Command) -> None:
        name = cmd.name
        self._last_reply = cmd.reply
        if name is CommandName.PAUSE:
            self._paused = True
        elif name is CommandName.RESUME:
            self._paused = False
            self._stopped = False
        elif name is CommandName.RESET:
            self._pending_reset = {}
        elif name is CommandName.TASK:
            self._pending_reset = {"task": cmd.argument}
        elif name is CommandName.UNDO:
            self._undo_last_correction()
        elif name is CommandName.RULES:
            self._last_reply = self.memory.listing()
        elif name is CommandName.FORGET:
            self._forget(int(cmd.argument) if cmd.argument.isdigit() else 0)
        elif name is CommandName.GOOD:
            self._apply_correction(Correction(kind=CorrectionKind.CONFIRM, text=cmd.argument or "good"), time.perf_counter())

    def _apply_correction(self, correction: Correction, submitted: float) -> None:
        ep = self._episode
        assert ep is not None and self._context is not None
        correction = replace(correction, step=ep.step, time=self._obs.time if self._obs else 0.0)
        correction_id = self._correction_counter
        self._correction_counter += 1
        replaced = self._plan
        model_plan = None
        kind = correction.kind
        if kind not in (CorrectionKind.CONFIRM, CorrectionKind.RESUME):
            ep.interventions += 1
        self._context.corrections.append(correction)
        self._emit(ev.CorrectionSaid(episode=ep.index, step=ep.step, correction_id=correction_id, correction=correction))
        if kind is CorrectionKind.FACT and correction.fact is not None:
            self._context.facts.append(correction)
        self._context_changed()
        ep.corrections.append(correction)
        deferred = False  # async: the event waits for the plan this correction asked for

        if kind is CorrectionKind.PAUSE:
            self._paused = True
        elif kind is CorrectionKind.STOP:
            self._stopped = True
            self._actor.stop()
        elif kind is CorrectionKind.RESUME:
            self._paused = self._stopped = False
        elif kind is CorrectionKind.NUDGE:
            from agent.coaching.nudge import nudge_to_action_offset

            grip_closed = self._actor.last_grip > 0
            self._actor.nudge(np.asarray(nudge_to_action_offset(correction, grip_closed=grip_closed), dtype=np.float32))
        elif kind is CorrectionKind.OVERRIDE:
            if self.compute_model_plan:
                # Asynchronous: the model's latest own plan (asking now would hold the override back
                # by a whole plan); synchronous: what it plans now, as before.
                model_plan = self._last_model_plan if self._planner is not None else self._ask_model()
            self._flush_pending_corrections()  # a rule or negation still waiting: its plan never comes
            self._awaiting = None  # the person's subtask is in force at once
            subtask = correction.subtask or correction.text
            self._set_plan(
                Plan(thought=f'The person said "{correction.text}", so I do that now.', subtask=subtask, source="human"),
                "correction",
            )
            self._paused = self._stopped = False
        elif kind in (CorrectionKind.NEGATION, CorrectionKind.CONSTRAINT, CorrectionKind.FACT):
            self._paused = self._stopped = False
            self._replan("correction")
            if self._planner is not None:
                deferred = True
            else:
                model_plan = self._plan

        ep.correction_ids.append(correction_id)
        suspect = getattr(correction, "suspect_from_step", None)  # the scripted coach knows
        if suspect is None and kind in (CorrectionKind.OVERRIDE, CorrectionKind.NEGATION, CorrectionKind.STOP):
            suspect = max(0, ep.step - self.suspect_window_steps)
        applied = ev.CorrectionApplied(
            episode=ep.index, step=ep.step, correction_id=correction_id, correction=correction, replaced_plan=replaced,
            model_plan=model_plan, resulting_plan=self._plan, suspect_from_step=suspect, replanned=kind in _REPLANS,
            submitted=submitted, wall_time=time.time())
        self._last_reply = f"{kind.value}: {correction.text}"
        if kind is CorrectionKind.FACT:  # the belief the planner will use, not the words
            self._last_reply = (f"belief: {correction.fact.phrase()} (planning from it)" if correction.fact is not None
                                else f"fact: {correction.text} (no object and place read: the planner's belief is unchanged)")
        if deferred:
            self._pending_corrections.append(applied)
            return
        self._emit(applied)
        self._note_plan_change(correction, replaced, withdrawn=False)

    def _note_plan_change(self, correction: Correction, before: Plan | None, *, withdrawn: bool) -> None:
        ep = self._episode
        assert ep is not None
        old, new = (before.subtask if before else None), (self._plan.subtask if self._plan else None)
        if old == new and not withdrawn:
            return  # nothing visible changed (a nudge, a rule the plan already kept)
        ep.plan_change = PlanChange(
            kind=correction.kind.value, text=correction.text, old=old, new=new, step=correction.step,
            sim_time=correction.time, reference_index=self._info.get("subtask_index"), withdrawn=withdrawn,
        )

    def _undo_last_correction(self) -> None:
        ep = self._episode
        assert ep is not None and self._context is not None
        if not ep.corrections:
            self._last_reply = "nothing to undo"
            return
        self._flush_pending_corrections()  # a correction is recorded before it is withdrawn
        withdrawn = ep.corrections.pop()
        correction_id = ep.correction_ids.pop()
        self._context.corrections.remove(withdrawn)
        if withdrawn in self._context.facts:
            self._context.facts.remove(withdrawn)
        self._context_changed()
        ep.withdrawn.append(withdrawn)
        self._emit(ev.CorrectionUndone(episode=ep.index, step=ep.step, correction_id=correction_id, wall_time=time.time()))
        before = self._plan
        if withdrawn.kind in _REPLANS:
            self._replan("correction")
        after = self._plan.subtask if self._plan else None
        self._last_reply = f"withdrew: [{withdrawn.kind.value}] {withdrawn.text} (said at step {withdrawn.step})" + (
            f"; plan now: {after}" if before is not None and after != before.subtask else "")
        self._note_plan_change(withdrawn, before, withdrawn=True)

    def _forget(self, number: int) -> None:
        """/forget N: remembered rule N stops applying from this step on (session memory tells the recorder)."""
        ep = self._episode
        assert ep is not None
        gone = self._rules.forget(number, ep.index, ep.step)
        if gone is None:
            self._last_reply = f"no rule {number} to forget; " + self.memory.listing()
            return
        self._context_changed()
        said_now = gone.correction in ep.corrections
        self._last_reply = f"forgot rule {number}: {gone.correction.text}" + (
            " (said this episode: /undo also withdraws it here)" if said_now else "")
