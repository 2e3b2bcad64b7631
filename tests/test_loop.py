"""The control loop's scheduling and correction handling, on a tiny stand-in world.

The stand-in (line_world.py) keeps these tests independent of MuJoCo: a point on a line must visit named
marks in order. The integration with the real simulator is covered in test_loop_sim.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from agent.inputs import Command, CommandName
from agent.loop import ControlLoop
from line_world import GoTo, InOrderPlanner, LineWorld
from memory_recorder import MemoryRecorder
from policies.types import Correction, CorrectionKind

def make_loop(**kw):
    rec = MemoryRecorder()
    loop = ControlLoop(LineWorld(), InOrderPlanner(), GoTo(), recorder=rec, **kw)
    return loop, rec


def test_episode_runs_to_success_and_replans_on_subtask_done():
    loop, rec = make_loop(replan_period_s=100.0)
    result = loop.run_episode(seed=0, max_steps=150)
    assert result.success and result.subtasks_completed == 2 and result.subtasks_total == 2
    reasons = [e.reason for e in rec.events if e.type == "plan"]
    assert reasons[0] == "start" and "subtask_done" in reasons
    assert [e.type for e in rec.events][0] == "episode_start" and rec.events[-1].type == "episode_end"
    assert rec.events[-1].success and len(rec.steps) == result.steps


def test_timer_replans_periodically():
    loop, rec = make_loop(replan_period_s=0.2)
    loop.reset(seed=0)
    for _ in range(6):  # 0.6 s of sim time, before the first mark is reached
        loop.step()
    assert sum(e.reason == "timer" for e in rec.events if e.type == "plan") >= 2


def test_override_takes_effect_on_next_step_and_is_logged():
    loop, rec = make_loop()
    loop.reset(seed=0)
    loop.step()
    loop.submit(Correction(kind=CorrectionKind.OVERRIDE, text="go to c first", subtask="go to c"))
    loop.step()
    snap = loop.snapshot()
    assert snap.plan.subtask == "go to c" and snap.plan.source == "human"
    assert rec.steps[-1].subtask == "go to c"  # the very next executed action is under the new subtask
    corr = [e for e in rec.events if e.type == "correction"][0]
    assert corr.kind is CorrectionKind.OVERRIDE
    assert corr.replaced_plan.subtask == "go to a" and corr.resulting_plan.subtask == "go to c"
    assert corr.model_plan is not None and corr.model_plan.source == "oracle"
    assert len(loop.correction_latencies) == 1


def test_negation_replans_away_from_the_negated_subtask():
    loop, rec = make_loop()
    loop.reset(seed=0)
    loop.submit(Correction(kind=CorrectionKind.NEGATION, text="not a", subtask="go to a"))
    loop.step()
    assert loop.snapshot().plan.subtask == "go to b"
    assert [e.reason for e in rec.events if e.type == "plan"][-1] == "correction"


def test_pause_holds_still_and_flags_steps_then_resume_continues():
    loop, rec = make_loop()
    loop.reset(seed=0)
    loop.step()
    loop.submit(Command(CommandName.PAUSE))
    x_before = loop.env.x
    for _ in range(3):
        loop.step()
    assert loop.env.x == pytest.approx(x_before)
    assert all(s.paused for s in rec.steps[-3:])
    loop.submit(Command(CommandName.RESUME))
    loop.step()
    assert not rec.steps[-1].paused and loop.env.x > x_before


def test_undo_withdraws_the_last_correction():
    loop, rec = make_loop()
    loop.reset(seed=0)
    loop.submit(Correction(kind=CorrectionKind.NEGATION, text="not a", subtask="go to a"))
    loop.step()
    loop.submit(Command(CommandName.UNDO))
    loop.step()
    assert loop.snapshot().plan.subtask == "go to a"
    assert any(e.type == "correction_withdrawn" for e in rec.events)
    assert loop.snapshot().corrections == ()


def test_task_command_starts_a_new_episode():
    loop, rec = make_loop()
    loop.reset(seed=0)
    loop.step()
    loop.submit(Command(CommandName.TASK, argument="visit a then b again"))
    loop.step()
    assert loop.snapshot().episode == 1 and loop.snapshot().task == "visit a then b again"
    ends = [e for e in rec.events if e.type == "episode_end"]
    assert ends and ends[0].reason == "task_change"


def test_bad_action_chunk_from_low_level_is_a_clear_error():
    class Broken(GoTo):
        def act(self, obs, subtask):
            return np.zeros((0, 5), np.float32)

    loop = ControlLoop(LineWorld(), InOrderPlanner(), Broken())
    loop.reset(seed=0)
    with pytest.raises(ValueError, match="action chunk"):
        loop.step()


def test_reset_command_restarts_the_same_family_with_the_next_seed():
    calls = []

    class Recording(LineWorld):
        def reset(self, seed=None, options=None):
            calls.append((seed, options))
            return super().reset(seed=seed, options=options)

    loop = ControlLoop(Recording(), InOrderPlanner(), GoTo())
    loop.reset(seed=7)
    loop.submit(Command(CommandName.RESET))
    loop.step()
    assert calls[-1] == (8, {"family": "line"})
    assert loop.snapshot().episode == 1


def test_a_low_level_that_cannot_act_is_reported_not_fatal():
    class Refusing(GoTo):
        last_error = None

        def act(self, obs, subtask):
            self.last_error = f"cannot do {subtask!r}: no such mark"
            return np.zeros((5, 5), np.float32)

    loop = ControlLoop(LineWorld(), InOrderPlanner(), Refusing())
    loop.reset(seed=0)
    loop.step()
    assert "cannot do 'go to a'" in loop.snapshot().last_reply


def test_a_subtask_completed_again_moves_to_the_end_of_the_completed_list():
    from agent.loop import record_completion

    done: list[str] = []
    for subtask in ("pick up the red block", "place it in the blue bowl", "pick up the red block"):
        record_completion(done, subtask)
    assert done == ["place it in the blue bowl", "pick up the red block"]
