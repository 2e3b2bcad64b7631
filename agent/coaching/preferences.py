"""A person with preferences the planner was never told, held over a coached session: what the
scripted coach stands for when it coaches the oracle for planner training data (`hivla datagen
--mode planner --coach scripted`, agent/training/planner_frames.py).

An IntendedBehaviour (agent/coaching/behaviour.py) for ScriptedCoach's `intended=`. At the first
decision of an episode where the task leaves a choice (two or more blocks it could move next), the
person may take up one preference, drawn from a generator seeded per session:

  a rule (`rule_share`)    "leave the <colour> block alone" (policies.rules avoid_block), held for the
                           rest of the SESSION: the coach says it (for good or for the episode, as its
                           rule_scope draws) when a plan breaks it, and negates the plan when it breaks
                           it again; the loop's session memory keeps it once said for good or said in
                           a second episode, so later episodes' planner contexts read it as "rule: ...".
                           At most `max_rules` a session.
  an order (`order_share`) one block first, this episode only: any plan that starts another block is
                           answered with an override ("pick up the blue block") or a negation of the
                           plan ("not the red block").
  nothing                  the rest of the time.

The block is the one the oracle would take next (so the preference bites at once) half the time,
any candidate block otherwise. The oracle reads what was said (agent/envs/oracle.py) and obeys it,
so the coach falls silent once the planner's context carries the preference: the frames after a
correction, and every frame after a rule is remembered, are labelled with the oracle's obeying plan.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from agent.coaching import vocab
from agent.coaching.behaviour import ReferenceBehaviour
from agent.envs.tasks import left_to_right
from policies.rules import Rule


class SessionPreferences:
    """IntendedBehaviour: the reference decomposition, with this session's rules and this episode's
    preferred first block."""

    def __init__(self, seed: int = 0, rule_share: float = 0.5, order_share: float = 0.4, max_rules: int = 2,
                 bite_share: float = 0.5) -> None:
        if rule_share < 0 or order_share < 0 or rule_share + order_share > 1:
            raise ValueError(f"rule_share and order_share must be >= 0 and sum to at most 1, "
                             f"got {rule_share}, {order_share}")
        self.rng = np.random.default_rng(seed)
        self.rule_share, self.order_share = rule_share, order_share
        self.max_rules, self.bite_share = max_rules, bite_share
        self.held_rules: list[Rule] = []  # the session's, oldest first
        self.first: str | None = None  # the block wanted first this episode
        self.taken: list[tuple[str, str]] = []  # (kind, block) of each preference taken up, for the counts
        self._task: Any = None
        self._decided = False

    # --- IntendedBehaviour ---------------------------------------------------------------------
    def allowed_next(self, info: dict, world: Any) -> list[str]:
        if getattr(world, "task", None) is not self._task:  # a new episode
            self._task, self.first, self._decided = getattr(world, "task", None), None, False
        allowed = allowed_steps(info, world)
        if world.held is not None:
            return allowed
        if not self._decided:
            self._decide(world, allowed)
        if self.first is not None:
            mine = [s for s in allowed if _block_of(s) == self.first]
            if mine:
                return mine
        return allowed

    def rules(self, info: dict, world: Any) -> Sequence[Rule]:
        return tuple(self.held_rules)

    # --- taking up a preference ----------------------------------------------------------------
    def _decide(self, world: Any, allowed: list[str]) -> None:
        blocks = list(dict.fromkeys(b for b in map(_block_of, allowed) if b is not None))
        if len(blocks) < 2:
            return  # no choice yet: decide at the first decision that has one
        self._decided = True
        free = [b for b in blocks if not any(r.forbids(vocab.pick_up(b)) for r in self.held_rules)]
        if len(free) < 2:
            return
        nxt = min(free, key=lambda b: left_to_right(world, b))  # what the oracle takes next
        draw = self.rng.random()
        if draw < self.rule_share:
            if len(self.held_rules) >= self.max_rules:
                return
            block = nxt if self.rng.random() < self.bite_share else free[int(self.rng.integers(len(free)))]
            self.held_rules.append(Rule("avoid_block", vocab.block_name(vocab.block_color(block))))
            self.taken.append(("rule", block))
        elif draw < self.rule_share + self.order_share:
            others = [b for b in free if b != nxt]
            self.first = others[int(self.rng.integers(len(others)))]
            self.taken.append(("order", self.first))


def allowed_steps(info: dict, world: Any) -> list[str]:
    """The steps the task allows now: the reference's (ReferenceBehaviour), except that a block in the
    jaws is being carried, so its next step is its place even before it has left the table (the
    reference still says "pick" until the block is lifted; the oracle, and a person, see it carried)."""
    allowed = ReferenceBehaviour().allowed_next(info, world)
    held, task = world.held, getattr(world, "task", None)
    if held is None or task is None or allowed != [vocab.pick_up(held)]:
        return allowed
    flags = task.group_flags(world)
    places = [g.subtasks[1].text for i, g in enumerate(task.groups)
              if g.kind == "move" and g.obj == held and not flags[i][1] and all(all(flags[d]) for d in g.deps)]
    return list(dict.fromkeys(places)) or allowed


def _block_of(subtask: str | None) -> str | None:
    sub = vocab.split_subtask(subtask)
    return sub.obj if sub is not None and sub.kind in ("pick", "push") else None
