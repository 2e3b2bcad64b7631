"""The coaching table's `done` column and the "history" contexts built from it are what the control
loop itself gave its planner: a real ControlLoop on the stand-in line world (line_world.py) records a
session whose plans each carry the PlannerContext the planner read (PlanEmitted.context), and the
export and the base data must say the same at every decision."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from agent.loop import ControlLoop
from agent.training.dataset import context_subtasks
from line_world import MARKS, GoTo, LineWorld
from policies.planning import PlannerContext
from policies.types import Plan, PlanContext
from sessions.export import ExportOptions, export_sessions
from sessions.export.common import decision_points, planner_context
from sessions.reader import read_session
from sessions.recorder import SessionRecorder, make_header

ROUTE = ("a", "b", "a", "c")  # "go to a" is done twice: the done list keeps it once, the most recent last


class SquareLineWorld(LineWorld):
    """The line world with 16x16 frames (the session's videos want a real size)."""

    def _obs(self):
        obs = super()._obs()
        obs["images"] = {c: np.full((16, 16, 3), int(40 * self.x), np.uint8) for c in ("front", "wrist")}
        return obs


class RoutePlanner:
    """Plans the marks of ROUTE in turn, moving on once the point stands at the current one."""

    def __init__(self):
        self.next = 0

    def reset(self):
        self.next = 0

    def plan(self, obs, context: PlanContext):
        while self.next < len(ROUTE) - 1 and abs(float(obs.state[0]) - MARKS[ROUTE[self.next]]) < 0.05:
            self.next += 1
        return Plan(thought="", subtask=f"go to {ROUTE[self.next]}", source="model")


def record_route(path):
    env = SquareLineWorld(order=("a", "b", "c"))
    header = make_header(high_level="pi05:x", low_level="expert", cameras={"front": (16, 16), "wrist": (16, 16)},
                         state_names=["x"], action_names=["dx", "dy", "dz", "dyaw", "grip"])
    with SessionRecorder(path, header) as rec:
        loop = ControlLoop(env, RoutePlanner(), GoTo(), recorder=rec, replan_period_s=0.6)
        loop.run_episode(seed=0, max_steps=120)
        loop.close()
    return path


def test_the_done_column_and_the_history_context_are_what_the_loop_gave_the_planner(tmp_path):
    session = record_route(tmp_path / "session")
    recorded_session = read_session(session)
    (ep,) = recorded_session.episodes
    export_sessions([session], tmp_path / "sft", ExportOptions(format="sft"))
    rows = pq.read_table(tmp_path / "sft" / "coaching.parquet").to_pylist()
    assert [r["step"] for r in rows] == [s.step for s in ep.steps]
    assert all(r["last_done"] == (r["done"][-1] if r["done"] else None) for r in rows)
    history = context_subtasks(ep.steps, sorted(ep.plans, key=lambda p: p.plan_id), "history")

    points = [p for p in decision_points(recorded_session, ep, ExportOptions(format="sft")) if p.kind == "plan"]
    reasons = {p.plan.reason for p in points}
    assert {"start", "timer", "subtask_done"} <= reasons, reasons
    for point in points:
        recorded = PlannerContext.from_dict(planner_context(ep, point))  # what the planner read, as recorded
        i = ep.position_of_step(point.step)
        assert ep.steps[i].plan_id == point.plan.plan_id  # the step of a decision executes its plan
        assert rows[i]["done"] == list(recorded.done), point.step
        assert rows[i]["last_in_force"] == recorded.in_force, point.step
        assert history[i] == recorded.last("history"), point.step
    # the whole route was done: "go to a" twice, listed once, where it was done last
    last = PlannerContext.from_dict(planner_context(ep, points[-1]))
    assert last.done == ("go to b", "go to a") and rows[-1]["done"] == ["go to b", "go to a"]
    assert history[-1] == "done: go to b; go to a | doing: go to c"
    assert any(h and " | doing: " in h for h in history)  # timer re-plans mid-subtask keep what is under way
