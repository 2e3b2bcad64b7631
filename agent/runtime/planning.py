"""When and how the control loop asks the high level for a plan, and how a plan comes into force.

- synchronous (the default): each plan is computed inside the control step that asks for it. Which
  step a plan lands at depends only on the seed, so headless runs, the oracle, datagen and tests
  are deterministic; and an unpaced headless run has no wall-clock period to hide a plan in anyway.
- asynchronous (`async_planning=True`, the console): plans are computed on their own thread
  (agent.planner_thread) while the low level keeps acting on the subtask in force, so a plan never
  stalls a paced robot. Every change to what the planner reads (a correction, an /undo, a finished
  subtask, a new episode) bumps a generation counter; a plan asked under an older generation is
  discarded when it lands, so a plan asked before a correction that came after it is never applied.
  Where no subtask is in force (the start, a finished subtask, a negation or rule that may forbid
  the current one) the robot holds still until the asked plan lands; an override applies at once.
A mixin of ControlLoop (agent.runtime.loop), which owns the state named below.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING
from dataclasses import replace

from agent.planner_thread import PlannerThread, PlanRequest
from agent.runtime import events as ev
from agent.runtime.acting import Actor
from agent.runtime.events import ReplanReason
from agent.runtime.protocols import Env, HighLevel
from agent.runtime.state import Episode, expire_facts
from policies.planning import build_planner_context, record_completion
from policies.types import Observation, Plan, PlanContext

REPLAN_PERIOD_S = 2.0  # seconds of sim time a model's plan stands before the loop asks again (the timer)


class Planning:
    env: Env
    high: HighLevel
    replan_period_s: float
    stale_plans: int
    _episode: Episode | None
    _obs: Observation | None
    _info: dict
    _context: PlanContext | None
    _plan: Plan | None
    _plan_id: int | None
    _plan_counter: int
    _plan_sim_time: float
    _planner: PlannerThread | None
    _generation: int
    _awaiting: ReplanReason | None
    _pending_corrections: list[ev.CorrectionApplied]
    _last_model_plan: Plan | None
    _actor: Actor

    if TYPE_CHECKING:  # provided by ControlLoop and the other mixin
        def _emit(self, event: ev.LoopEvent) -> None: ...

        def _note_plan_change(self, correction, before: Plan | None, *, withdrawn: bool) -> None: ...

    def _ask_model(self) -> Plan | None:
        assert self._obs is not None and self._context is not None
        try:
            return self.high.plan(self._obs, self._context)
        except Exception:  # the log entry is optional; a failing model must not block a correction
            return None

    def _maybe_replan(self) -> None:
        if self._awaiting is not None:
            return  # asynchronous: a plan asked under the current context is on its way
        if self._plan is None:
            self._replan("timer")
        elif self._current_subtask_done():
            assert self._episode is not None and self._context is not None
            record_completion(self._context.completed_subtasks, self._plan.subtask)
            expire_facts(self._context.facts, self._plan.subtask)
            self._emit(ev.SubtaskDone(self._episode.index, self._episode.step, self._plan.subtask))
            self._context_changed()
            self._replan("subtask_done")
        elif self._obs.time - self._plan_sim_time >= self.replan_period_s and self._plan.source != "human":
            # A human's override stands until it is done; the model's own plans are revisited on a timer,
            # meanwhile (asynchronous) the robot keeps acting on the subtask in force.
            if self._planner is None or not self._planner.busy:
                self._replan("timer", hold=False)

    def _current_subtask_done(self) -> bool:
        done_fn = getattr(self.env, "subtask_done", None)  # SubtaskJudge.subtask_done (a getattr: it runs every step)
        if done_fn is None or self._plan is None:
            return False
        return bool(done_fn(self._plan.subtask, self._info))

    def _replan(self, reason: ReplanReason, *, hold: bool = True, now: bool = False) -> None:
        """Plan now (synchronous, or `now`), or ask the planner thread (asynchronous; with `hold` the
        robot holds still until the plan lands, otherwise it keeps acting on the subtask in force)."""
        assert self._obs is not None and self._context is not None and self._episode is not None
        self._emit(ev.PlanAsked(self._episode.index, self._episode.step, reason, self._generation))
        if self._planner is not None and not now:
            self._planner.ask(self._generation, reason, self._obs, self._context, self._episode.step)
            if hold or self._plan is None:
                self._awaiting = reason
            return
        asked_wall, started = time.time(), time.perf_counter()
        plan = self.high.plan(self._obs, self._context)
        self._set_plan(plan, reason, latency=time.perf_counter() - started, asked=(self._episode.step, asked_wall))

    def _context_changed(self) -> None:
        """What the planner reads changed: a plan asked before now is stale when it lands."""
        self._generation += 1

    def _collect_plan(self) -> None:
        """Asynchronous: apply the plan that landed since the last step, if it is still current."""
        if self._planner is None:
            return
        result = self._planner.poll()
        if result is None:
            return
        request: PlanRequest = result.request
        if request.generation != self._generation:
            self.stale_plans += 1  # asked before a correction (or a finished subtask) that came after it
            if self._awaiting is not None and not self._planner.busy:
                self._replan(self._awaiting)  # the one awaited was stale: ask again with what is known now
            return
        if result.error is not None:
            self._awaiting = None
            raise result.error  # as a synchronous plan's error would: the caller of step() reports it
        awaited = self._awaiting
        self._awaiting = None
        self._set_plan(result.plan, request.reason, latency=result.latency_s,
                       asked=(request.asked_step, request.asked_wall), seen=request.context)
        if awaited == "correction" or self._pending_corrections:
            self._flush_pending_corrections()

    def _flush_pending_corrections(self) -> None:
        """Emit the corrections that waited for their plan, with the plan now in force."""
        pending, self._pending_corrections = self._pending_corrections, []
        for applied in pending:
            plan = self._plan if self._awaiting is None else None  # None: it never came (undo, episode end)
            self._emit(replace(applied, model_plan=plan, resulting_plan=plan))
            self._note_plan_change(applied.correction, applied.replaced_plan, withdrawn=False)

    def _set_plan(self, plan: Plan, reason: ReplanReason, latency: float | None = None,
                  asked: tuple[int, float] | None = None, seen: PlanContext | None = None) -> None:
        """Apply `plan`. `asked`: (control step, wall time) when it was asked, if it was; `seen`: the
        context it was asked with, where that is not the loop's context now (asynchronous)."""
        assert self._episode is not None and self._context is not None and self._obs is not None
        if plan.source != "human":
            self._last_model_plan = plan
        changed = self._plan is None or plan.subtask != self._plan.subtask
        read = build_planner_context(seen or self._context)  # what the high level read for this plan, before it lands
        self._plan = plan
        self._plan_sim_time = self._obs.time
        self._context.plan_history.append(plan)
        if changed:
            self._actor.chunk = None  # a new subtask starts a new chunk at once
        self._plan_id = self._plan_counter
        self._plan_counter += 1
        self._emit(ev.PlanLanded(
            episode=self._episode.index, step=self._episode.step, plan_id=self._plan_id, plan=plan, reason=reason,
            latency_s=latency, asked_step=None if asked is None else asked[0],
            asked_wall_time=None if asked is None else asked[1], context=read, wall_time=time.time()))
