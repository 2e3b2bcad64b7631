"""What the planner sees, in one fixed grammar: the first part of its grounded chain of thought.

    scene = scene_from_facts(facts, task)          # the simulator's facts -> a Scene (training labels)
    text = format_scene(scene)
    # "I see: green block on the table at the left, red block in the blue bowl, blue block in the gripper; drawer shut."
    parse_scene(text) == scene                     # SceneParseError on text outside the grammar

Every block present, left to right as the front camera shows them (world x: the camera looks along
+y, the order the oracle breaks ties in); a block on the table with its side (where a push is going);
the drawer's state only where the task names the drawer. One canonical form and no synonyms, so a text
loss on it teaches reading, not style, and a parser (the console, the grammar-constrained decoder)
reads it back exactly. The planner writes this line, then " So: <subtask>" (policies/planning.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCENE_OPEN = "I see: "
# Where a block can be. "absent" is the read-out's class for a name the scene does not hold; it is
# never written in a line (absent blocks are simply not listed).
PLACES = ("absent", "table", "held", "drawer", "moving", "bowl", "block")
SIDES = ("left", "middle", "right")
SIDE_X = 0.15  # |world x| beyond which a block on the table is at that side (the push detector's line)


class SceneParseError(ValueError):
    """Text that is not a scene line of the grammar above."""


@dataclass(frozen=True)
class SeenBlock:
    name: str  # "red block", "large red block"
    place: str  # one of PLACES but "absent"
    where: str | None = None  # the bowl ("blue bowl") or the block beneath ("green block")
    side: str | None = None  # on the table: left / middle / right

    def phrase(self) -> str:
        return {
            "table": lambda: f"{self.name} on the table at the {self.side}",
            "held": lambda: f"{self.name} in the gripper",
            "drawer": lambda: f"{self.name} in the drawer",
            "moving": lambda: f"{self.name} moving",
            "bowl": lambda: f"{self.name} in the {self.where}",
            "block": lambda: f"{self.name} on the {self.where}",
        }[self.place]()


@dataclass(frozen=True)
class Scene:
    blocks: tuple[SeenBlock, ...]  # left to right
    drawer_open: bool | None = None  # None: not said (the task does not name the drawer)

    def block(self, name: str) -> SeenBlock | None:
        return next((b for b in self.blocks if b.name == name), None)


def side_of(x: float) -> str:
    return "left" if x < -SIDE_X else "right" if x > SIDE_X else "middle"


def mentions_drawer(task: str) -> bool:
    return "drawer" in task.lower()


def scene_from_facts(facts: dict, task: str) -> Scene:
    """The Scene the simulator's facts (agent/envs/scene_facts.py, blocks already left to right) describe."""
    blocks = []
    for name, fact in sorted(facts["blocks"].items(), key=lambda item: item[1]["x"]):
        place = fact["place"]
        blocks.append(SeenBlock(name, place, fact.get("where") if place in ("bowl", "block") else None,
                                side_of(fact["x"]) if place == "table" else None))
    return Scene(tuple(blocks), bool(facts["drawer_open"]) if mentions_drawer(task) else None)


def format_scene(scene: Scene) -> str:
    seen = ", ".join(b.phrase() for b in scene.blocks) or "no block"
    drawer = "" if scene.drawer_open is None else f"; drawer {'open' if scene.drawer_open else 'shut'}"
    return f"{SCENE_OPEN}{seen}{drawer}."


def split_scene(thought: str) -> tuple[str | None, str]:
    """(the scene line a thought opens with, or None; the rest of the thought) - for showing a person
    what the robot believes apart from why it decides."""
    if not thought.startswith(SCENE_OPEN):
        return None, thought
    end = thought.find(".", len(SCENE_OPEN))
    if end < 0:
        return thought, ""
    return thought[: end + 1], thought[end + 1:].strip()


_NAME = r"(?:(?:small|large) )?[a-z]+ block"
_PHRASES = (
    (re.compile(rf"^({_NAME}) on the table at the (left|middle|right)$"), lambda m: SeenBlock(m[1], "table", side=m[2])),
    (re.compile(rf"^({_NAME}) in the gripper$"), lambda m: SeenBlock(m[1], "held")),
    (re.compile(rf"^({_NAME}) in the drawer$"), lambda m: SeenBlock(m[1], "drawer")),
    (re.compile(rf"^({_NAME}) moving$"), lambda m: SeenBlock(m[1], "moving")),
    (re.compile(rf"^({_NAME}) in the ([a-z]+ bowl)$"), lambda m: SeenBlock(m[1], "bowl", where=m[2])),
    (re.compile(rf"^({_NAME}) on the ({_NAME})$"), lambda m: SeenBlock(m[1], "block", where=m[2])),
)


def parse_scene(text: str) -> Scene:
    """A scene line back into a Scene (the exact grammar of format_scene; any text after it is ignored)."""
    if not text.startswith(SCENE_OPEN):
        raise SceneParseError(f"a scene line starts with {SCENE_OPEN!r}: {text[:60]!r}")
    end = text.find(".", len(SCENE_OPEN))
    if end < 0:
        raise SceneParseError(f"a scene line ends with '.': {text[:80]!r}")
    body = text[len(SCENE_OPEN):end]
    drawer_open = None
    if "; drawer " in body:
        body, state = body.rsplit("; drawer ", 1)
        if state not in ("open", "shut"):
            raise SceneParseError(f"the drawer is 'open' or 'shut', not {state!r}")
        drawer_open = state == "open"
    blocks = []
    for part in ([] if body == "no block" else body.split(", ")):
        for pattern, build in _PHRASES:
            m = pattern.match(part)
            if m:
                blocks.append(build(m))
                break
        else:
            raise SceneParseError(f"not a block's place in the scene grammar: {part!r}")
    return Scene(tuple(blocks), drawer_open)
