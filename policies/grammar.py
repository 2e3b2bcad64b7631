"""The subtask language: what the high level says and the low level executes.

Subtasks come from a small fixed grammar, spoken by the simulator's detectors, the classifier, the
scripted coach, the models and the datasets alike (the simulator speaks it; it does not own it):

    pick up the red block            place it in the blue bowl      stack it on the green block
    put it in the drawer             open the drawer                close the drawer
    push the yellow block to the left                               put it down on the table

A block is named "<colour> block", or "<size> <colour> block" when two blocks share a colour.
`parse_subtask` accepts any case, articles or not, extra whitespace and a trailing full stop
(`normalize` is that tolerance, the one used wherever subtask texts are compared).
"it" is the block picked by the preceding pick.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COLORS = ("red", "green", "blue", "yellow", "purple", "orange")  # the block and bowl colours a scene uses

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


def block_name(color: str, size: str | None = None) -> str:
    """Display name of a block: "red block" or "small red block"."""
    return f"{size} {color} block" if size else f"{color} block"


def _name(match: re.Match, prefix: str) -> str:
    return block_name(match.group(f"{prefix}color"), match.group(f"{prefix}size"))


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
