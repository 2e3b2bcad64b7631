"""Long-horizon task families built from the primitives.

A family samples a randomised `TaskInstance`: a scene layout (which blocks and bowls, colours,
positions, the drawer's opening), a task text in one of several phrasings, and a reference
decomposition into `Group`s of canonical subtasks (a "move" group is pick + place/stack/put; "open",
"close" and "push" groups are single subtasks). Groups may be done in any order their `deps` allow,
which is what lets the oracle honour "not that one first".

Registering a family: subclass `TaskFamily`, implement `sample` (and `parse` for free-text tasks),
then `register_family(MyFamily(), suites=("coaching",))`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from agent.envs import scene as S
from agent.envs.primitives import is_satisfied
from policies.grammar import (
    COLORS as COLOR_NAMES,
    Subtask,
    close_drawer,
    normalize,
    open_drawer,
    pick,
    place_in_bowl,
    push,
    put_in_drawer,
    stack_on,
)
from agent.envs.world import PUSH_SIDE_X, WorldState


class TaskSpecError(ValueError):
    pass


# --- layout ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockSpec:
    body: str
    color: str
    size: str
    name: str
    xy: tuple[float, float]
    yaw: float
    z_base: float = 0.0  # height of the surface it starts on (bowl base for blocks in bowls)


@dataclass(frozen=True)
class BowlSpec:
    body: str
    color: str
    xy: tuple[float, float]

    @property
    def name(self) -> str:
        return f"{self.color} bowl"


@dataclass(frozen=True)
class Layout:
    blocks: tuple[BlockSpec, ...]
    bowls: tuple[BowlSpec, ...]
    drawer_opening: float = 0.0


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


# --- sampling helpers -----------------------------------------------------------------------------
OBJECT_REGION = ((-0.27, 0.27), (-0.23, 0.14))
BLOCK_CLEARANCE = 0.05  # radius kept free around a block (the open jaws reach 5 cm out)
BOWL_CLEARANCE = 0.085
BLOCK_BOWL_GAP = 0.135  # centre distance block-bowl so an open jaw clears the rim


def left_to_right(world: WorldState, obj: str | None) -> float:
    """Where a group's block sits from left to right in the front camera (world x; the camera looks
    along +y): the visible tie-break between groups that are equally right. No block: first."""
    if obj is None or obj not in world.blocks:
        return -math.inf
    return float(world.block(obj).pos[0])


def _excluded(x: float, y: float, r: float, uses_drawer: bool) -> bool:
    """Keep objects off the cabinet and, for drawer tasks, out of the open drawer's sweep."""
    if uses_drawer:
        return x + r > 0.08 and y + r > -0.14
    return x + r > 0.09 and y + r > 0.04


class Placer:
    """Rejection sampler for non-overlapping discs on the table."""

    def __init__(self, rng: np.random.Generator, uses_drawer: bool):
        self.rng = rng
        self.uses_drawer = uses_drawer
        self.discs: list[tuple[float, float, float, str]] = []  # x, y, radius, kind

    def _free(self, x: float, y: float, r: float, kind: str) -> bool:
        if _excluded(x, y, r, self.uses_drawer):
            return False
        for ox, oy, orad, okind in self.discs:
            need = r + orad
            if {kind, okind} == {"block", "bowl"}:
                need = BLOCK_BOWL_GAP
            if math.hypot(x - ox, y - oy) < need:
                return False
        return True

    def place(self, kind: str, region=OBJECT_REGION, tries: int = 400) -> tuple[float, float]:
        r = BLOCK_CLEARANCE if kind == "block" else BOWL_CLEARANCE
        (x0, x1), (y0, y1) = region
        for _ in range(tries):
            x = float(self.rng.uniform(x0 + r * 0.6, x1 - r * 0.6))
            y = float(self.rng.uniform(y0 + r * 0.6, y1 - r * 0.6))
            if self._free(x, y, r, kind):
                self.discs.append((x, y, r, kind))
                return x, y
        raise _NoRoom(kind)

    def reserve(self, x: float, y: float, r: float, kind: str) -> None:
        self.discs.append((x, y, r, kind))


class _NoRoom(RuntimeError):
    pass


def block_names(specs: list[tuple[str, str]]) -> list[str]:
    """Display names for (colour, size) pairs: the size is said only when a colour repeats."""
    colors = [c for c, _ in specs]
    return [f"{s} {c} block" if colors.count(c) > 1 else f"{c} block" for c, s in specs]


class LayoutBuilder:
    """Chooses bodies for requested blocks/bowls and places them."""

    def __init__(self, rng: np.random.Generator, uses_drawer: bool = False):
        self.rng = rng
        self.placer = Placer(rng, uses_drawer)
        self.block_requests: list[tuple[str, str, tuple[float, float] | None, float]] = []
        self.bowls: list[BowlSpec] = []

    def bowl(self, color: str) -> BowlSpec:
        x, y = self.placer.place("bowl")
        spec = BowlSpec(S.BOWL_BODIES[len(self.bowls)], color, (x, y))
        self.bowls.append(spec)
        return spec

    def block(self, color: str, size: str | None = None, xy=None, z_base: float = 0.0) -> int:
        size = size or ("small" if self.rng.random() < 0.5 else "large")
        if xy is None:
            xy = self.placer.place("block")
        self.block_requests.append((color, size, xy, z_base))
        return len(self.block_requests) - 1

    def build(self, drawer_opening: float = 0.0) -> tuple[Layout, list[str]]:
        small = [b for b in S.BLOCK_BODIES if S.BLOCK_HALF[b] == S.SMALL_HALF]
        large = [b for b in S.BLOCK_BODIES if S.BLOCK_HALF[b] == S.LARGE_HALF]
        names = block_names([(c, s) for c, s, _, _ in self.block_requests])
        specs = []
        for (color, size, xy, z_base), name in zip(self.block_requests, names):
            pool = small if size == "small" else large
            if not pool:
                raise _NoRoom(f"{size} block")
            body = pool.pop(0)
            yaw = float(self.rng.uniform(-math.pi / 4, math.pi / 4))
            specs.append(BlockSpec(body, color, size, name, (float(xy[0]), float(xy[1])), yaw, z_base))
        return Layout(tuple(specs), tuple(self.bowls), drawer_opening), names


def _other_colors(rng, exclude, k) -> list[str]:
    pool = [c for c in COLOR_NAMES if c not in exclude]
    return [str(c) for c in rng.choice(pool, size=k, replace=False)]


def move(obj: str, place: Subtask, deps=(), superseded_by=None) -> Group:
    return Group("move", (pick(obj), place), obj=obj, deps=tuple(deps), superseded_by=superseded_by)


# --- families -------------------------------------------------------------------------------------
class TaskFamily:
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
            except _NoRoom:
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


def bowl_and_maybe_another(lb: "LayoutBuilder", rng, color: str) -> None:
    """The bowl the task names and, half the time, a second one of another colour as a distractor."""
    lb.bowl(color)
    if rng.random() < 0.5:
        lb.bowl(_other_colors(rng, [color], 1)[0])


def _pick_colors(rng, params: dict, keys: tuple[str, ...]) -> dict:
    """Fill the colour params not named by the task text with distinct random colours."""
    taken = [params[k] for k in keys if params.get(k)]
    if len(set(taken)) != len(taken):
        raise TaskSpecError(f"the colours in this task must differ, got {taken}")
    for k in keys:
        if not params.get(k):
            params[k] = _other_colors(rng, taken, 1)[0]
            taken.append(params[k])
    return params


_C = "|".join(COLOR_NAMES)


class PutColorInBowl(TaskFamily):
    name = "put_color_in_bowl"
    description = "put every block of one colour into a bowl"
    max_subtasks = 4
    templates = (
        "put all the {color} blocks in the {bowl} bowl",
        "move every {color} block into the {bowl} bowl",
        "place the {color} blocks inside the {bowl} bowl",
        "gather all {color} blocks in the {bowl} bowl",
    )
    _re = re.compile(rf"^(?:put|move|place|gather) (?:all |every )?(?P<color>{_C}) blocks? (?:in|into|inside) (?P<bowl>{_C}) bowl$")

    def _sample(self, rng, params):
        params = _pick_colors(rng, params, ("color", "bowl"))
        color, bowl = params["color"], params["bowl"]
        lb = LayoutBuilder(rng)
        lb.bowl(bowl)
        lb.bowl(_other_colors(rng, [bowl], 1)[0])
        n = int(rng.integers(1, 3))
        targets = [lb.block(color, size) for size in (["small", "large"] if n == 2 else [None])]
        for c in _other_colors(rng, [color], int(rng.integers(1, 3))):
            lb.block(c)
        layout, names = lb.build()
        order = [int(i) for i in rng.permutation(targets)]
        groups = [move(names[i], place_in_bowl(bowl)) for i in order]
        return TaskInstance(self.name, self.phrase(rng, **params), layout, groups, params)


class SortIntoBowls(TaskFamily):
    name = "sort_into_bowls"
    description = "put each block into the bowl of its colour"
    max_subtasks = 6
    templates = (
        "sort the blocks into the bowls of the same colour",
        "put each block in the bowl that matches its colour",
        "match the blocks to the bowls by colour",
        "sort the blocks by colour into the bowls",
    )
    _re = re.compile(r"^(?:sort .*bowls?.*|(?:put|place) each block in(?:to)? bowl .*colou?r.*|match blocks to bowls.*)$")

    def _sample(self, rng, params):
        k = int(rng.integers(2, 4))
        colors = _other_colors(rng, [], k)
        lb = LayoutBuilder(rng)
        for c in colors:
            lb.bowl(c)
        blocks = [lb.block(c) for c in colors]
        if rng.random() < 0.5:
            lb.block(_other_colors(rng, colors, 1)[0])  # a distractor with no bowl of its colour
        layout, names = lb.build()
        order = [int(i) for i in rng.permutation(len(blocks))]
        groups = [move(names[blocks[i]], place_in_bowl(colors[i])) for i in order]
        return TaskInstance(self.name, self.phrase(rng), layout, groups, {"colors": colors})


class StackThree(TaskFamily):
    name = "stack_three"
    description = "stack three named blocks in a named order"
    max_subtasks = 4
    templates = (
        "stack the {middle} block on the {bottom} block, then the {top} block on the {middle} block",
        "build a tower with the {bottom} block at the bottom, then the {middle} block, then the {top} block on top",
        "put the {middle} block on the {bottom} block and the {top} block on the {middle} block",
    )
    _res = (
        re.compile(rf"^(?:stack|put) (?P<middle>{_C}) block on (?P<bottom>{_C}) block,? (?:and )?(?:then )?(?P<top>{_C}) block on (?P<middle2>{_C}) block$"),
        re.compile(rf"^build tower with (?P<bottom>{_C}) block at bottom,? then (?P<middle>{_C}) block,? then (?P<top>{_C}) block(?: on top)?$"),
    )

    def parse(self, text):
        norm = normalize(text)
        for r in self._res:
            m = r.match(norm)
            if m:
                d = m.groupdict()
                if d.pop("middle2", d["middle"]) != d["middle"]:
                    return None
                return d
        return None

    def _sample(self, rng, params):
        params = _pick_colors(rng, params, ("bottom", "middle", "top"))
        lb = LayoutBuilder(rng)
        # sizes never grow upwards, so every tower is stable
        sizes = sorted(["small" if rng.random() < 0.5 else "large" for _ in range(3)], key=lambda s: s != "large")
        ids = [lb.block(params[k], s) for k, s in zip(("bottom", "middle", "top"), sizes)]
        for c in _other_colors(rng, [params[k] for k in ("bottom", "middle", "top")], int(rng.integers(0, 3))):
            lb.block(c)
        if rng.random() < 0.5:
            lb.bowl(_other_colors(rng, [], 1)[0])
        layout, names = lb.build()
        b, m, t = (names[i] for i in ids)
        groups = [move(m, stack_on(b)), move(t, stack_on(m), deps=(0,))]
        return TaskInstance(self.name, self.phrase(rng, **params), layout, groups, params)


class TowerOfN(TaskFamily):
    name = "tower_of_n"
    description = "stack all the blocks on the table into one tower"
    max_subtasks = 6
    templates = (
        "stack all the blocks into a single tower",
        "build one tower out of all the blocks",
        "put all the blocks on top of each other",
        "make a tower from every block on the table",
    )
    _re = re.compile(r"^(?:stack all blocks.*|build one tower.*|put all blocks on top of each other|make tower from every block.*)$")

    def _sample(self, rng, params):
        n = int(params.get("n") or rng.integers(3, 5))
        colors = _other_colors(rng, [], n)
        lb = LayoutBuilder(rng)
        if rng.random() < 0.4:
            lb.bowl(_other_colors(rng, [], 1)[0])
        sizes = ["large", "large"] + ["small"] * (n - 2)  # large ones at the bottom
        for c, s in zip(colors, sizes):
            lb.block(c, s)
        layout, _ = lb.build()
        # The order the cameras show: large blocks before small ones (a stable tower), each size
        # left to right in the front camera. Any tower of all the blocks succeeds (see `follow`).
        specs = sorted(layout.blocks, key=lambda b: (b.size != "large", b.xy[0]))
        order = [b.name for b in specs]
        return TaskInstance(self.name, self.phrase(rng), layout, self._groups(order), {"n": n, "order": order})

    @staticmethod
    def _groups(order: list[str]) -> list[Group]:
        return [move(order[i], stack_on(order[i - 1]), deps=(i - 2,) if i > 1 else ()) for i in range(1, len(order))]

    def follow(self, task, world):
        """Follow the tower being built, whatever its order: the tallest stack of these blocks (ties:
        the base earliest in the visible order) is the tower, the block in the jaws goes on it next,
        then the rest in the visible order."""
        visible = [b for b in task.params["order"] if b in world.blocks]

        def stack_from(base: str) -> list[str]:
            chain = [base]
            while above := [b for b in visible if b not in chain and world.on_block(b, chain[-1])]:
                chain.append(above[0])
            return chain

        bases = [b for b in visible if world.held != b and not any(world.on_block(b, o) for o in visible if o != b)]
        if not bases:
            return None
        tower = max((stack_from(b) for b in bases), key=len)  # max keeps the first of equal lengths
        rest = [b for b in visible if b not in tower]
        rest.sort(key=lambda b: b != world.held)  # stable: the visible order otherwise
        return self._groups(tower + rest)


class BlockInDrawerAndClose(TaskFamily):
    name = "block_in_drawer_and_close"
    description = "open the drawer, put a block inside, close it"
    max_subtasks = 4
    uses_drawer = True
    templates = (
        "put the {color} block in the drawer and close it",
        "open the drawer, put the {color} block inside and close it",
        "store the {color} block in the drawer",
        "put away the {color} block in the drawer and shut it",
    )
    _re = re.compile(rf"^(?:open drawer,? )?(?:put|store|place)(?: away)? (?P<color>{_C}) block (?:in|into|inside)(?: drawer)?(?:,? and (?:close|shut) it)?$")

    def parse(self, text):
        norm = normalize(text)
        if "drawer" not in norm:
            return None
        m = self._re.match(norm.replace(" in drawer", " in").replace(" into drawer", " into"))
        return m.groupdict() if m else None

    def _sample(self, rng, params):
        params = _pick_colors(rng, params, ("color",))
        lb = LayoutBuilder(rng, uses_drawer=True)
        if rng.random() < 0.5:
            lb.bowl(_other_colors(rng, [], 1)[0])
        target = lb.block(params["color"])
        for c in _other_colors(rng, [params["color"]], int(rng.integers(1, 3))):
            lb.block(c)
        layout, names = lb.build()
        groups = [Group("open", (open_drawer(),)), move(names[target], put_in_drawer(), deps=(0,)),
                  Group("close", (close_drawer(),), deps=(1,))]
        return TaskInstance(self.name, self.phrase(rng, **params), layout, groups, params)


class ClearTableIntoDrawer(TaskFamily):
    name = "clear_table_into_drawer"
    description = "put every block into the drawer and close it"
    max_subtasks = 6
    uses_drawer = True
    templates = (
        "put all the blocks in the drawer and close it",
        "clear the table: every block goes into the drawer, then shut it",
        "tidy all the blocks away into the drawer and close it",
    )
    _re = re.compile(r"^(?:(?:put|tidy) all blocks (?:away )?in(?:to)? drawer.*|clear table.*drawer.*)$")

    def _sample(self, rng, params):
        lb = LayoutBuilder(rng, uses_drawer=True)
        colors = _other_colors(rng, [], 2)
        ids = [lb.block(c) for c in colors]
        if rng.random() < 0.5:
            lb.bowl(_other_colors(rng, [], 1)[0])
        layout, names = lb.build()
        groups = [Group("open", (open_drawer(),))]
        groups += [move(names[i], put_in_drawer(), deps=(0,)) for i in ids]
        groups.append(Group("close", (close_drawer(),), deps=tuple(range(1, len(groups)))))
        return TaskInstance(self.name, self.phrase(rng), layout, groups, {})


class PushToSide(TaskFamily):
    name = "push_to_side"
    description = "push blocks to the left or right side of the table"
    max_subtasks = 2
    templates = (
        "push the {a} block to the {da} and the {b} block to the {db}",
        "slide the {a} block to the {da} side and the {b} block to the {db} side",
        "move the {a} block to the {da} and the {b} block to the {db} by pushing them",
    )
    _re = re.compile(
        rf"^(?:push|slide|move) (?P<a>{_C}) block to (?P<da>left|right)(?: side)? and (?P<b>{_C}) block to (?P<db>left|right)(?: side)?(?: by pushing them)?$"
    )
    _single = re.compile(rf"^(?:push|slide) (?P<a>{_C}) block to (?P<da>left|right)(?: side)?(?: of table)?$")

    def parse(self, text):
        norm = normalize(text)
        m = self._re.match(norm) or self._single.match(norm)
        return m.groupdict() if m else None

    def _sample(self, rng, params):
        single = "a" in params and "b" not in params
        params = _pick_colors(rng, params, ("a",) if single else ("a", "b"))
        for k in ("da", "db"):
            params.setdefault(k, "left" if rng.random() < 0.5 else "right")
        lb = LayoutBuilder(rng)
        keys = ("a",) if single else ("a", "b")
        # the pushed blocks start near the middle, in lanes far enough apart for the gripper
        lanes = sorted(rng.choice(np.arange(-0.20, 0.0, 0.01), size=len(keys), replace=False))
        while len(lanes) == 2 and lanes[1] - lanes[0] < 0.09:
            lanes = sorted(rng.choice(np.arange(-0.20, 0.0, 0.01), size=2, replace=False))
        ids = []
        for k, y in zip(keys, lanes):
            x = float(rng.uniform(-0.05, 0.05))
            lb.placer.reserve(x, float(y), BLOCK_CLEARANCE, "block")
            lb.placer.reserve(-0.2, float(y), 0.04, "lane")
            lb.placer.reserve(0.2, float(y), 0.04, "lane")
            ids.append(lb.block(params[k], xy=(x, float(y))))
        for c in _other_colors(rng, [params[k] for k in keys], int(rng.integers(0, 2))):
            x, y = lb.placer.place("block", region=((-0.27, 0.27), (0.04, 0.14)))
            lb.block_requests.append((c, "small" if rng.random() < 0.5 else "large", (x, y), 0.0))
        layout, names = lb.build()
        groups = [Group("push", (push(names[i], params[d]),), obj=names[i]) for i, d in zip(ids, ("da", "db"))]
        text = (f"push the {params['a']} block to the {params['da']}" if single else self.phrase(rng, **params))
        return TaskInstance(self.name, text, layout, groups, params)


class SwapBowls(TaskFamily):
    name = "swap_bowls"
    description = "swap the blocks in two bowls, using the third bowl as a spare"
    max_subtasks = 6
    templates = (
        "swap the blocks in the {a} and {b} bowls",
        "exchange the blocks between the {a} bowl and the {b} bowl",
        "switch the blocks in the {a} bowl and the {b} bowl",
    )
    _re = re.compile(rf"^(?:swap|exchange|switch) blocks (?:in|between) (?P<a>{_C})(?: bowl)? and (?P<b>{_C}) bowls?$")

    def _sample(self, rng, params):
        params = _pick_colors(rng, params, ("a", "b", "spare"))
        lb = LayoutBuilder(rng)
        bowl_a, bowl_b, _ = (lb.bowl(params[k]) for k in ("a", "b", "spare"))
        # the blocks' colours differ from every bowl so the task stays about position
        cx, cy = _other_colors(rng, [params[k] for k in ("a", "b", "spare")], 2)
        x = lb.block(cx, xy=self._in_bowl(rng, bowl_a), z_base=S.BOWL_BASE_TOP)
        y = lb.block(cy, xy=self._in_bowl(rng, bowl_b), z_base=S.BOWL_BASE_TOP)
        layout, names = lb.build()
        X, Y = names[x], names[y]
        groups = [
            move(X, place_in_bowl(params["spare"]), superseded_by=2),
            move(Y, place_in_bowl(params["a"]), deps=(0,)),
            move(X, place_in_bowl(params["b"]), deps=(1,)),
        ]
        return TaskInstance(self.name, self.phrase(rng, **params), layout, groups, params)

    @staticmethod
    def _in_bowl(rng, bowl: BowlSpec) -> tuple[float, float]:
        r, a = rng.uniform(0, 0.015), rng.uniform(0, 2 * math.pi)
        return bowl.xy[0] + r * math.cos(a), bowl.xy[1] + r * math.sin(a)


class StackInBowl(TaskFamily):
    name = "stack_in_bowl"
    description = "put a block in a bowl and stack another on it"
    max_subtasks = 4
    templates = (
        "put the {a} block in the {bowl} bowl and stack the {b} block on it",
        "place the {a} block into the {bowl} bowl, then put the {b} block on top of it",
        "put the {a} block in the {bowl} bowl with the {b} block stacked on top",
    )
    _re = re.compile(
        rf"^(?:put|place) (?P<a>{_C}) block in(?:to)? (?P<bowl>{_C}) bowl,? (?:and |then )?(?:stack|put|with) (?P<b>{_C}) block(?: stacked)? on(?: top)?(?: of)?(?: it)?$"
    )

    def _sample(self, rng, params):
        params = _pick_colors(rng, params, ("a", "b", "bowl"))
        lb = LayoutBuilder(rng)
        bowl_and_maybe_another(lb, rng, params["bowl"])
        a = lb.block(params["a"], "large")
        b = lb.block(params["b"], "small" if rng.random() < 0.6 else "large")
        for c in _other_colors(rng, [params["a"], params["b"]], int(rng.integers(0, 2))):
            lb.block(c)
        layout, names = lb.build()
        groups = [move(names[a], place_in_bowl(params["bowl"])), move(names[b], stack_on(names[a]), deps=(0,))]
        return TaskInstance(self.name, self.phrase(rng, **params), layout, groups, params)


# --- registry -------------------------------------------------------------------------------------
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


for _family in (PutColorInBowl(), SortIntoBowls(), StackThree(), TowerOfN(), BlockInDrawerAndClose(),
                ClearTableIntoDrawer(), PushToSide(), SwapBowls(), StackInBowl()):
    register_family(_family)


def get_family(name: str) -> TaskFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; valid families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def get_suite(name: str) -> list[str]:
    if name not in SUITES or not SUITES[name]:
        valid = [s for s, members in SUITES.items() if members]
        raise ValueError(f"unknown or empty suite {name!r}; valid suites: {', '.join(valid)}")
    return SUITES[name]


def parse_task(text: str, families: list[str] | None = None) -> tuple[str, dict]:
    """(family, params) for a free-text task, or a ValueError listing the forms understood."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the task text is empty")
    for name in families or list(FAMILIES):
        params = FAMILIES[name].parse(text)
        if params is not None:
            return name, params
    examples = "\n  ".join(FAMILIES[n].example() for n in (families or list(FAMILIES)))
    raise ValueError(f"cannot understand the task {text!r}. Tasks look like:\n  {examples}")
