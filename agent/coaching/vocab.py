"""Words the coaching code understands: colours, object nouns, canonical subtask phrasing.

One place for the object vocabulary of the console classifier, the nudge mapper and the scripted
coach. The colours and object kinds the simulator actually builds come from `agent.envs` when
it exposes them (COLORS); the classifier additionally knows a few colours no scene uses, so that
"the purple one" is still recognised as an object reference (and answered with a clear
"no such object" rather than misread as something else).

Canonical subtask language (what the low level executes; see agent.envs.primitives):
    pick up the red block        place it in the blue bowl      stack it on the green block
    put it in the drawer         open the drawer / close the drawer
    push the yellow block to the left
"""

from __future__ import annotations

import re
from dataclasses import dataclass

try:  # the simulator's own colour list wins, so names stay aligned with what the scenes build
    from agent.envs import COLORS as _ENV_COLORS  # type: ignore[attr-defined]
except ImportError:  # agent.envs not built / does not export COLORS: use the team brief's palette
    _ENV_COLORS = ("red", "green", "blue", "yellow")

SCENE_COLORS: tuple[str, ...] = tuple(_ENV_COLORS)
# Extra colour words the classifier recognises as object references even if no scene uses them.
EXTRA_COLORS: tuple[str, ...] = ("orange", "purple", "pink", "white", "black", "cyan", "magenta", "brown", "grey", "gray")
ALL_COLORS: tuple[str, ...] = SCENE_COLORS + tuple(c for c in EXTRA_COLORS if c not in SCENE_COLORS)

# Object kinds and the words people use for them.
BLOCK_NOUNS = ("block", "blocks", "cube", "cubes", "brick", "bricks", "box", "boxes", "piece", "pieces")
BOWL_NOUNS = ("bowl", "bowls", "plate", "plates", "dish", "dishes", "cup", "cups", "container", "basket")
DRAWER_NOUNS = ("drawer", "drawers", "cabinet", "cupboard")
PRONOUN_NOUNS = ("one", "ones")  # "the blue one": the kind comes from context
GRIPPER_NOUNS = ("gripper", "hand", "claw", "fingers", "jaws", "grip", "pincer", "pincers")
SIZE_WORDS = ("small", "smaller", "smallest", "little", "tiny", "big", "bigger", "biggest", "large", "larger", "largest")

PUSH_DIRECTIONS = ("left", "right")  # directions the canonical push subtask takes


def noun_kind(word: str) -> str | None:
    """'cubes' -> 'block', 'plate' -> 'bowl', 'cupboard' -> 'drawer', 'one' -> 'one'; else None."""
    if word in BLOCK_NOUNS:
        return "block"
    if word in BOWL_NOUNS:
        return "bowl"
    if word in DRAWER_NOUNS:
        return "drawer"
    if word in PRONOUN_NOUNS:
        return "one"
    return None


def object_name(color: str | None, kind: str) -> str:
    """Canonical object name: 'red block', 'blue bowl', 'drawer'."""
    if kind == "drawer":
        return "drawer"
    if not color:
        raise ValueError(f"a {kind} needs a colour to be named canonically")
    return f"{color} {kind}"


# ------------------------------------------------------------------ canonical subtasks

def pick_up(color: str) -> str:
    return f"pick up the {color} block"


def place_in_bowl(color: str) -> str:
    return f"place it in the {color} bowl"


def stack_on(color: str) -> str:
    return f"stack it on the {color} block"


def push(color: str, direction: str) -> str:
    return f"push the {color} block to the {direction}"


PUT_IN_DRAWER = "put it in the drawer"
OPEN_DRAWER = "open the drawer"
CLOSE_DRAWER = "close the drawer"

_SUBTASK_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("pick", re.compile(r"^pick up the (\w+) block$")),
    ("place", re.compile(r"^place it in the (\w+) bowl$")),
    ("stack", re.compile(r"^stack it on the (\w+) block$")),
    ("push", re.compile(r"^push the (\w+) block to the (\w+)$")),
    ("drawer_put", re.compile(r"^put it in the drawer$")),
    ("open", re.compile(r"^open the drawer$")),
    ("close", re.compile(r"^close the drawer$")),
)


@dataclass(frozen=True)
class SubtaskParts:
    """A canonical subtask taken apart: verb in pick|place|stack|push|drawer_put|open|close."""

    verb: str
    color: str | None = None
    direction: str | None = None

    @property
    def target(self) -> str | None:
        """The object this subtask is about: 'red block', 'blue bowl', 'drawer'."""
        if self.verb in ("pick", "stack", "push"):
            return object_name(self.color, "block")
        if self.verb == "place":
            return object_name(self.color, "bowl")
        return "drawer"

    @property
    def target_kind(self) -> str:
        return {"place": "bowl", "drawer_put": "drawer", "open": "drawer", "close": "drawer"}.get(self.verb, "block")

    def text(self) -> str:
        return build_subtask(self.verb, self.color, self.direction)


def split_subtask(subtask: str | None) -> SubtaskParts | None:
    """Parse a canonical subtask string; None if it is not one (free text, None)."""
    if not subtask:
        return None
    text = " ".join(subtask.lower().split()).rstrip(".")
    for verb, pattern in _SUBTASK_PATTERNS:
        m = pattern.match(text)
        if m:
            groups = m.groups()
            return SubtaskParts(verb, groups[0] if groups else None, groups[1] if len(groups) > 1 else None)
    return None


def build_subtask(verb: str, color: str | None = None, direction: str | None = None) -> str:
    """The canonical text of a subtask from its parts (inverse of split_subtask)."""
    if verb == "pick":
        return pick_up(_need(color, verb))
    if verb == "place":
        return place_in_bowl(_need(color, verb))
    if verb == "stack":
        return stack_on(_need(color, verb))
    if verb == "push":
        return push(_need(color, verb), _need(direction, verb))
    if verb == "drawer_put":
        return PUT_IN_DRAWER
    if verb == "open":
        return OPEN_DRAWER
    if verb == "close":
        return CLOSE_DRAWER
    raise ValueError(f"unknown subtask verb {verb!r}")


def _need(value: str | None, verb: str) -> str:
    if not value:
        raise ValueError(f"a {verb!r} subtask needs a colour/direction")
    return value
