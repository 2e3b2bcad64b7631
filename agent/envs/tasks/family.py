"""A task family and what it samples.

A family samples a randomised `TaskInstance`: a scene layout (which blocks and bowls, colours,
positions, the drawer's opening), a task text in one of several phrasings, and a reference
decomposition into `Group`s of canonical subtasks (a "move" group is pick + place/stack/put; "open",
"close" and "push" groups are single subtasks). Groups may be done in any order their `deps` allow,
which is what lets the oracle honour "not that one first". The families register here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from agent.envs.primitives import is_satisfied
from agent.envs.tasks.layout import COLOR_NAMES, Layout, LayoutBuilder, NoRoom, other_colors
from agent.envs.world import WorldState
from policies.grammar import Subtask, normalize, pick

COLOR_PATTERN = "|".join(COLOR_NAMES)  # a colour in a family's task-text regex


class TaskSpecError(ValueError):
    pass


@dataclass(frozen=True)
class Group:
    """Subtasks that belong together: [pick X, place X ...], or a single open/close/push."""

    kind: str  # "move" | "open" | "close" | "push"
    subtasks: tuple[Subtask, ...]
    obj: str | None = None  # the block moved or pushed
    deps: tuple[int, ...] = ()  # groups that must be done first
    superseded_by: int | None = None  # a later group that moves the same block on (e.g. a swap)


@dataclass
class TaskInstance:
    family: str
    text: str
    layout: Layout
    groups: list[Group]
    params: dict = field(default_factory=dict)
    max_steps: int = 400

    @property
    def subtasks(self) -> list[Subtask]:
        return [s for g in self.groups for s in g.subtasks]

    @property
    def subtask_texts(self) -> list[str]:
        return [s.text for s in self.subtasks]

    def group_flags(self, world: WorldState) -> list[list[bool]]:
        """Done flags per group and subtask. Not latched: a block knocked out of its bowl makes its
        place step undone again, so the oracle plans it again. A family whose decomposition follows
        the world (a tower in whatever order it is being built) re-derives its groups first."""
        family = FAMILIES.get(self.family)
        followed = family.follow(self, world) if family is not None else None
        if followed is not None:
            self.groups = followed
        flags: list[list[bool] | None] = [None] * len(self.groups)
        placed: dict[int, bool] = {}
        lifted: dict[int, bool] = {}
        for i, g in enumerate(self.groups):
            if g.kind == "move":
                placed[i] = is_satisfied(world, g.subtasks[1], it=g.obj)
                lifted[i] = world.is_lifted(g.obj)
            elif g.kind == "push":
                flags[i] = [is_satisfied(world, g.subtasks[0])]
        for i, g in enumerate(self.groups):
            if g.kind == "move":
                flags[i] = [placed[i] or lifted[i], placed[i]]
        for i, g in enumerate(self.groups):
            j = g.superseded_by
            if g.kind == "move" and j is not None:
                # the later group has taken the block on: this one's placement no longer has to hold
                deps_done = all(all(flags[k]) for k in self.groups[j].deps if k != i)
                if placed[j] or (lifted[j] and deps_done):
                    flags[i] = [True, True]
        others_done = all(all(f) for f in flags if f is not None)
        close_done = False
        for i, g in enumerate(self.groups):
            if g.kind == "close":
                close_done = others_done and world.drawer.is_closed
                flags[i] = [close_done]
        for i, g in enumerate(self.groups):
            if g.kind == "open":
                # once everything that needed the drawer open is done, closing it undoes nothing
                users = [j for j, h in enumerate(self.groups) if i in h.deps and h.kind != "close"]
                needed_done = bool(users) and all(all(flags[j]) for j in users)
                flags[i] = [world.drawer.is_open or close_done or needed_done]
        return flags  # type: ignore[return-value]

    def progress(self, world: WorldState) -> list[bool]:
        return [f for group in self.group_flags(world) for f in group]

    def success(self, world: WorldState) -> bool:
        return all(self.progress(world)) and world.held is None


def left_to_right(world: WorldState, obj: str | None) -> float:
    """Where a group's block sits from left to right in the front camera (world x; the camera looks
    along +y): the visible tie-break between groups that are equally right. No block: first."""
    if obj is None or obj not in world.blocks:
        return -math.inf
    return float(world.block(obj).pos[0])


def move(obj: str, place: Subtask, deps=(), superseded_by=None) -> Group:
    return Group("move", (pick(obj), place), obj=obj, deps=tuple(deps), superseded_by=superseded_by)


class TaskFamily:
    """Registering a family: subclass `TaskFamily`, implement `_sample` (and `parse` for free-text
    tasks), then `register_family(MyFamily(), suites=("coaching",))`."""

    name: str = ""
    description: str = ""
    max_subtasks: int = 6
    uses_drawer: bool = False
    templates: tuple[str, ...] = ()  # phrasings of the task text; `{...}` fields from params

    @property
    def max_steps(self) -> int:
        """Step budget (10 Hz): about twice what the scripted expert needs."""
        return 100 + 45 * self.max_subtasks

    def sample(self, rng: np.random.Generator, params: dict | None = None) -> TaskInstance:
        """A random instance; `params` (from `parse`) pins what the task text names."""
        for _ in range(50):
            try:
                instance = self._sample(rng, dict(params or {}))
            except NoRoom:
                continue
            instance.family = self.name
            instance.max_steps = self.max_steps
            return instance
        raise RuntimeError(f"{self.name}: could not lay out a scene in 50 tries")

    def _sample(self, rng: np.random.Generator, params: dict) -> TaskInstance:
        raise NotImplementedError

    def follow(self, task: TaskInstance, world: WorldState) -> list[Group] | None:
        """The groups re-derived from the world, for families whose order the world decides; None
        keeps the sampled ones."""
        return None

    _re: re.Pattern | None = None  # the task texts this family understands (named groups = params)

    def parse(self, text: str) -> dict | None:
        """Params named by a free-text task, or None if the text is not this family's."""
        m = self._re.match(normalize(text)) if self._re is not None else None
        return m.groupdict() if m else None

    def phrase(self, rng: np.random.Generator, **fields) -> str:
        return self.templates[int(rng.integers(len(self.templates)))].format(**fields)

    def example(self) -> str:
        return self.templates[0]


def bowl_and_maybe_another(lb: LayoutBuilder, rng, color: str) -> None:
    """The bowl the task names and, half the time, a second one of another colour as a distractor."""
    lb.bowl(color)
    if rng.random() < 0.5:
        lb.bowl(other_colors(rng, [color], 1)[0])


def pick_colors(rng, params: dict, keys: tuple[str, ...]) -> dict:
    """Fill the colour params not named by the task text with distinct random colours."""
    taken = [params[k] for k in keys if params.get(k)]
    if len(set(taken)) != len(taken):
        raise TaskSpecError(f"the colours in this task must differ, got {taken}")
    for k in keys:
        if not params.get(k):
            params[k] = other_colors(rng, taken, 1)[0]
            taken.append(params[k])
    return params


# --- registry: every family by name, and the suites that group them --------------------------------
FAMILIES: dict[str, TaskFamily] = {}
SUITES: dict[str, list[str]] = {"base": []}


def register_family(family: TaskFamily, suites: tuple[str, ...] = ("base",)) -> TaskFamily:
    if not family.name:
        raise ValueError("a task family needs a name")
    FAMILIES[family.name] = family
    for suite in suites:
        members = SUITES.setdefault(suite, [])
        if family.name not in members:
            members.append(family.name)
    return family

