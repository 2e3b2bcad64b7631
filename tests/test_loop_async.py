"""The high level off the control path (ControlLoop(async_planning=True)), on the stand-in line world.

The planner here is gated by an Event, so a test decides exactly when a plan lands relative to the
corrections: no sleeps are tuned to the machine.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import replace

import pytest

from agent.inputs import Command, CommandName
from agent.loop import ControlLoop
from policies.types import Correction, CorrectionKind, PlanContext
from line_world import GoTo, InOrderPlanner, LineWorld
from memory_recorder import MemoryRecorder


class GatedPlanner(InOrderPlanner):
    """InOrderPlanner that waits for `gate` and writes what it read into the thought."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Semaphore(0)

    def plan(self, obs, context: PlanContext):
        self.entered.release()
        assert self.gate.wait(10), "test gate never opened"
        plan = super().plan(obs, context)
        return replace(plan, thought=f"corrections={len(context.corrections)} done={len(context.completed_subtasks)}")


class CheckingRecorder(MemoryRecorder):
    """Fails the test if a model plan is applied that was computed from an older context than the loop's."""

    def __init__(self):
        super().__init__()
        self.loop: ControlLoop | None = None
        self.violations: list[str] = []

    def record(self, event):
        super().record(event)
        if event.type == "plan" and event.plan.source != "human":
            ctx = self.loop._context
            # the loop appended the plan to its history already; corrections and completions are what matter
            now = f"corrections={len(ctx.corrections)} done={len(ctx.completed_subtasks)}"
            if event.plan.thought != now:
                self.violations.append(f"step {event.step}: applied a plan made with {event.plan.thought}, loop has {now}")


def make_async_loop(**kw):
    planner, rec = GatedPlanner(), CheckingRecorder()
    loop = ControlLoop(LineWorld(order=("a", "b", "c")), planner, GoTo(), recorder=rec, async_planning=True, **kw)
    rec.loop = loop
    return loop, planner, rec


def step_until(loop: ControlLoop, condition, limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        loop.step()
        time.sleep(0.001)


def hold_a_timer_plan(loop: ControlLoop, planner: GatedPlanner) -> None:
    """Step until a plan is in force, close the planner's gate, and step until a timer plan is being
    computed (and held at the gate)."""
    step_until(loop, lambda: loop.snapshot().plan is not None)
    planner.gate.clear()
    while planner.entered.acquire(blocking=False):
        pass
    step_until(loop, lambda: planner.entered.acquire(blocking=False))


def test_async_episode_runs_to_success_holding_only_while_no_subtask_is_in_force():
    loop, _planner, rec = make_async_loop(replan_period_s=0.3)
    loop.reset(seed=0)
    step_until(loop, lambda: loop.snapshot().episode_over, limit_s=20)
    assert loop.result().success
    plans = [e for e in rec.events if e.type == "plan"]
    assert {p.reason for p in plans} >= {"start", "subtask_done"}
    assert all(p.asked_step is not None and p.asked_step <= p.step for p in plans)
    assert all(p.asked_wall_time <= p.wall_time for p in plans)
    assert not rec.violations
    loop.close()


def test_a_plan_asked_before_a_correction_is_never_applied():
    loop, planner, rec = make_async_loop(replan_period_s=0.2)
    loop.reset(seed=0)
    hold_a_timer_plan(loop, planner)
    x = loop.env.x
    loop.step()
    assert loop.env.x != x, "the robot keeps acting on the subtask in force while the timer plan is computed"
    loop.submit(Correction(kind=CorrectionKind.NEGATION, text="not a", subtask="go to a"))
    loop.step()  # the correction is applied now: a new plan is asked, the robot holds for it
    x = loop.env.x
    loop.step()
    assert loop.env.x == pytest.approx(x), "a negated subtask is not acted on while its replacement is planned"
    planner.gate.set()  # the stale timer plan lands first, then the one asked with the correction
    step_until(loop, lambda: loop.snapshot().plan.subtask == "go to b")
    assert loop.stale_plans + loop._planner.superseded >= 1 and not rec.violations
    corrections = [e for e in rec.events if e.type == "correction"]
    assert len(corrections) == 1 and corrections[0].resulting_plan.subtask == "go to b"
    assert corrections[0].model_plan.subtask == "go to b"
    assert len(loop.correction_latencies) == 1
    loop.close()


def test_an_override_takes_effect_at_the_next_step_while_a_plan_is_in_flight():
    loop, planner, rec = make_async_loop(replan_period_s=0.2)
    loop.reset(seed=0)
    hold_a_timer_plan(loop, planner)
    loop.submit(Correction(kind=CorrectionKind.OVERRIDE, text="go to c first", subtask="go to c"))
    loop.step()
    assert rec.steps[-1].subtask == "go to c" and loop.snapshot().plan.source == "human"
    corr = [e for e in rec.events if e.type == "correction"][-1]
    assert corr.resulting_plan.subtask == "go to c" and corr.model_plan.subtask == "go to a"  # the model's latest
    planner.gate.set()
    for _ in range(5):
        loop.step()
        time.sleep(0.002)
    assert loop.snapshot().plan.subtask == "go to c", "the stale timer plan did not replace the override"
    assert loop.stale_plans + loop._planner.superseded == 1 and not rec.violations
    loop.close()


def test_undo_before_the_plan_lands_records_the_correction_then_its_withdrawal():
    loop, planner, rec = make_async_loop()
    loop.reset(seed=0)
    step_until(loop, lambda: loop.snapshot().plan is not None)
    planner.gate.clear()
    loop.submit(Correction(kind=CorrectionKind.CONSTRAINT, text="leave a alone"))
    loop.step()
    loop.submit(Command(CommandName.UNDO))
    loop.step()
    types = [e.type for e in rec.events]
    assert types.index("correction") < types.index("correction_withdrawn")
    planner.gate.set()
    step_until(loop, lambda: loop._awaiting is None)
    assert not rec.violations
    loop.close()


@pytest.mark.parametrize("seed", range(6))
def test_random_interleavings_never_apply_a_stale_plan(seed):
    rng = random.Random(seed)
    loop, planner, rec = make_async_loop(replan_period_s=0.1)
    loop.reset(seed=seed)
    said = [Correction(kind=CorrectionKind.NEGATION, text="not a", subtask="go to a"),
            Correction(kind=CorrectionKind.CONSTRAINT, text="leave b alone"),
            Correction(kind=CorrectionKind.OVERRIDE, text="go to c", subtask="go to c"),
            Correction(kind=CorrectionKind.NUDGE, text="a bit left"),
            Command(CommandName.UNDO)]
    for _ in range(120):
        roll = rng.random()
        if roll < 0.15:
            planner.gate.clear()
        elif roll < 0.4:
            planner.gate.set()
        if rng.random() < 0.1:
            loop.submit(rng.choice(said))
        loop.step()
        time.sleep(rng.choice([0, 0, 0.001, 0.003]))
        if loop.snapshot().episode_over:
            break
    planner.gate.set()
    assert not rec.violations, rec.violations[:3]
    loop.close()


def test_synchronous_mode_records_each_plan_asked_and_landed_at_the_same_step():
    rec = MemoryRecorder()
    loop = ControlLoop(LineWorld(), InOrderPlanner(), GoTo(), recorder=rec)
    loop.run_episode(seed=0, max_steps=150)
    plans = [e for e in rec.events if e.type == "plan"]
    assert plans and all(p.asked_step == p.step for p in plans)
    assert not loop.async_planning


def test_the_first_plan_of_an_episode_is_in_force_at_reset_for_the_first_frame():
    loop, _planner, rec = make_async_loop()
    loop.reset(seed=0)  # the console shows this frame and waits for the person before any step
    assert loop.snapshot().plan is not None and loop.snapshot().plan.subtask == "go to a"
    assert [e.reason for e in rec.events if e.type == "plan"] == ["start"]
    loop.close()


def test_the_planner_reads_a_copy_of_every_list_in_the_context():
    from agent.planner_thread import copy_context
    from policies.types import Plan

    ctx = PlanContext(task="t", plan_history=[Plan(thought="", subtask="go to a", source="model")])
    copy = copy_context(ctx)
    ctx.plan_history.append(Plan(thought="", subtask="go to b", source="model"))
    ctx.corrections.append(Correction(kind=CorrectionKind.NEGATION, text="not a"))
    ctx.completed_subtasks.append("go to a")
    assert len(copy.plan_history) == 1 and not copy.corrections and not copy.completed_subtasks
    assert all(getattr(copy, name) is not getattr(ctx, name) for name, value in vars(ctx).items() if isinstance(value, list))
