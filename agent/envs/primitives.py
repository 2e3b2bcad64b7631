"""The canonical subtask language and one success detector per primitive.

Subtasks are what the low level executes, so they come from a small fixed grammar:

    pick up the red block            place it in the blue bowl      stack it on the green block
    put it in the drawer             open the drawer                close the drawer
    push the yellow block to the left                               put it down on the table

A block is named "<colour> block", or "<size> <colour> block" when two blocks share a colour.
`parse_subtask` accepts any case, articles or not, extra whitespace and a trailing full stop.
"it" is the block picked by the preceding pick (the detector is told which one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from agent.envs.scene import COLORS
from agent.envs.world import WorldState

KINDS = ("pick", "place", "stack", "drawer_put", "open", "close", "push", "put_down")
PLACE_KINDS = ("place", "stack", "drawer_put", "put_down")  # act on "it", the held block
DIRECTIONS = ("left", "right", "front")
SIZES = ("small", "large")


class SubtaskParseError(ValueError):
    pass


@dataclass(frozen=True)
class Subtask:
    kind: str
    obj: str | None = None  # block display name (pick, push)
    target: str | None = None  # "blue bowl" (place), a block name (stack), a direction (push)

    @property
    def text(self) -> str:
        return {
            "pick": lambda: f"pick up the {self.obj}",
            "place": lambda: f"place it in the {self.target}",
            "stack": lambda: f"stack it on the {self.target}",
            "drawer_put": lambda: "put it in the drawer",
            "open": lambda: "open the drawer",
            "close": lambda: "close the drawer",
            "push": lambda: f"push the {self.obj} to the {self.target}",
            "put_down": lambda: "put it down on the table",
        }[self.kind]()

    def __str__(self) -> str:
        return self.text


# --- constructors (keep call sites readable) ------------------------------------------------------
def pick(obj: str) -> Subtask:
    return Subtask("pick", obj=obj)


def place_in_bowl(bowl: str) -> Subtask:
    return Subtask("place", target=bowl if bowl.endswith(" bowl") else f"{bowl} bowl")


def stack_on(block: str) -> Subtask:
    return Subtask("stack", target=block)


def put_in_drawer() -> Subtask:
    return Subtask("drawer_put")


def open_drawer() -> Subtask:
    return Subtask("open")


def close_drawer() -> Subtask:
    return Subtask("close")


def push(obj: str, direction: str) -> Subtask:
    return Subtask("push", obj=obj, target=direction)


def put_down() -> Subtask:
    return Subtask("put_down")


# --- parsing --------------------------------------------------------------------------------------
_COLOR = "|".join(COLORS)
_BLOCK = rf"(?:(?P<{{p}}size>{'|'.join(SIZES)}) )?(?P<{{p}}color>{_COLOR}) (?:block|cube)"


def _block(prefix: str) -> str:
    return _BLOCK.replace("{p}", prefix)


_PATTERNS: list[tuple[str, re.Pattern]] = [
    ("pick", re.compile(rf"^(?:pick up|pick|grab|grasp) {_block('o')}(?: up)?$")),
    ("place", re.compile(rf"^(?:place|put|drop) it (?:in|into|inside) (?P<bowl>{_COLOR}) bowl$")),
    ("stack", re.compile(rf"^(?:stack|place|put) it (?:on|onto|on top of) {_block('t')}$")),
    ("drawer_put", re.compile(r"^(?:put|place|drop) it (?:in|into|inside) drawer$")),
    ("open", re.compile(r"^open drawer$")),
    ("close", re.compile(r"^(?:close|shut) drawer$")),
    ("push", re.compile(rf"^push {_block('o')} (?:to|towards|toward) (?P<dir>{'|'.join(DIRECTIONS)})(?: side)?(?: of table)?$")),
    ("put_down", re.compile(r"^(?:put|place|set) it down(?: on table)?$")),
]

_ARTICLES = re.compile(r"\b(?:the|a|an)\b")


def normalize(text: str) -> str:
    """Lower case, no articles, single spaces, no trailing punctuation."""
    t = text.lower().strip().rstrip(".!;,")
    t = _ARTICLES.sub(" ", t)
    return re.sub(r"\s+", " ", t).strip()


def _name(match: re.Match, prefix: str) -> str:
    size = match.group(f"{prefix}size")
    color = match.group(f"{prefix}color")
    return f"{size} {color} block" if size else f"{color} block"


def parse_subtask(text: str) -> Subtask:
    """Parse subtask text in the canonical grammar (tolerant to case, articles and spacing)."""
    if not isinstance(text, str) or not text.strip():
        raise SubtaskParseError(f"empty subtask text: {text!r}")
    norm = normalize(text)
    for kind, pattern in _PATTERNS:
        m = pattern.match(norm)
        if not m:
            continue
        if kind == "pick":
            return pick(_name(m, "o"))
        if kind == "place":
            return place_in_bowl(m.group("bowl"))
        if kind == "stack":
            return stack_on(_name(m, "t"))
        if kind == "push":
            return push(_name(m, "o"), m.group("dir"))
        return Subtask(kind)
    examples = "; ".join(
        s.text
        for s in (pick("red block"), place_in_bowl("blue"), stack_on("green block"), put_in_drawer(),
                  open_drawer(), close_drawer(), push("yellow block", "left"), put_down())
    )
    raise SubtaskParseError(
        f"cannot parse subtask {text!r}. Known forms: {examples} "
        f"(colours: {', '.join(COLORS)}; sizes: {', '.join(SIZES)}; directions: {', '.join(DIRECTIONS)})"
    )


def matching_blocks(world: WorldState, name: str) -> list[str]:
    """The scene's blocks a phrase can mean: "red block" fits "red block" and "large red block"."""
    return [b for b in world.blocks if b.endswith(name)]


def resolve_block(world: WorldState, name: str, near=None) -> str:
    """Map a block phrase to the display name used in this scene ("red block" may mean the only red
    block even if the scene calls it "large red block"). A phrase that fits several blocks is an
    error, unless `near` (a position) is given: then it means the one nearest to it, as a person
    told "the blue block" with two in reach would take the closer one."""
    if name in world.blocks:
        return name
    candidates = matching_blocks(world, name)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise KeyError(f"no {name!r} in this scene; blocks: {sorted(world.blocks)}")
    if near is not None:
        xy = np.asarray(near, dtype=np.float64)[:2]
        return min(sorted(candidates), key=lambda b: float(np.linalg.norm(world.blocks[b].pos[:2] - xy)))
    raise KeyError(f"{name!r} is ambiguous here; say one of {sorted(candidates)}")


# --- success detectors ----------------------------------------------------------------------------
def is_satisfied(world: WorldState, subtask: Subtask, it: str | None = None) -> bool:
    """Whether the effect of `subtask` holds now. `it` names the block a place-type subtask moves."""
    kind = subtask.kind
    if kind == "pick":  # a name that fits several blocks ("the blue block") is done when one of them is up
        if subtask.obj in world.blocks:
            return world.is_lifted(subtask.obj)
        fits = matching_blocks(world, subtask.obj) or [resolve_block(world, subtask.obj)]  # none: KeyError
        return any(world.is_lifted(b) for b in fits)
    if kind == "open":
        return world.drawer.is_open
    if kind == "close":
        return world.drawer.is_closed
    if kind == "push":
        name = resolve_block(world, subtask.obj)
        return world.held != name and world.side_of(name) == subtask.target
    if it is None:
        raise ValueError(f"{subtask.text!r} needs to know which block 'it' is")
    it = resolve_block(world, it)
    if kind == "place":
        return world.in_bowl(it, subtask.target)
    if kind == "stack":
        return world.on_block(it, resolve_block(world, subtask.target))
    if kind == "drawer_put":
        return world.in_drawer(it)
    if kind == "put_down":
        return world.on_table(it)
    raise ValueError(f"unknown subtask kind {kind!r}")
