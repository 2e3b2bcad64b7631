"""Words the coaching code understands: colours, object nouns, canonical subtask phrasing.

One place for the object vocabulary of the console classifier, the nudge mapper and the scripted
coach. The subtask language is the authority: colours, sizes, push directions and the canonical
subtask grammar come from `policies.grammar` (a block is "<colour> block", or "<size> <colour> block"
when two blocks share a colour). The classifier also
knows a few colour words no scene uses, so "the pink one" is still read as an object reference
(and answered with "no pink block in this world") instead of being misread.

Canonical subtask language (what the low level executes):
    pick up the red block        place it in the blue bowl      stack it on the green block
    put it in the drawer         open the drawer / close the drawer
    push the yellow block to the left                           put it down on the table
"""

from __future__ import annotations

from policies import grammar as G

SCENE_COLORS: tuple[str, ...] = G.COLORS
EXTRA_COLORS: tuple[str, ...] = ("pink", "white", "black", "cyan", "magenta", "brown", "grey", "gray", "violet")
ALL_COLORS: tuple[str, ...] = SCENE_COLORS + tuple(c for c in EXTRA_COLORS if c not in SCENE_COLORS)

SIZES: tuple[str, ...] = tuple(G.SIZES)  # ("small", "large")
PUSH_DIRECTIONS: tuple[str, ...] = tuple(G.DIRECTIONS)  # ("left", "right", "front")
# Words people use for a size -> the scene's size name.
SIZE_SYNONYMS: dict[str, str] = {
    "small": "small", "smaller": "small", "smallest": "small", "little": "small", "tiny": "small", "short": "small",
    "large": "large", "larger": "large", "largest": "large", "big": "large", "bigger": "large", "biggest": "large",
}
SIZE_WORDS: tuple[str, ...] = tuple(SIZE_SYNONYMS)

# Object kinds and the words people use for them.
BLOCK_NOUNS = ("block", "blocks", "cube", "cubes", "brick", "bricks", "box", "boxes", "piece", "pieces")
BOWL_NOUNS = ("bowl", "bowls", "plate", "plates", "dish", "dishes", "cup", "cups", "container", "basket")
DRAWER_NOUNS = ("drawer", "drawers", "cabinet", "cupboard")
PRONOUN_NOUNS = ("one", "ones")  # "the blue one": the kind comes from context
GRIPPER_NOUNS = ("gripper", "hand", "claw", "fingers", "jaws", "grip", "pincer", "pincers")

Subtask = G.Subtask


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


def block_name(color: str, size: str | None = None) -> str:
    """Display name of a block: 'red block' or 'small red block'."""
    return f"{size} {color} block" if size else f"{color} block"


def bowl_name(color: str) -> str:
    return f"{color} bowl"


def block_color(name: str) -> str:
    """'small red block' -> 'red'."""
    return name.split()[-2]


def block_size(name: str) -> str | None:
    words = name.split()
    return words[0] if len(words) == 3 else None


# ------------------------------------------------------------------ canonical subtasks (texts)


def pick_up(block: str) -> str:
    return G.pick(block).text


def place_in_bowl(color: str) -> str:
    return G.place_in_bowl(color).text


def stack_on(block: str) -> str:
    return G.stack_on(block).text


def push(block: str, direction: str) -> str:
    return G.push(block, direction).text


PUT_IN_DRAWER = G.put_in_drawer().text
OPEN_DRAWER = G.open_drawer().text
CLOSE_DRAWER = G.close_drawer().text
PUT_DOWN = G.put_down().text


def split_subtask(text: str | None) -> G.Subtask | None:
    """Parse canonical subtask text; None for free text (or None)."""
    if not text:
        return None
    try:
        return G.parse_subtask(text)
    except G.SubtaskParseError:
        return None


def target_kind(sub: G.Subtask) -> str:
    """What kind of object a subtask is about: 'block', 'bowl', 'drawer' or 'table'."""
    return {"place": "bowl", "drawer_put": "drawer", "open": "drawer", "close": "drawer", "put_down": "table"}.get(
        sub.kind, "block")


def target_object(sub: G.Subtask) -> str | None:
    """The object a subtask is about: 'red block' (pick/push/stack target), 'blue bowl', 'drawer'."""
    if sub.kind in ("pick", "push"):
        return sub.obj
    if sub.kind in ("place", "stack"):
        return sub.target
    if sub.kind in ("drawer_put", "open", "close"):
        return "drawer"
    return None

