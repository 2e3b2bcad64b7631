"""What the planner sees, in one fixed grammar: the first part of its grounded chain of thought.

    scene = scene_from_facts(facts, task)          # the simulator's facts -> a Scene (training labels)
    text = format_scene(scene)
    # "I see: green block on the table at the left, red block in the blue bowl, blue block in the gripper;
    #  bowls: red, blue; drawer shut."
    parse_scene(text) == scene                     # SceneParseError on text outside the grammar

Every block present, left to right as the front camera shows them (world x: the camera looks along
+y, the order the oracle breaks ties in), a stack at its bottom block's x from the bottom up and the
blocks in one bowl at their mean x by colour (line_order: otherwise blocks a few millimetres apart
in x would come in either order, the same scene read two ways); a block on the table with its side (where a push is going);
the bowls present, in the fixed colour order of policies.grammar.COLORS (the facts say which bowls are
there, not where); the drawer's state only where the task names the drawer. One canonical form and no synonyms, so a text
loss on it teaches reading, not style, and a parser (the console, the grammar-constrained decoder)
reads it back exactly. The planner writes this line, then " So: <subtask>" (policies/planning.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from policies.grammar import COLORS, PLACE_KINDS

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
    blocks: tuple[SeenBlock, ...]  # left to right (line_order)
    drawer_open: bool | None = None  # None: not said (the task does not name the drawer)
    bowls: tuple[str, ...] = ()  # the bowls present ("red bowl"), in COLORS order; () also: not read

    def block(self, name: str) -> SeenBlock | None:
        return next((b for b in self.blocks if b.name == name), None)


def side_of(x: float) -> str:
    return "left" if x < -SIDE_X else "right" if x > SIDE_X else "middle"


def mentions_drawer(task: str) -> bool:
    return "drawer" in task.lower()


def bowl_order(bowls) -> tuple[str, ...]:
    """Bowl names in the line's fixed order (COLORS), each once."""
    return tuple(sorted(set(bowls), key=lambda name: COLORS.index(name.split()[0])))


def line_order(placed: dict[str, tuple[float, str, str | None]]) -> list[str]:
    """Block names in the scene line's order, from each block's (x, place, where): left to right by x, where
    a stack counts at its bottom block's x (listed from the bottom up) and the blocks in a bowl at their mean
    x (listed by colour, then each one's stack). Ties in x are the rule here, not the exception (a block on
    a block sits at its x), so the order of a stack or a bowl's blocks is fixed by what they are, not by
    millimetres of x a camera cannot tell apart."""
    def bottom(name: str) -> tuple[str, int]:
        depth, seen = 0, {name}
        while placed[name][1] == "block" and placed[name][2] in placed and placed[name][2] not in seen:
            name = placed[name][2]
            seen.add(name)
            depth += 1
        return name, depth

    in_bowl: dict[str, list[float]] = {}
    for x, place, where in placed.values():
        if place == "bowl":
            in_bowl.setdefault(where, []).append(x)

    def key(name: str):
        base, depth = bottom(name)
        x, place, where = placed[base]
        group = (sum(in_bowl[where]) / len(in_bowl[where]), where) if place == "bowl" else (x, base)
        return (*group, depth, _colour_rank(name), name)

    return sorted(placed, key=key)


def _colour_rank(name: str) -> int:
    colour = name.split()[-2] if len(name.split()) >= 2 else ""
    return COLORS.index(colour) if colour in COLORS else len(COLORS)


def scene_from_facts(facts: dict, task: str, bowls: bool = True) -> Scene:
    """The Scene the simulator's facts (agent/envs/scene_facts.py) describe, its blocks in line_order.
    `bowls=False`: without the bowls (the line a planner whose read-out has no bowl queries writes)."""
    blocks = []
    for name in line_order({n: (f["x"], f["place"], f.get("where")) for n, f in facts["blocks"].items()}):
        fact = facts["blocks"][name]
        place = fact["place"]
        blocks.append(SeenBlock(name, place, fact.get("where") if place in ("bowl", "block") else None,
                                side_of(fact["x"]) if place == "table" else None))
    return Scene(tuple(blocks), bool(facts["drawer_open"]) if mentions_drawer(task) else None,
                 bowl_order(facts.get("bowls", ())) if bowls else ())


def format_scene(scene: Scene) -> str:
    seen = ", ".join(b.phrase() for b in scene.blocks) or "no block"
    bowls = f"; bowls: {', '.join(b.removesuffix(' bowl') for b in scene.bowls)}" if scene.bowls else ""
    drawer = "" if scene.drawer_open is None else f"; drawer {'open' if scene.drawer_open else 'shut'}"
    return f"{SCENE_OPEN}{seen}{bowls}{drawer}."


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
    body, *tails = text[len(SCENE_OPEN):end].split("; ")
    drawer_open, bowls = None, ()
    for tail in tails:
        if tail.startswith("drawer "):
            state = tail.removeprefix("drawer ")
            if state not in ("open", "shut"):
                raise SceneParseError(f"the drawer is 'open' or 'shut', not {state!r}")
            drawer_open = state == "open"
        elif tail.startswith("bowls: "):
            colours = tail.removeprefix("bowls: ").split(", ")
            if any(c not in COLORS for c in colours) or list(colours) != sorted(set(colours), key=COLORS.index):
                raise SceneParseError(f"bowls are listed once each, in the order {', '.join(COLORS)}: {tail!r}")
            bowls = tuple(f"{c} bowl" for c in colours)
        else:
            raise SceneParseError(f"after the blocks come '; bowls: ...' and '; drawer open|shut', not {tail!r}")
    blocks = []
    for part in ([] if body == "no block" else body.split(", ")):
        for pattern, build in _PHRASES:
            m = pattern.match(part)
            if m:
                blocks.append(build(m))
                break
        else:
            raise SceneParseError(f"not a block's place in the scene grammar: {part!r}")
    return Scene(tuple(blocks), drawer_open, bowls)


# ---------------------------------------------------------------------------------------------
# facts: what a person says is true of the scene, put in place of the read-out's reading
# ---------------------------------------------------------------------------------------------

DRAWER = "drawer"
DRAWER_STATES = ("open", "shut")
NAMED = "named"  # a bowl fact: the bowl the planner read as `where` is really `subject` ("that's the green bowl")


@dataclass(frozen=True)
class Fact:
    """One statement about the scene, as a correction of kind `fact` carries it.

    subject: a block ("red block"), "drawer", or a bowl ("green bowl")
    place:   a block: one of PLACES ("absent": there is no such block); the drawer: "open" / "shut";
             a bowl: NAMED
    where:   a block in a bowl or on a block: that bowl or block (None: not said); a NAMED bowl: the
             bowl it is in place of (None: not known, e.g. "that's the green bowl" said out of context)
    side:    a block on the table: left / middle / right (None: not said)
    """

    subject: str
    place: str
    where: str | None = None
    side: str | None = None

    def __post_init__(self) -> None:
        allowed = DRAWER_STATES if self.subject == DRAWER else (NAMED,) if self.subject.endswith(" bowl") else PLACES
        if self.place not in allowed:
            raise ValueError(f"a fact about the {self.subject} has a place in {allowed}, not {self.place!r}")

    def phrase(self) -> str:
        """The belief in words, as the console echoes it ("the blue block is in the blue bowl")."""
        if self.subject == DRAWER:
            return f"the drawer is {self.place}"
        if self.place == NAMED:
            return f"that bowl is the {self.subject}" if self.where is None else f"the {self.where} is the {self.subject}"
        if self.place == "absent":
            return f"there is no {self.subject}"
        where = {"bowl": f"in the {self.where or 'bowl'}", "block": f"on the {self.where or 'block'}",
                 "table": "on the table" + (f" at the {self.side}" if self.side else ""), "held": "in the gripper",
                 "drawer": "in the drawer", "moving": "moving"}[self.place]
        return f"the {self.subject} is {where}"

    def to_dict(self) -> dict:
        return {"subject": self.subject, "place": self.place, "where": self.where, "side": self.side}

    @classmethod
    def from_dict(cls, data: dict) -> "Fact":
        return cls(data["subject"], data["place"], data.get("where"), data.get("side"))

    def holds_in(self, scene: Scene) -> bool:
        """Whether a scene says what this fact says (what it leaves open, e.g. a side not said, is not
        checked). A bowl fact (NAMED) names no place a scene line holds: never."""
        if self.subject == DRAWER:
            return scene.drawer_open is None or scene.drawer_open == (self.place == "open")
        if self.place == NAMED:
            return False
        block = scene.block(self.subject)
        if self.place == "absent" or block is None:
            return self.place == "absent" and block is None
        return (block.place == self.place and self.where in (None, block.where)
                and self.side in (None, block.side))

    def ended_by(self, subtask: str) -> bool:
        """Whether the robot doing `subtask` ends this fact: a block fact ends when a subtask names that
        block (or, for a held block, places what the gripper holds), a drawer fact when a drawer subtask
        opens or closes it; a bowl fact, never (bowls do not move). Free text (a person's words) is not
        known to move anything."""
        from policies.grammar import SubtaskParseError, parse_subtask

        try:
            sub = parse_subtask(subtask)
        except SubtaskParseError:
            return False
        if self.subject == DRAWER:
            return sub.kind in ("open", "close")
        named = {getattr(sub, "obj", None), getattr(sub, "it", None)} - {None}
        moves_held = sub.kind in PLACE_KINDS
        return self.moved_by is not None and (self.moved_by in named or (moves_held and self.place == "held"))

    @property
    def moved_by(self) -> str | None:
        """The block whose moving ends this fact (None: the drawer or a bowl, ended by the episode or
        by a drawer subtask; see facts_in_force)."""
        return None if self.subject == DRAWER or self.place == NAMED else self.subject


def _task_bowl(task: str) -> str | None:
    """The one bowl a task names ("put the red block in the blue bowl" -> "blue bowl"), if one."""
    bowls = set(re.findall(r"\b([a-z]+ bowl)\b", task.lower()))
    return bowls.pop() if len(bowls) == 1 else None


def apply_facts(scene: Scene, facts, task: str = "") -> Scene:
    """The scene with each stated fact in place of the read-out's reading of that object, in the
    order said (a later fact about the same object wins). A block fact replaces the block's phrase
    where the read-out listed it (keeping its place in the left-to-right order) or is added at the
    end; "absent" removes it. What a fact leaves open is taken from the reading: a bowl not named
    ("already in the bowl") is the bowl it was read in, else the one bowl the task names; a table
    block's side is the side it was read at, else the middle. A fact the line cannot say (a block
    on an unnamed block, a bowl nobody named) is left out of it. The drawer's state is written only
    where the line says it (the task names the drawer), as format_scene does."""
    blocks = list(scene.blocks)
    drawer_open, bowls = scene.drawer_open, scene.bowls
    for fact in facts:
        if fact.subject == DRAWER:
            if drawer_open is not None:
                drawer_open = fact.place == "open"
            continue
        if fact.place == NAMED:
            if fact.where is not None:
                blocks = [SeenBlock(b.name, b.place, fact.subject, b.side) if b.place == "bowl" and b.where == fact.where
                          else b for b in blocks]
                if bowls:
                    bowls = bowl_order([fact.subject if b == fact.where else b for b in bowls])
            continue
        index = next((i for i, b in enumerate(blocks) if b.name == fact.subject), None)
        read = blocks[index] if index is not None else None
        if fact.place == "absent":
            if index is not None:
                del blocks[index]
            continue
        where, side = fact.where, fact.side
        if fact.place == "bowl" and where is None:
            where = read.where if read is not None and read.place == "bowl" else _task_bowl(task)
        if fact.place == "block" and where is None and read is not None and read.place == "block":
            where = read.where
        if fact.place == "table" and side is None:
            side = read.side if read is not None and read.side else "middle"
        if fact.place in ("bowl", "block") and where is None:
            continue  # the line cannot say "in the bowl" without its colour
        seen = SeenBlock(fact.subject, fact.place, where if fact.place in ("bowl", "block") else None,
                         side if fact.place == "table" else None)
        if index is None:
            blocks.append(seen)
        else:
            blocks[index] = seen
    if bowls:  # a block stated in a bowl the line did not list: that bowl is there
        bowls = bowl_order([*bowls, *(b.where for b in blocks if b.place == "bowl")])
    return Scene(tuple(blocks), drawer_open, bowls)


def apply_facts_to_line(line: str, facts, task: str = "") -> str:
    """A scene line with the facts applied (format_scene(apply_facts(parse_scene(line), ...)))."""
    return format_scene(apply_facts(parse_scene(line), facts, task)) if facts else line


def contradictions(believed: Scene, true: Scene) -> list[Fact]:
    """What the true scene says against a believed one, as facts (the scripted coach states these):
    a block believed somewhere else (another place, bowl or block beneath, or on the table at another
    side), a block believed there that is not, a block not listed, and the drawer's state where both
    say it. A block moving in the true scene is not stated (no fact says "moving")."""
    out = []
    for block in believed.blocks:
        real = true.block(block.name)
        if real is None:
            out.append(Fact(block.name, "absent"))
        elif (real.place, real.where, real.side) != (block.place, block.where, block.side) and real.place != "moving":
            out.append(Fact(real.name, real.place, real.where, real.side))
    for real in true.blocks:
        if believed.block(real.name) is None and real.place != "moving":
            out.append(Fact(real.name, real.place, real.where, real.side))
    if believed.drawer_open is not None and true.drawer_open is not None and believed.drawer_open != true.drawer_open:
        out.append(Fact(DRAWER, "open" if true.drawer_open else "shut"))
    return out
