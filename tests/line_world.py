"""A point on a line that must visit marks in order: the MuJoCo-free stand-in world of the control
loop's tests, with a planner that asks for the marks in order and a low level that steps towards one.
Any world whose info lists `subtasks` and `subtasks_done` (the console tests' ColourLine too) can use
InOrderPlanner."""

from __future__ import annotations

import numpy as np

from policies.types import Observation, Plan, PlanContext

MARKS = {"a": 1.0, "b": 2.0, "c": 3.0}


class LineWorld:
    """Visit marks in order; the subtask 'go to X' is done when |x - X| < 0.05."""

    def __init__(self, order=("a", "b")):
        self.order = order

    def reset(self, seed=None, options=None):
        self.x = 0.0
        self.t = 0
        self.task = (options or {}).get("task", "visit " + " then ".join(self.order))
        self.visited: list[str] = []
        return self._obs(), self._info()

    def step(self, action):
        self.x += float(np.clip(action[0], -0.2, 0.2))
        self.t += 1
        for name in self.order:
            if name not in self.visited and abs(self.x - MARKS[name]) < 0.05:
                self.visited.append(name)
        info = self._info()
        return self._obs(), 0.0, False, self.t >= 200, info

    def _obs(self):
        return {"images": {"front": np.zeros((4, 4, 3), np.uint8), "wrist": np.zeros((4, 4, 3), np.uint8)},
                "state": np.array([self.x], np.float32), "task": self.task}

    def _info(self):
        done = [n in self.visited for n in self.order]
        return {"family": "line", "subtasks": [f"go to {n}" for n in self.order], "subtasks_done": done,
                "subtask_index": done.index(False) if False in done else len(done),
                "task_success": all(done), "x": self.x}

    def observation(self, obs, info):
        return Observation(images=obs["images"], state=obs["state"], task=obs["task"], time=self.t / 10.0,
                           privileged=info)

    def subtask_done(self, subtask, info):
        target = MARKS.get(subtask.rsplit(" ", 1)[-1])
        return target is not None and abs(info["x"] - target) < 0.05


class InOrderPlanner:
    """The first subtask neither done nor negated (once all are done, the first again)."""

    def __init__(self):
        self.calls = 0

    def reset(self):
        pass

    def plan(self, obs, context: PlanContext):
        self.calls += 1
        negated = {c.subtask for c in context.negations}
        for sub, done in zip(obs.privileged["subtasks"], obs.privileged["subtasks_done"]):
            if not done and sub not in negated:
                return Plan(thought=f"{sub} is next", subtask=sub, source="oracle")
        return Plan(thought="all done", subtask=obs.privileged["subtasks"][0], source="oracle")


class GoTo:
    def reset(self):
        pass

    def act(self, obs, subtask):
        target = MARKS[subtask.rsplit(" ", 1)[-1]]
        return np.tile([[target - float(obs.state[0]), 0, 0, 0, 0]], (5, 1)).astype(np.float32) * 0.5
