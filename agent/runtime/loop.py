"""The hierarchical control loop: inbox -> plan -> act, telling its observers what happened.

Every control step the low level's current action chunk supplies one action (agent.runtime.acting).
The high level re-plans (a) when there is no plan, (b) on a timer, (c) when the current subtask
finishes and (d) at once on a correction; synchronously in the step (the default: deterministic
under the seed) or on its own thread (`async_planning=True`, the console), see agent.runtime.planning.
Input from a person or the scripted coach arrives through `submit()`, which only enqueues: the loop
never waits for anyone, it drains the queue at the start of the next step (agent.runtime.corrections).

The loop has one owner thread (env, low level, observers). What happens is emitted as events
(agent.runtime.events) to observers: session memory (agent.runtime.session_memory: rules kept for the
session, in every later episode's PlanContext until /forget N), the recorder (agent.runtime.recording),
the snapshot UIs read from other threads and the latency probe (agent.runtime.observers), and any
passed in (the rerun log). Other corrections last the episode.
"""

from __future__ import annotations

import queue
import time
from typing import Sequence

from agent.inputs import UserInput
from agent.memory import SessionMemory
from agent.planner_thread import PlannerThread
from agent.runtime import events as ev
from agent.runtime.acting import Actor
from agent.runtime.corrections import Corrections
from agent.runtime.observers import LatencyProbe, SnapshotBox
from agent.runtime.planning import REPLAN_PERIOD_S, Planning
from agent.runtime.protocols import Coach, Env, HighLevel, LoopObserver, LowLevel, Recorder
from agent.runtime.recording import RecordingObserver
from agent.runtime.session_memory import MemoryObserver
from agent.runtime.state import Episode, EpisodeResult, LoopSnapshot
from policies.types import Observation, Plan, PlanContext


class ControlLoop(Corrections, Planning):
    def __init__(
        self,
        env: Env,
        high: HighLevel,
        low: LowLevel,
        *,
        recorder: Recorder | None = None,
        replan_period_s: float = REPLAN_PERIOD_S,
        execute_steps: int | None = None,
        compute_model_plan: bool = True,
        coach: Coach | None = None,
        suspect_window_steps: int = 20,
        async_planning: bool = False,
        remember: bool = True,
        observers: Sequence[LoopObserver] = (),
    ) -> None:
        self.env = env
        self.high = high
        self.recorder = recorder
        self.replan_period_s = replan_period_s
        self.compute_model_plan = compute_model_plan  # ask the high level what it would have done, for the log
        self.coach = coach
        self.suspect_window_steps = suspect_window_steps
        self._actor = Actor(low, execute_steps)
        self._snapshots, self._probe = SnapshotBox(), LatencyProbe()
        self.memory = SessionMemory(enabled=remember)  # rules kept across episodes; False keeps none (a baseline)
        self._rules = MemoryObserver(self.memory, self._emit)
        # Memory first: what it tells is recorded before the event it answers; the rerun log sees records after.
        recording = [RecordingObserver(recorder)] if recorder is not None else []
        self.observers: list[LoopObserver] = [self._rules, *recording, self._snapshots, self._probe, *observers]

        self._inbox: queue.SimpleQueue[tuple[float, UserInput]] = queue.SimpleQueue()
        self._episode: Episode | None = None
        self._episode_counter = -1
        self._plan_counter = 0
        self._correction_counter = 0
        self._obs: Observation | None = None
        self._info: dict = {}
        self._plan: Plan | None = None
        self._plan_id: int | None = None
        self._plan_sim_time = 0.0
        self._context: PlanContext | None = None
        self._paused = False
        self._stopped = False
        self._last_reply = ""
        self._low_level_lost = False  # a remote low level is unreachable; steps are held and marked paused
        self._pending_reset: dict | None = None
        self._last_seed: int | None = None
        # Asynchronous planning (see the module docstring); None: plans are computed in the step.
        self._planner: PlannerThread | None = PlannerThread(high) if async_planning else None
        self._generation = 0  # bumped whenever what the planner reads changes
        self._awaiting: ev.ReplanReason | None = None  # holding still for an asked plan (async only)
        self._pending_corrections: list[ev.CorrectionApplied] = []
        self._last_model_plan: Plan | None = None  # the high level's latest own plan this episode
        self.stale_plans = 0  # plans discarded on landing because the context changed after they were asked

    @property
    def async_planning(self) -> bool:
        return self._planner is not None

    @property
    def low(self) -> LowLevel:
        return self._actor.low

    @low.setter
    def low(self, low: LowLevel) -> None:
        self._actor.low = low

    @property
    def correction_latencies(self) -> list[float]:
        """Seconds from each re-planning correction's submission to the first step acted on its plan."""
        return self._probe.latencies

    def _emit(self, event: ev.LoopEvent) -> None:
        for observer in self.observers:
            observer.on_event(event)

    # ------------------------------------------------------------------ input (any thread)

    def submit(self, item: UserInput | str) -> None:
        """Queue a correction or command; it takes effect at the next control step."""
        if isinstance(item, str):
            from agent.coaching.classify import classify

            item = classify(item)
        self._inbox.put((time.perf_counter(), item))

    # ------------------------------------------------------------------ episode control

    def reset(self, seed: int | None = None, options: dict | None = None, reason: ev.ReplanReason = "start",
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
        self._episode = Episode(index=self._episode_counter, task=self._obs.task, family=info.get("family"),
                                start_wall=time.time())
        self._context = PlanContext(task=self._obs.task, memory=self._rules.in_force)
        self._context_changed()
        self._awaiting = None
        self._pending_corrections.clear()
        self._last_model_plan = None
        self._plan = None
        self._plan_id = None
        self._actor.reset()
        self._paused = False
        self._stopped = False
        self.high.reset()
        self.low.reset()
        if self.coach is not None:
            self.coach.reset()
        self._emit(ev.EpisodeStarted(episode=self._episode.index, task=self._obs.task, family=info.get("family"),
                                     seed=seed, subtasks=tuple(info.get("subtasks", [])), wall_time=time.time()))
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
        return EpisodeResult(success=ep.success, subtasks_completed=int(sum(done)), subtasks_total=len(done),
                             steps=ep.step, interventions=ep.interventions, wall_time=time.time() - ep.start_wall,
                             family=ep.family, reason=ep.end_reason,
                             last_subtask=self._plan.subtask if self._plan else None)

    # ------------------------------------------------------------------ one control step

    def step(self) -> None:
        """Advance one control step: apply queued input, (re)plan if due, act, emit what happened."""
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
        actor = self._actor
        try:
            action = actor.next_action(self._obs, self._plan, holding or self._awaiting is not None)
            if actor.problem:  # a low level that holds still says why
                self._last_reply = f"low level: {actor.problem}"
            if self._low_level_lost and actor.fresh_chunk:
                self._low_level_lost, self._last_reply = False, "low level: reconnected, resuming"
        except ConnectionError as err:  # a remote low level (openpi:) lost its server: hold as if paused
            self._low_level_lost, self._last_reply, actor.chunk = True, f"low level: {err}", None
            holding = True
            action = actor.next_action(self._obs, self._plan, holding)
        acted_at = time.perf_counter()

        prev_obs = self._obs
        actor.took(action)
        raw_obs, _reward, terminated, truncated, info = self.env.step(action)
        self._info = info
        self._obs = self.env.observation(raw_obs, info)
        self._emit(ev.StepTaken(
            episode=ep.index, step=ep.step, obs=prev_obs, action=action, plan_id=self._plan_id,
            subtask=self._plan.subtask if self._plan else None, subtask_index=info.get("subtask_index"),
            paused=holding, awaiting_plan=self._awaiting is not None, intervention=actor.nudged, acted_at=acted_at,
            wall_time=time.time()))
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
        self._emit(ev.EpisodeEnded(episode=ep.index, steps=ep.step, success=ep.success,
                                   subtasks_completed=int(sum(done)), subtasks_total=len(done), reason=reason,
                                   wall_time=time.time()))
        if self._obs is not None:
            self._publish()  # so the console knows at once (a step cap ends episodes outside step())

    # ------------------------------------------------------------------ what UIs read

    def _publish(self) -> None:
        ep = self._episode
        assert ep is not None and self._obs is not None
        self._emit(ev.SnapshotPublished(LoopSnapshot(
            episode=ep.index, step=ep.step, sim_time=self._obs.time, task=ep.task, family=ep.family, plan=self._plan,
            subtasks=tuple(self._info.get("subtasks", ())),
            subtasks_done=tuple(bool(x) for x in self._info.get("subtasks_done", ())),
            corrections=tuple(ep.corrections[-8:]), paused=self._paused, stopped=self._stopped,
            front_image=self._obs.images.get("front"), last_reply=self._last_reply, episode_over=ep.over,
            success=ep.success, end_reason=ep.end_reason, corrections_given=len(ep.corrections),
            plan_change=ep.plan_change, withdrawn=tuple(ep.withdrawn[-8:]), memory=self.memory.texts())))

    def snapshot(self) -> LoopSnapshot | None:
        return self._snapshots.get()

    def latest_observation(self) -> Observation | None:
        """The observation the loop stepped to last (what a question about the scene is asked on)."""
        return self._obs

    def record_question(self, question: str, answer: str) -> None:
        """Record a question put to the high level and its answer. Nothing else changes: the plan,
        the context and the corrections stay as they are (the recorder's queue is thread-safe)."""
        if self._episode is not None:
            self._emit(ev.QuestionAnswered(episode=self._episode.index, step=self._episode.step,
                                           question=question, answer=answer, wall_time=time.time()))

    def close(self) -> None:
        if self._episode is not None and not self._episode.over:
            self._end_episode("quit")
        if self._planner is not None:
            self._planner.close()
