"""The hierarchical control loop.

Every control step the low level's current action chunk supplies one action. The high level
re-plans (a) when there is no plan, (b) on a timer, (c) when the current subtask finishes and
(d) at once on a correction. Input from a person or the scripted coach arrives through
`submit()`, which only enqueues: the loop never waits for anyone, it drains the queue at the
start of the next control step.

The loop has one owner thread (env, low level and recorder); UIs read `snapshot()` from other
threads, which returns an immutable copy taken under a lock.

The high level runs in one of two modes:
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

Corrections last the episode, except rules kept for the session (agent.memory: said for good, /rule,
or said in a second episode): the loop's `memory` puts them in every later episode's PlanContext
until /forget N, and records RuleRemembered / RuleForgotten.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Literal

import numpy as np

from agent.inputs import Command, CommandName, UserInput
from agent.memory import SessionMemory
from agent.planner_thread import PlannerThread, PlanRequest
from policies.base import HighLevelPolicy, LowLevelPolicy
from policies.planning import build_planner_context
from policies.types import Correction, CorrectionKind, Observation, Plan, PlanContext
from sessions.schema import (
    ContextData,
    CorrectionRecord,
    CorrectionWithdrawn,
    EpisodeEnd,
    EpisodeStart,
    PlanData,
    PlanEmitted,
    QuestionAnswered,
    RuleForgotten,
    RuleRemembered,
    Step,
)

ReplanReason = Literal["start", "timer", "subtask_done", "correction", "reset", "task_change"]

CONTROL_HZ = 10.0
NUDGE_STEPS = 4  # a nudge moves the end effector for this many control steps, then the chunk resumes
HOLD_ACTION = np.array([0.0, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)  # no motion; grip is set from _last_grip


def record_completion(completed: list[str], subtask: str) -> None:
    """Note a finished subtask: each appears once, the most recent completion last (a high level whose
    context names the subtask done last reads completed[-1])."""
    if subtask in completed:
        completed.remove(subtask)
    completed.append(subtask)


@dataclass(frozen=True)
class EpisodeResult:
    success: bool
    subtasks_completed: int
    subtasks_total: int
    steps: int
    interventions: int
    wall_time: float
    family: str | None
    reason: str


@dataclass(frozen=True)
class PlanChange:
    """A correction (or its withdrawal) that changed the subtask in force, for the console to show
    old -> new for a few seconds and where the robot was when it was said."""

    kind: str  # the CorrectionKind value
    text: str
    old: str | None  # subtask in force before
    new: str | None  # subtask in force after
    step: int  # control step at which the correction was said
    sim_time: float
    reference_index: int | None  # the reference subtask being worked on when it was said
    withdrawn: bool = False  # True: this is /undo taking the correction back
    at: float = field(default_factory=time.monotonic)  # when it happened (wall clock, for fading out)


@dataclass(frozen=True)
class LoopSnapshot:
    """A consistent, read-only view of the loop for UIs and tests."""

    episode: int
    step: int
    sim_time: float
    task: str
    family: str | None
    plan: Plan | None
    subtasks: tuple[str, ...]
    subtasks_done: tuple[bool, ...]
    corrections: tuple[Correction, ...]
    paused: bool
    stopped: bool
    front_image: np.ndarray | None
    last_reply: str
    episode_over: bool
    success: bool
    end_reason: str = ""
    corrections_given: int = 0  # corrections in force this episode (withdrawn ones not counted)
    plan_change: PlanChange | None = None  # the latest change a correction made to the plan
    withdrawn: tuple[Correction, ...] = ()  # corrections withdrawn with /undo this episode, oldest first
    memory: tuple[str, ...] = ()  # rules remembered for the session, in /rules order


@dataclass
class _Episode:
    index: int
    task: str
    family: str | None
    start_wall: float
    step: int = 0
    interventions: int = 0
    over: bool = False
    success: bool = False
    end_reason: str = ""
    corrections: list[Correction] = field(default_factory=list)
    correction_ids: list[int] = field(default_factory=list)
    withdrawn: list[Correction] = field(default_factory=list)
    plan_change: PlanChange | None = None


def episode_over_reply(success: bool, step: int, what_next: str | None = None) -> str:
    """What a correction typed after the episode ended is answered with (nothing is recorded);
    `what_next` replaces the default hint (the console knows when the next episode starts)."""
    how = "succeeded" if success else "ended"
    return f"the episode {how} at step {step}: nothing recorded; " + (
        what_next or "/reset starts a new episode, /task TEXT a new task")


def _starts_episode(item: Any) -> bool:
    """Input a finished episode still takes: the commands that start the next one."""
    return isinstance(item, Command) and item.name in (CommandName.RESET, CommandName.TASK)


def plan_data(plan: Plan | None) -> PlanData | None:
    return None if plan is None else PlanData(thought=plan.thought, subtask=plan.subtask, source=plan.source)


class ControlLoop:
    def __init__(
        self,
        env: Any,
        high: HighLevelPolicy,
        low: LowLevelPolicy,
        *,
        recorder: Any = None,
        replan_period_s: float = 2.0,
        execute_steps: int | None = None,
        compute_model_plan: bool = True,
        coach: Any = None,
        suspect_window_steps: int = 20,
        async_planning: bool = False,
        remember: bool = True,
    ) -> None:
        self.env = env
        self.high = high
        self.low = low
        self.recorder = recorder
        self.replan_period_s = replan_period_s
        self.execute_steps = execute_steps  # actions executed per chunk before asking again; None = whole chunk
        self.compute_model_plan = compute_model_plan  # ask the high level what it would have done, for the log
        self.coach = coach
        self.suspect_window_steps = suspect_window_steps

        self._inbox: queue.SimpleQueue[UserInput] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._snapshot: LoopSnapshot | None = None
        self._episode: _Episode | None = None
        self._episode_counter = -1
        self._plan_counter = 0
        self._correction_counter = 0
        self._obs: Observation | None = None
        self._info: dict = {}
        self._plan: Plan | None = None
        self._plan_id: int | None = None
        self._plan_sim_time = 0.0
        self._context: PlanContext | None = None
        self._chunk: np.ndarray | None = None
        self._chunk_pos = 0
        self._nudge: deque[np.ndarray] = deque()
        # The bundled env has no "keep the grip" value (grip <= 0 opens the jaws), so holding still
        # and nudging repeat the last grip command; otherwise a pause or a nudge drops a held block.
        self._last_grip = -1.0
        self._paused = False
        self._stopped = False
        self._last_reply = ""
        self._low_level_lost = False  # a remote low level is unreachable; steps are held and marked paused
        self._pending_reset: dict | None = None
        self._last_seed: int | None = None
        # Wall-clock time at which each queued correction was submitted, for latency measurement.
        self.correction_latencies: list[float] = []
        self._latency_probe: tuple[float, str] | None = None
        # Asynchronous planning (see the module docstring); None: plans are computed in the step.
        self._planner: PlannerThread | None = PlannerThread(high) if async_planning else None
        self._generation = 0  # bumped whenever what the planner reads changes
        self._awaiting: ReplanReason | None = None  # holding still for an asked plan (async only)
        self._pending_corrections: list[tuple[CorrectionRecord, Correction, Plan | None, float]] = []
        self._last_model_plan: Plan | None = None  # the high level's latest own plan this episode
        self.stale_plans = 0  # plans discarded on landing because the context changed after they were asked
        # Session memory (agent.memory): rules kept across episodes; `remember=False` keeps none (a baseline).
        self.memory = SessionMemory(enabled=remember)

    @property
    def async_planning(self) -> bool:
        return self._planner is not None

    # ------------------------------------------------------------------ input (any thread)

    def submit(self, item: UserInput | str) -> None:
        """Queue a correction or command; it takes effect at the next control step."""
        if isinstance(item, str):
            from agent.coaching.classify import classify

            item = classify(item)
        self._inbox.put((time.perf_counter(), item))

    # ------------------------------------------------------------------ episode control

    def reset(self, seed: int | None = None, options: dict | None = None, reason: ReplanReason = "start",
              *, keep_queued: bool = False) -> Observation:
        """Start a new episode. Input still queued for the old one is discarded (it was said about
        that episode), except with `keep_queued` (a /reset or /task: what follows it was typed for
        the new episode)."""
        if self._episode is not None and not keep_queued:
            self._discard_queued()
        if self._episode is not None and not self._episode.over:
            self._end_episode("reset" if reason == "reset" else "task_change" if reason == "task_change" else "stopped")
        raw_obs, info = self.env.reset(seed=seed, options=options)
        self._last_seed = seed
        self._episode_counter += 1
        self._info = info
        self._obs = self.env.observation(raw_obs, info)
        self._episode = _Episode(
            index=self._episode_counter, task=self._obs.task, family=info.get("family"), start_wall=time.time()
        )
        self._context = PlanContext(task=self._obs.task, memory=self.memory.corrections())
        self._context_changed()
        self._awaiting = None
        self._pending_corrections.clear()
        self._last_model_plan = None
        self._plan = None
        self._plan_id = None
        self._chunk = None
        self._nudge.clear()
        self._last_grip = -1.0
        self._paused = False
        self._stopped = False
        self.high.reset()
        self.low.reset()
        if self.coach is not None:
            self.coach.reset()
        self._record(
            EpisodeStart(
                episode=self._episode.index,
                task=self._obs.task,
                family=info.get("family"),
                seed=seed,
                subtasks=list(info.get("subtasks", [])),
                wall_time=time.time(),
            )
        )
        # The first plan of an episode is computed here in both modes: the robot has not moved yet,
        # and the console shows it on the first frame while it waits for the person to start.
        self._replan(reason, now=True)
        self._publish()
        return self._obs

    def run_episode(self, seed: int | None = None, options: dict | None = None, max_steps: int | None = None) -> EpisodeResult:
        """Run one episode to its end (success, env truncation, max_steps, or a stop)."""
        self.reset(seed=seed, options=options)
        episode = self._episode
        assert episode is not None
        while not episode.over:
            if max_steps is not None and episode.step >= max_steps:
                self._end_episode("timeout")
                break
            self.step()
        return self.result()

    def result(self) -> EpisodeResult:
        ep = self._episode
        if ep is None:
            raise RuntimeError("no episode has been started")
        done = list(self._info.get("subtasks_done", []))
        return EpisodeResult(
            success=ep.success,
            subtasks_completed=int(sum(done)),
            subtasks_total=len(done),
            steps=ep.step,
            interventions=ep.interventions,
            wall_time=time.time() - ep.start_wall,
            family=ep.family,
            reason=ep.end_reason,
        )

    # ------------------------------------------------------------------ one control step

    def step(self) -> None:
        """Advance one control step: apply queued input, (re)plan if due, act, record."""
        if self._episode is None:
            self.reset()
        self._drain_inbox()
        if self._pending_reset is not None:
            options, self._pending_reset = self._pending_reset, None
            if "task" in options:
                self.reset(options=options, reason="task_change", keep_queued=True)
            else:
                # /reset: the same task family in a fresh scene (the next seed), so a person can
                # coach the same kind of task again without the scene repeating exactly.
                family = self._episode.family if self._episode else None
                seed = None if self._last_seed is None else self._last_seed + 1
                self.reset(seed=seed, options={"family": family} if family else None, reason="reset", keep_queued=True)
            return
        ep = self._episode
        assert ep is not None and self._obs is not None
        if ep.over:
            self._publish()  # the reply to anything typed after the end
            return

        self._collect_plan()
        holding = self._paused or self._stopped
        if not holding:
            self._maybe_replan()
        try:
            action = self._next_action(holding or self._awaiting is not None)
            if self._low_level_lost and self._chunk is not None and self._chunk_pos == 1:  # a fresh chunk came
                self._low_level_lost, self._last_reply = False, "low level: reconnected, resuming"
        except ConnectionError as err:  # a remote low level (openpi:) lost its server: hold as if paused
            self._low_level_lost, self._last_reply, self._chunk = True, f"low level: {err}", None
            holding = True
            action = self._next_action(holding)
        if self._latency_probe is not None and not holding and self._awaiting is None and self._plan is not None:
            submitted, subtask = self._latency_probe
            if self._plan.subtask == subtask:
                self.correction_latencies.append(time.perf_counter() - submitted)
            self._latency_probe = None

        prev_obs = self._obs
        if len(action) > 4:
            self._last_grip = float(action[4])
        raw_obs, _reward, terminated, truncated, info = self.env.step(action)
        self._info = info
        self._obs = self.env.observation(raw_obs, info)
        self._record_step(prev_obs, action, holding)
        ep.step += 1

        if self.coach is not None:
            said = self.coach.observe(self._obs, info, self._plan, ep.step)
            if said is not None:
                self.submit(said)

        if info.get("task_success"):
            ep.success = True
            self._end_episode("success")
        elif terminated or truncated:
            self._end_episode("timeout")
        self._publish()

    # ------------------------------------------------------------------ internals: input

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
        replaced = self._plan
        model_plan = None
        kind = correction.kind
        if kind not in (CorrectionKind.CONFIRM, CorrectionKind.RESUME):
            ep.interventions += 1
        self._context.corrections.append(correction)
        if kind is CorrectionKind.CONSTRAINT:
            self._remember(correction, correction_id=self._correction_counter)
        self._context_changed()
        ep.corrections.append(correction)
        deferred = False  # async: the record waits for the plan this correction asked for

        if kind is CorrectionKind.PAUSE:
            self._paused = True
        elif kind is CorrectionKind.STOP:
            self._stopped = True
            self._chunk = None
            self._nudge.clear()
        elif kind is CorrectionKind.RESUME:
            self._paused = self._stopped = False
        elif kind is CorrectionKind.NUDGE:
            from agent.coaching.nudge import nudge_to_action_offset

            offset = np.asarray(nudge_to_action_offset(correction, grip_closed=self._last_grip > 0), dtype=np.float32)
            self._nudge.extend([offset] * NUDGE_STEPS)
            self._chunk = None  # after the nudge, re-plan the motion from where the arm now is
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
            self._latency_probe = (submitted, subtask)
            self._paused = self._stopped = False
        elif kind in (CorrectionKind.NEGATION, CorrectionKind.CONSTRAINT):
            self._paused = self._stopped = False
            self._replan("correction")
            if self._planner is not None:
                deferred = True
            else:
                model_plan = self._plan
                if self._plan is not None:
                    self._latency_probe = (submitted, self._plan.subtask)

        correction_id = self._correction_counter
        self._correction_counter += 1
        ep.correction_ids.append(correction_id)
        record = (
            CorrectionRecord(
                episode=ep.index,
                step=ep.step,
                correction_id=correction_id,
                kind=kind,
                text=correction.text,
                speaker=getattr(correction, "speaker", None) or "human",
                replaced_plan=plan_data(replaced),
                model_plan=plan_data(model_plan),
                resulting_plan=plan_data(self._plan),
                suspect_from_step=getattr(correction, "suspect_from_step", None)  # the scripted coach knows
                if getattr(correction, "suspect_from_step", None) is not None
                else max(0, ep.step - self.suspect_window_steps)
                if kind in (CorrectionKind.OVERRIDE, CorrectionKind.NEGATION, CorrectionKind.STOP)
                else None,
                mistake=getattr(correction, "mistake", None),
                wall_time=time.time(),
            )
        )
        self._last_reply = f"{kind.value}: {correction.text}"
        if deferred:
            self._pending_corrections.append((record, correction, replaced, submitted))
            return
        self._record(record)
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
        number = self.memory.number_of(withdrawn)
        if number is not None:  # a rule withdrawn is not kept for later episodes either
            self._forget(number, reply=False)
        self._context_changed()
        ep.withdrawn.append(withdrawn)
        self._record(CorrectionWithdrawn(episode=ep.index, step=ep.step, correction_id=correction_id, wall_time=time.time()))
        before = self._plan
        if withdrawn.kind in (CorrectionKind.OVERRIDE, CorrectionKind.NEGATION, CorrectionKind.CONSTRAINT):
            self._replan("correction")
        after = self._plan.subtask if self._plan else None
        self._last_reply = f"withdrew: [{withdrawn.kind.value}] {withdrawn.text} (said at step {withdrawn.step})" + (
            f"; plan now: {after}" if before is not None and after != before.subtask else "")
        self._note_plan_change(withdrawn, before, withdrawn=True)

    # ------------------------------------------------------------------ internals: session memory

    def _remember(self, correction: Correction, correction_id: int) -> None:
        """Keep a constraint for the rest of the session if it is said for good, or said again."""
        ep = self._episode
        assert ep is not None and self._context is not None
        kept = self.memory.offer(correction, ep.index)
        if kept is None:
            return
        self._context.memory.append(correction)
        self._record(RuleRemembered(episode=ep.index, step=ep.step, rule_id=kept.rule_id, text=correction.text,
                                    how=kept.how, correction_id=correction_id, wall_time=time.time()))

    def _forget(self, number: int, *, reply: bool = True) -> None:
        """/forget N: remembered rule N stops applying from this step on (recorded, so the session says when)."""
        ep = self._episode
        assert ep is not None and self._context is not None
        gone = self.memory.forget(number)
        if gone is None:
            if reply:
                self._last_reply = f"no rule {number} to forget; " + self.memory.listing()
            return
        if gone.correction in self._context.memory:
            self._context.memory.remove(gone.correction)
        self._context_changed()
        self._record(RuleForgotten(episode=ep.index, step=ep.step, rule_id=gone.rule_id, wall_time=time.time()))
        if reply:
            said_now = gone.correction in ep.corrections
            self._last_reply = f"forgot rule {number}: {gone.correction.text}" + (
                " (said this episode: /undo also withdraws it here)" if said_now else "")

    # ------------------------------------------------------------------ internals: planning

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
            record_completion(self._context.completed_subtasks, self._plan.subtask)
            self._context_changed()
            self._replan("subtask_done")
        elif self._obs.time - self._plan_sim_time >= self.replan_period_s and self._plan.source != "human":
            # A human's override stands until it is done; the model's own plans are revisited on a timer,
            # meanwhile (asynchronous) the robot keeps acting on the subtask in force.
            if self._planner is None or not self._planner.busy:
                self._replan("timer", hold=False)

    def _current_subtask_done(self) -> bool:
        done_fn: Callable[[str, dict], bool | None] | None = getattr(self.env, "subtask_done", None)
        if done_fn is None or self._plan is None:
            return False
        return bool(done_fn(self._plan.subtask, self._info))

    def _replan(self, reason: ReplanReason, *, hold: bool = True, now: bool = False) -> None:
        """Plan now (synchronous, or `now`), or ask the planner thread (asynchronous; with `hold` the
        robot holds still until the plan lands, otherwise it keeps acting on the subtask in force)."""
        assert self._obs is not None and self._context is not None and self._episode is not None
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
        """Record the corrections that waited for their plan, with the plan now in force."""
        pending, self._pending_corrections = self._pending_corrections, []
        for record, correction, replaced, submitted in pending:
            plan = self._plan if self._awaiting is None else None  # None: it never came (undo, episode end)
            self._record(record.model_copy(update={"model_plan": plan_data(plan), "resulting_plan": plan_data(plan)}))
            if plan is not None:
                self._latency_probe = (submitted, plan.subtask)
            self._note_plan_change(correction, replaced, withdrawn=False)

    def _set_plan(self, plan: Plan, reason: ReplanReason, latency: float | None = None,
                  asked: tuple[int, float] | None = None, seen: PlanContext | None = None) -> None:
        """Apply `plan`. `asked`: (control step, wall time) when it was asked, if it was; `seen`: the
        context it was asked with, where that is not the loop's context now (asynchronous)."""
        assert self._episode is not None and self._context is not None and self._obs is not None
        if plan.source != "human":
            self._last_model_plan = plan
        changed = self._plan is None or plan.subtask != self._plan.subtask
        seen = build_planner_context(seen or self._context)  # what the high level read for this plan, before it lands
        self._plan = plan
        self._plan_sim_time = self._obs.time
        self._context.plan_history.append(plan)
        if changed:
            self._chunk = None  # a new subtask starts a new chunk at once
        self._plan_id = self._plan_counter
        self._plan_counter += 1
        self._record(
            PlanEmitted(
                episode=self._episode.index,
                step=self._episode.step,
                plan_id=self._plan_id,
                plan=plan_data(plan),
                reason=reason,
                latency_s=latency,
                wall_time=time.time(),
                asked_step=None if asked is None else asked[0],
                asked_wall_time=None if asked is None else asked[1],
                context=ContextData.model_validate(seen.to_dict()),
            )
        )

    # ------------------------------------------------------------------ internals: acting

    def _next_action(self, holding: bool) -> np.ndarray:
        if holding or (self._plan is not None and self._plan.is_done and not self._nudge):
            action = HOLD_ACTION.copy()  # paused, stopped, or nothing left to do
            action[4] = self._last_grip
            return action
        if self._nudge:
            return self._nudge.popleft()
        limit = self.execute_steps
        if self._chunk is None or self._chunk_pos >= len(self._chunk) or (limit and self._chunk_pos >= limit):
            assert self._plan is not None and self._obs is not None
            chunk = np.asarray(self.low.act(self._obs, self._plan.subtask), dtype=np.float32)
            if chunk.ndim != 2 or len(chunk) == 0:
                raise ValueError(f"low level returned an action chunk of shape {chunk.shape}; expected [H, A] with H >= 1")
            self._chunk, self._chunk_pos = chunk, 0
            problem = getattr(self.low, "last_error", None)  # a low level that holds still says why
            if problem:
                self._last_reply = f"low level: {problem}"
        action = self._chunk[self._chunk_pos]
        self._chunk_pos += 1
        return action

    # ------------------------------------------------------------------ internals: recording

    def _record(self, event: Any) -> None:
        if self.recorder is not None:
            self.recorder.record(event)

    def _record_step(self, obs: Observation, action: np.ndarray, holding: bool) -> None:
        if self.recorder is None:
            return
        ep = self._episode
        assert ep is not None
        self.recorder.record_step(
            Step(
                episode=ep.index,
                step=ep.step,
                frame=ep.step,
                time=obs.time,
                wall_time=time.time(),
                state=[float(x) for x in obs.state],
                action=[float(x) for x in action],
                plan_id=self._plan_id,
                subtask=self._plan.subtask if self._plan else None,
                subtask_index=self._info.get("subtask_index"),
                paused=holding,
            ),
            obs.images,
        )

    def _end_episode(self, reason: str) -> None:
        ep = self._episode
        assert ep is not None
        if ep.over:
            return
        self._flush_pending_corrections()
        self._awaiting = None
        ep.over = True
        ep.end_reason = reason
        done = list(self._info.get("subtasks_done", []))
        self._record(
            EpisodeEnd(
                episode=ep.index,
                steps=ep.step,
                success=ep.success,
                subtasks_completed=int(sum(done)),
                subtasks_total=len(done),
                reason=reason,
                wall_time=time.time(),
            )
        )
        if self._obs is not None:
            self._publish()  # so the console knows at once (a step cap ends episodes outside step())

    # ------------------------------------------------------------------ snapshot for UIs

    def _publish(self) -> None:
        ep = self._episode
        assert ep is not None and self._obs is not None
        snap = LoopSnapshot(
            episode=ep.index,
            step=ep.step,
            sim_time=self._obs.time,
            task=ep.task,
            family=ep.family,
            plan=self._plan,
            subtasks=tuple(self._info.get("subtasks", ())),
            subtasks_done=tuple(bool(x) for x in self._info.get("subtasks_done", ())),
            corrections=tuple(ep.corrections[-8:]),
            paused=self._paused,
            stopped=self._stopped,
            front_image=self._obs.images.get("front"),
            last_reply=self._last_reply,
            episode_over=ep.over,
            success=ep.success,
            end_reason=ep.end_reason,
            corrections_given=len(ep.corrections),
            plan_change=ep.plan_change,
            withdrawn=tuple(ep.withdrawn[-8:]),
            memory=self.memory.texts(),
        )
        with self._lock:
            self._snapshot = snap

    def latest_observation(self) -> Observation | None:
        """The observation the loop stepped to last (what a question about the scene is asked on)."""
        return self._obs

    def record_question(self, question: str, answer: str) -> None:
        """Record a question put to the high level and its answer. Nothing else changes: the plan,
        the context and the corrections stay as they are (the recorder's queue is thread-safe)."""
        if self._episode is not None:
            self._record(QuestionAnswered(episode=self._episode.index, step=self._episode.step,
                                          question=question, answer=answer, wall_time=time.time()))

    def snapshot(self) -> LoopSnapshot | None:
        with self._lock:
            return self._snapshot

    def close(self) -> None:
        if self._episode is not None and not self._episode.over:
            self._end_episode("quit")
        if self._planner is not None:
            self._planner.close()
