"""The `coaching` suite: task families absent from the base data whose right behaviour only a coach
can teach.

Each family's `TaskInstance` carries two decompositions:
  groups       the literal reading of the task text, as a planner trained on `base` would take it;
               the oracle (which plans from `world.task.groups`) follows this one and so does not
               know the family's convention
  goal_groups  the intended behaviour; the env's progress flags (`info["subtasks"]`,
               `info["subtasks_done"]`) and the task-level success detector use this one
The scripted coach learns the intended behaviour from agent/coaching/intended.py.

Families
  tidy_up            "tidy up": every block into the drawer, then close it (the literal reading
                     gathers the blocks in the bowl on the table)
  stack_the_blocks   "stack the blocks": one tower, and this user wants the red block at the bottom
                     (the text never says so; the literal reading stacks in any order)
  recover_from_drop  "put the red block and the blue block in the green bowl", and the first block
                     carried slips out of the jaws once (`SlipOnce`); the robot has to pick it up
                     again and finish

`with_coaching_events(env)` wraps a coaching-suite env so the scripted slip happens; `make_env`
applies it for the coaching suite and its families.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from policies.grammar import close_drawer, normalize, open_drawer, place_in_bowl, put_in_drawer, stack_on
from agent.envs.tasks import (
    COLOR_PATTERN,
    SUITES,
    Group,
    LayoutBuilder,
    TaskFamily,
    TaskInstance,
    bowl_and_maybe_another,
    excluded,
    move,
    other_colors,
    pick_colors,
    register_family,
)
from agent.envs.world import WorldState

SUITE = "coaching"
_C = COLOR_PATTERN


# --- task instances whose success is the intended behaviour ---------------------------------------
@dataclass
class ConventionTask(TaskInstance):
    """A TaskInstance whose `groups` are the literal reading and `goal_groups` the intended one."""

    goal_groups: list[Group] = field(default_factory=list)

    def goal_options(self, world: WorldState) -> list[list[Group]]:
        """Intended decompositions, the one the world is following first."""
        return [self.goal_groups]

    def goal_task(self, world: WorldState) -> TaskInstance:
        """The intended decomposition as a plain TaskInstance (for flags and planners)."""
        return TaskInstance(self.family, self.text, self.layout, self.goal_options(world)[0], self.params,
                            self.max_steps)

    @property
    def subtask_texts(self) -> list[str]:
        return [s.text for g in self.goal_groups for s in g.subtasks]

    def progress(self, world: WorldState) -> list[bool]:
        return self.goal_task(world).progress(world)

    def success(self, world: WorldState) -> bool:
        return self.goal_reached(world) and world.held is None

    def goal_reached(self, world: WorldState) -> bool:
        return all(self.goal_task(world).progress(world))


@dataclass
class TidyTask(ConventionTask):
    def goal_reached(self, world: WorldState) -> bool:
        blocks = self.params["blocks"]
        return all(world.in_drawer(b) for b in blocks) and world.drawer.is_closed


@dataclass
class RedBottomTask(ConventionTask):
    """A three-block tower with `params["bottom"]` at the bottom; the other two in either order."""

    def goal_options(self, world: WorldState) -> list[list[Group]]:
        bottom, (a, b) = self.params["bottom"], self.params["others"]
        orders = [(a, b), (b, a)]
        started = [o for o in orders if world.on_block(o[0], bottom)]
        if started:  # a block already sits on the bottom one: that is the middle, only one order is left
            orders = started[:1]
        else:  # either order is still open; the one with the block in the jaws as the middle comes first
            orders.sort(key=lambda o: not world.is_held(o[0]))
        return [[move(m, stack_on(bottom)), move(t, stack_on(m), deps=(0,))] for m, t in orders]

    def goal_reached(self, world: WorldState) -> bool:
        bottom, (a, b) = self.params["bottom"], self.params["others"]
        return any(world.on_block(m, bottom) and world.on_block(t, m) for m, t in ((a, b), (b, a)))


@dataclass
class SlipTask(ConventionTask):
    def goal_reached(self, world: WorldState) -> bool:
        bowl = self.params["bowl"]
        return all(world.in_bowl(b, bowl) for b in self.params["targets"])


# --- families ---------------------------------------------------------------------------------------
class TidyUp(TaskFamily):
    name = "tidy_up"
    description = "'tidy up' means: every block into the drawer, then close it"
    max_subtasks = 6
    uses_drawer = True
    templates = ("tidy up", "tidy up the table", "time to tidy up", "please tidy up")
    _re = re.compile(r"^(?:please |time to )?tidy up(?: table)?$")

    def _sample(self, rng, params):
        lb = LayoutBuilder(rng, uses_drawer=True)
        bowl = other_colors(rng, [], 1)[0]
        lb.bowl(bowl)  # a bowl on the table makes "gather them in the bowl" a plausible reading
        colors = other_colors(rng, [bowl], 2)
        ids = [lb.block(c) for c in colors]
        layout, names = lb.build()
        blocks = [names[i] for i in ids]
        order = [blocks[int(i)] for i in rng.permutation(len(blocks))]
        literal = [move(b, place_in_bowl(bowl)) for b in order]
        goal = [Group("open", (open_drawer(),))]
        goal += [move(b, put_in_drawer(), deps=(0,)) for b in order]
        goal.append(Group("close", (close_drawer(),), deps=tuple(range(1, len(goal)))))
        text = self.phrase(rng)
        return TidyTask(self.name, text, layout, literal, {"blocks": blocks, "bowl": bowl}, goal_groups=goal)


class StackTheBlocks(TaskFamily):
    name = "stack_the_blocks"
    description = "'stack the blocks': one tower, and the red block always goes at the bottom"
    max_subtasks = 4
    templates = ("stack the blocks", "stack the blocks up", "pile up the blocks", "make a stack of the blocks")
    _re = re.compile(r"^(?:stack blocks(?: up)?|pile up blocks|pile blocks up|make stack (?:of|with|from) blocks)$")
    bottom_color = "red"  # the user's convention (the coach knows it; the text never says it)

    def _sample(self, rng, params):
        lb = LayoutBuilder(rng)
        colors = [self.bottom_color] + other_colors(rng, [self.bottom_color], 2)
        # equal sizes: any order stands up, and size gives no hint which block goes at the bottom
        size = "large" if rng.random() < 0.5 else "small"
        ids = [lb.block(c, size) for c in colors]
        if rng.random() < 0.4:
            lb.bowl(other_colors(rng, [], 1)[0])
        layout, names = lb.build()
        bottom, others = names[ids[0]], [names[i] for i in ids[1:]]
        literal_order = [names[ids[int(i)]] for i in rng.permutation(3)]  # a tower in no particular order
        literal = [move(literal_order[i], stack_on(literal_order[i - 1]), deps=(i - 2,) if i > 1 else ())
                   for i in range(1, 3)]
        goal_others = [others[int(i)] for i in rng.permutation(2)]
        goal = [move(goal_others[0], stack_on(bottom)), move(goal_others[1], stack_on(goal_others[0]), deps=(0,))]
        params = {"bottom": bottom, "others": goal_others, "literal_order": literal_order}
        return RedBottomTask(self.name, self.phrase(rng), layout, literal, params, goal_groups=goal)


class RecoverFromDrop(TaskFamily):
    name = "recover_from_drop"
    description = "put two blocks in a bowl; the first one carried slips out once and must be picked again"
    max_subtasks = 4
    templates = (
        "put the {a} block and the {b} block in the {bowl} bowl",
        "move the {a} and {b} blocks into the {bowl} bowl",
        "place both the {a} block and the {b} block in the {bowl} bowl",
    )
    _re = re.compile(
        rf"^(?:put|move|place)(?: both)? (?P<a>{_C})(?: block)? and (?P<b>{_C}) blocks? (?:in|into|inside) (?P<bowl>{_C}) bowl$"
    )

    def _sample(self, rng, params):
        params = pick_colors(rng, params, ("a", "b", "bowl"))
        lb = LayoutBuilder(rng)
        bowl_and_maybe_another(lb, rng, params["bowl"])
        ids = [lb.block(params["a"]), lb.block(params["b"])]
        lb.distractors([params[k] for k in ("a", "b", "bowl")], int(rng.integers(0, 2)))
        layout, names = lb.build()
        targets = [names[i] for i in ids]
        groups = [move(t, place_in_bowl(params["bowl"])) for t in targets]
        params = {**params, "targets": targets, "slip": True}
        return SlipTask(self.name, self.phrase(rng, **params), layout, groups, params, goal_groups=list(groups))


COACHING_FAMILIES = (TidyUp(), StackTheBlocks(), RecoverFromDrop())
for _family in COACHING_FAMILIES:
    register_family(_family, suites=(SUITE,))


# --- the scripted slip ------------------------------------------------------------------------------
SLIP_MIN_LIFT = 0.03  # the block's bottom this far above the table ...
SLIP_MIN_TRAVEL = 0.04  # ... and carried this far from where it was picked
LANDING_CLEARANCE_BLOCK = 0.065
LANDING_CLEARANCE_BOWL = 0.11


def slip_landing(world: WorldState, block: str) -> tuple[float, float, float] | None:
    """Where a block slipping out of the jaws now lands (the table under the gripper), or None when
    that spot is not clear (next to another block, a bowl, the cabinet or the table's edge)."""
    x, y = float(world.gripper.pos[0]), float(world.gripper.pos[1])
    if not (-0.3 < x < 0.3 and -0.26 < y < 0.16) or excluded(x, y, 0.03, uses_drawer=True):
        return None
    for name, other in world.blocks.items():
        if name != block and math.hypot(other.pos[0] - x, other.pos[1] - y) < LANDING_CLEARANCE_BLOCK:
            return None
    for bowl in world.bowls.values():
        if math.hypot(bowl.pos[0] - x, bowl.pos[1] - y) < LANDING_CLEARANCE_BOWL:
            return None
    return x, y, world.blocks[block].half + 0.001


class SlipOnce:
    """Once per episode of a task with `params["slip"]`, the first target block carried slips out of
    the jaws and lands on the table below. Everything else is the wrapped env's: attributes the
    wrapper lacks (observation, subtask_done, task, action_space, close, unwrapped, ...) are looked
    up on it. (A plain delegating class rather than gymnasium.Wrapper, which no longer forwards
    attributes and would cost every `import agent.envs` the gymnasium import.)"""

    def __init__(self, env):
        self.env = env
        self._picked_at: dict[str, np.ndarray] = {}
        self.slipped: str | None = None

    def __getattr__(self, name):
        if name.startswith("__") or name == "env":
            raise AttributeError(name)
        return getattr(self.env, name)

    def reset(self, **kwargs):
        self._picked_at, self.slipped = {}, None
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        task = self.env.unwrapped.task
        if self.slipped is None and not (terminated or truncated) and task is not None and task.params.get("slip"):
            block = self._due(info["privileged"], task)
            if block is not None:
                x, y, z = slip_landing(info["privileged"], block)
                world = info["privileged"]
                obs, info = self.env.unwrapped.place_block(block, (x, y, z), yaw=world.blocks[block].yaw, settle_steps=40)
                self.slipped = block
        if self.slipped is not None:
            info["slipped"] = self.slipped
        return obs, reward, terminated, truncated, info

    def _due(self, world: WorldState, task: TaskInstance) -> str | None:
        held = world.held
        if held is None or held not in task.params.get("targets", ()):
            return None
        start = self._picked_at.setdefault(held, np.asarray(world.blocks[held].pos[:2], dtype=float).copy())
        blk = world.blocks[held]
        travelled = float(np.hypot(*(blk.pos[:2] - start)))
        if world.is_lifted(held) and blk.bottom > SLIP_MIN_LIFT and travelled > SLIP_MIN_TRAVEL:
            return held if slip_landing(world, held) is not None else None
        return None


def with_coaching_events(env):
    """Wrap an env of the coaching suite (or one fixed to a coaching family) so its scripted events
    happen; any other env is returned as it is."""
    members = SUITES.get(SUITE, [])
    if getattr(env, "suite", None) == SUITE or getattr(env, "family", None) in members:
        return SlipOnce(env)
    return env
