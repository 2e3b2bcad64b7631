"""What the scripted coach knows about the `coaching` suite (agent/envs/coaching_tasks.py).

A coaching family's task text is read literally by the oracle and by a model trained on `base`
("tidy up" -> gather the blocks in the bowl; "stack the blocks" -> any order). The person the
scripted coach stands in for means something else; `COACHING_INTENDED` tells the coach what:

  tidy_up            open the drawer, every block into it, close it
  stack_the_blocks   the red block at the bottom, the other two on it in either order
  recover_from_drop  the task as said; after the slip, pick the dropped block up again, then finish

Each entry is an IntendedBehaviour for ScriptedCoach's `intended=` hook. The steps come from the
task's intended decomposition (`goal_options`), which the env's success detector also checks.

`CoachingSuiteCoach` is the ScriptedCoach the coaching suite runs with (`make_coach`): these
behaviours, plus
  patience after a drop: a person who sees a block fall first watches whether the robot goes back
      for it, and only speaks if its next plan does not (or nothing happens for `drop_patience_steps`);
  no plan is a wrong plan: a learned high level that decodes nothing usable (an empty or
      unparseable subtask) leaves the robot idle, and a person says what to do after the usual
      reaction time instead of waiting `stuck_steps` for the idleness to count as stuck;
  quick to stop undoing: a plan that picks up a block whose part of the task is finished (a tidied
      block taken back out of the drawer) is answered `undo_reaction_steps` (default 0) after it is
      seen: the gripper that just let go of the block is still around it and takes it back within
      two steps, which at the usual reaction time would go unremarked again and again.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from agent.coaching import vocab
from agent.coaching.scripted import ReferenceBehaviour, ScriptedCoach, _Finding
from agent.envs.tasks import TaskInstance
from policies.rules import Rule


class GoalBehaviour:
    """Next steps from the intended decomposition of a coaching task (`task.goal_options(world)`):
    any step a ready group allows, over every intended order that is still open."""

    def allowed_next(self, info: dict, world: Any) -> list[str]:
        task = getattr(world, "task", None)
        if task is None or not hasattr(task, "goal_options"):
            return ReferenceBehaviour().allowed_next(info, world)
        allowed: list[str] = []
        for groups in task.goal_options(world):
            shadow = TaskInstance(task.family, task.text, task.layout, list(groups), task.params, task.max_steps)
            for sub in ReferenceBehaviour().allowed_next(info, dataclasses.replace(world, task=shadow)):
                if sub not in allowed:
                    allowed.append(sub)
        # "put it down" only when no intended order has a use for the block in the jaws
        useful = [s for s in allowed if s != vocab.PUT_DOWN]
        return useful or allowed

    def rules(self, info: dict, world: Any) -> Sequence[Rule]:
        return ()


COACHING_INTENDED: dict[str, GoalBehaviour] = {
    "tidy_up": GoalBehaviour(),
    "stack_the_blocks": GoalBehaviour(),
    "recover_from_drop": GoalBehaviour(),
}


class CoachingSuiteCoach(ScriptedCoach):
    """The scripted coach with the coaching suite's intended behaviours and patience after a drop."""

    def __init__(self, seed: int = 0, *args, intended: Any = None, drop_patience_steps: int = 25,
                 undo_reaction_steps: int = 0, **kwargs) -> None:
        super().__init__(seed, *args, intended=COACHING_INTENDED if intended is None else intended, **kwargs)
        if drop_patience_steps < 0 or undo_reaction_steps < 0:
            raise ValueError("drop_patience_steps and undo_reaction_steps must be >= 0")
        self.drop_patience_steps = drop_patience_steps
        self.undo_reaction_steps = undo_reaction_steps
        self._plan_at_drop: tuple[tuple[int, str], str | None] | None = None
        self._undo_seen: dict = {}  # finding key -> step an undoing plan was first seen

    def reset(self) -> None:
        super().reset()
        self._plan_at_drop = None
        self._undo_seen = {}

    def _correct(self, f, first_seen, *args, **kwargs):
        return super()._correct(f, self._undo_seen.pop(f.key, first_seen), *args, **kwargs)

    def _findings(self, world, plan_sub, allowed, rules, pending, done_subtasks, step):
        findings = super()._findings(world, plan_sub, allowed, rules, pending, done_subtasks, step)
        findings = self._idle_is_wrong(findings, world, plan_sub, allowed)
        findings = self._undoing_is_wrong(findings, world, plan_sub, allowed, step)
        return self._patience_after_drop(findings, plan_sub, step)

    def _idle_is_wrong(self, findings, world, plan_sub, allowed):
        """An empty or unparseable plan leaves the robot idle: say what comes next."""
        settling = self._mem.release is not None or self._mem.drop is not None
        if allowed and not settling and vocab.split_subtask(plan_sub) is None and not _has_plan_finding(findings):
            findings = [f for f in findings if f.mistake != "stuck"]
            findings.append(_Finding("wrong_object", ("plan", plan_sub or ""), "plan", None))
        return findings

    def _undoing_is_wrong(self, findings, world, plan_sub, allowed, step):
        """Taking finished work apart is wrong (the reference coach calls a finished step "stale" and
        waits, and keeps quiet while a just-released block settles), and answered at once: the
        gripper that just let go of the block is still around it and takes it back within two steps."""
        if allowed and undoes_finished_work(world, plan_sub) and not _has_plan_finding(findings):
            findings = [f for f in findings if f.mistake != "stuck"]
            findings.append(_Finding("wrong_object", ("plan", plan_sub), "plan", plan_sub))
        for f in findings:
            if f.kind_hint == "plan" and f.key not in self._mem.first_seen and undoes_finished_work(world, f.plan_subtask):
                # ripe after undo_reaction_steps instead of the usual reaction time, even right after
                # another remark; its frames start here (not at the backdated first sighting)
                self._mem.first_seen[f.key] = step - max(self.delay_steps, 2) + self.undo_reaction_steps
                self._mem.quiet_until = min(self._mem.quiet_until, step)
                self._undo_seen[f.key] = step
        return findings

    def _patience_after_drop(self, findings, plan_sub, step):
        """No word about a drop while the robot goes back for the block, or might still re-plan."""
        drop = self._mem.drop
        if drop is None:
            self._plan_at_drop = None
            return findings
        if self._plan_at_drop is None or self._plan_at_drop[0] != drop:
            self._plan_at_drop = (drop, plan_sub)
        dropped_at, block = drop
        going_back = plan_sub == vocab.pick_up(block)
        watching = step - dropped_at < self.drop_patience_steps and plan_sub == self._plan_at_drop[1]
        if going_back or watching:
            findings = [f for f in findings if f.mistake != "drop"]
        return findings


def _has_plan_finding(findings) -> bool:
    return any(f.kind_hint == "plan" for f in findings)


def undoes_finished_work(world: Any, subtask: str | None) -> bool:
    """A pick of a block whose every step of the (intended) task is already done."""
    sub = vocab.split_subtask(subtask)
    task = getattr(world, "task", None)
    if sub is None or sub.kind != "pick" or task is None or not hasattr(task, "group_flags"):
        return False
    goal = task.goal_task(world) if hasattr(task, "goal_task") else task
    flags = goal.group_flags(world)
    mine = [all(f) for g, f in zip(goal.groups, flags) if g.obj and (g.obj == sub.obj or g.obj.endswith(" " + sub.obj))]
    return bool(mine) and all(mine) and not all(all(f) for f in flags)


def make_coach(seed: int = 0, error_rate: float = 0.0, **kwargs) -> CoachingSuiteCoach:
    """The coach `hivla run --suite coaching --coach scripted` uses."""
    return CoachingSuiteCoach(seed=seed, error_rate=error_rate, **kwargs)
