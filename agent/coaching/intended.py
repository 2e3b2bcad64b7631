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
      two steps, which at the usual reaction time would go unremarked again and again;
  watching for a mistake seen before: a literal planner redoes a corrected mistake at once (the
      block taken off the wrong block stacked straight back on it), so a plan mistake seen before
      in the episode is named the moment it is back (even while a block just put down settles), and
      one already named, or whose "no" went unheeded for a reaction time, is answered with what to
      do instead, not after `repeat_after` steps of silence.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from agent.coaching import vocab
from agent.coaching.scripted import ReferenceBehaviour, ScriptedCoach, _Finding
from agent.envs.tasks import TaskInstance
from policies.rules import Rule
from policies.types import CorrectionKind as K


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
        self._undo_seen: dict = {}  # finding key -> step a plan answered before its reaction time was seen
        self._answered: dict = {}  # plan finding key -> (kind said, step) this episode
        self._seen: set = set()  # plan finding keys seen this episode

    def reset(self) -> None:
        super().reset()
        self._plan_at_drop = None
        self._undo_seen = {}
        self._answered = {}
        self._seen = set()

    def _correct(self, f, first_seen, world, info, plan_sub, allowed, rules, ctx, step, *, allow_interrupt):
        said = super()._correct(f, self._undo_seen.pop(f.key, first_seen), world, info, plan_sub, allowed, rules,
                                ctx, step, allow_interrupt=allow_interrupt)
        if said is not None and f.kind_hint == "plan":
            self._answered[f.key] = (said.intended_kind, step)
        return said

    def _insists(self, f) -> bool:
        return f.kind_hint == "plan" and f.key in self._answered

    def _findings(self, world, plan_sub, allowed, rules, pending, done_subtasks, step):
        findings = super()._findings(world, plan_sub, allowed, rules, pending, done_subtasks, step)
        findings = self._idle_is_wrong(findings, world, plan_sub, allowed)
        findings = self._undoing_is_wrong(findings, world, plan_sub, allowed, step)
        findings = self._known_mistake_while_settling(findings, plan_sub, allowed, rules, pending, done_subtasks)
        findings = self._mistake_again(findings, step)
        return self._patience_after_drop(findings, plan_sub, step)

    def _known_mistake_while_settling(self, findings, plan_sub, allowed, rules, pending, done_subtasks):
        """The plain coach judges no plan while a block just let go of settles (a fall would explain a
        mismatch better). A mistake it has seen this episode is not explained so: the robot put the
        block down as told and reaches for it again at once (a pick before the drawer is open),
        within those steps, and would have it back in the jaws before a word about it came."""
        mem = self._mem
        key = ("plan", plan_sub)
        if (not plan_sub or mem.release is None or mem.drop is not None or key not in self._seen or not allowed
                or plan_sub in allowed or plan_sub in done_subtasks or _has_plan_finding(findings)):
            return findings
        broken = next((r for r in rules if r.forbids(plan_sub)), None)
        if broken is not None:
            return findings + [_Finding("broken_constraint", key, "plan", plan_sub, rule=broken)]
        return findings + [_Finding("wrong_order" if plan_sub in pending else "wrong_object", key, "plan", plan_sub)]

    def _mistake_again(self, findings, step):
        """A plan mistake seen before this episode is named the moment it shows again, and one already
        answered is answered with what to do instead (`_insists`), also when a "no" to it goes unheeded
        for a reaction time, rather than after `repeat_after` steps of silence.

        Why: the oracle, like a planner trained on `base`, reads the task literally. A "no" to the
        literal step leaves it nothing else to do, so it plans that step again; after an override it
        goes back to the literal plan at once, putting the block just taken off the wrong block (or
        out of the bowl) straight back, or down, within two or three steps: inside the usual reaction
        time, so the redone mistake went unremarked, and the plain coach keeps quiet about a mistake
        for `repeat_after` (40) steps once it has named it. It then named the earlier step again and
        the two went round in a loop until the episode timed out (tidy_up and stack_the_blocks: 40%
        each, seeds 5000+). A person who has seen a mistake watches for it, and one whose "no" went
        unheeded says what to do instead."""
        mem = self._mem
        reaction = max(self.delay_steps, 2)
        for f in findings:
            if f.kind_hint != "plan":
                continue
            # a new sighting: absent a step ago (an undo is first seen by _undoing_is_wrong, this step)
            sighted = f.key not in mem.first_seen or self._undo_seen.get(f.key) == step
            answered = self._answered.get(f.key)
            back = sighted and f.key in self._seen
            unheeded = (not sighted and answered is not None and answered[0] is not K.OVERRIDE
                        and step - answered[1] >= reaction and f.key in mem.handled)
            self._seen.add(f.key)
            if not (back or unheeded):
                continue
            if f.key not in mem.first_seen:  # ripe now; its frames start here, not at a backdated sighting
                mem.first_seen[f.key] = step - reaction
                self._undo_seen[f.key] = step
            mem.handled.pop(f.key, None)
            mem.quiet_until = min(mem.quiet_until, step)
        return findings

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
