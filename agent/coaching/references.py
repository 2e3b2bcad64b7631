"""Object references in a clause -> the canonical subtask they ask for (agent.coaching.vocab).

"the blue one" -> "pick up the blue block", "put it in the green bowl instead" -> "place it in the
green bowl", "do the drawer" -> "open the drawer". A `ReferenceContext` (the subtask in force, the
held object, the scene's blocks) resolves what the words leave open: "place it in the red bowl" +
"no, the blue one" -> "place it in the blue bowl"; "not that one" -> the current subtask.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from agent.coaching import vocab
from agent.coaching.phrases import (
    CLOSE_VERBS, GENERIC_VERBS, OPEN_VERBS, PICK_VERBS, PLACE_VERBS, PUSH_VERBS, STACK_VERBS,
)
from policies.types import CorrectionKind

K = CorrectionKind


@dataclass(frozen=True)
class ReferenceContext:
    """What the robot is doing, to resolve "the blue one", "not that one", "do the drawer".

    current_subtask: the canonical subtask in force; holding: canonical name of the held object
    ("red block") or None; drawer_open: True/False/None (unknown); pending_subtasks: reference
    subtasks not done yet, in order (used for "do the drawer"); scene_blocks: the blocks' display
    names, so "the red one" becomes "large red block" when that is the only red block.
    """

    current_subtask: str | None = None
    holding: str | None = None
    drawer_open: bool | None = None
    pending_subtasks: tuple[str, ...] = field(default_factory=tuple)
    scene_blocks: tuple[str, ...] = field(default_factory=tuple)  # display names, to resolve "the red one"


@dataclass(frozen=True)
class Ref:
    color: str | None
    size: str | None  # "small" | "large" | None
    kind: str | None  # block | bowl | drawer | one | None (a bare colour)
    index: int  # word position
    destination: str | None = None  # "in" (a container) or "on" (stack onto) when after a preposition


def object_refs(core: list[str]) -> list[Ref]:
    refs: list[Ref] = []
    i = 0
    while i < len(core):
        word = core[i]
        size = vocab.SIZE_SYNONYMS.get(core[i - 1]) if i > 0 else None
        if word in vocab.ALL_COLORS:
            kind, j = None, i + 1
            while j < len(core) and j <= i + 2 and core[j] in vocab.SIZE_WORDS:
                size = size or vocab.SIZE_SYNONYMS[core[j]]
                j += 1
            if j < len(core) and vocab.noun_kind(core[j]):
                kind = vocab.noun_kind(core[j])
            else:
                j = i
            refs.append(Ref(word, size, kind, i, _destination(core, i)))
            i = j + 1
            continue
        kind = vocab.noun_kind(word)
        # a bare "one" only refers to an object after "that"/"this"/"other"/a size ("the small one")
        if kind and (kind != "one" or (i > 0 and core[i - 1] in vocab.SIZE_WORDS + ("other", "that", "this", "which"))):
            refs.append(Ref(None, size, kind, i, _destination(core, i)))
        i += 1
    return refs


def _destination(core: list[str], index: int) -> str | None:
    """'in' / 'on' if the object at `index` follows a preposition (skipping articles and sizes)."""
    j = index - 1
    while j >= 0 and (core[j] in ("the", "a", "that", "this", "top", "of") or core[j] in vocab.SIZE_WORDS
                      or core[j] in vocab.ALL_COLORS):
        if core[j] == "top" and j > 0 and core[j - 1] == "on":
            return "on"
        j -= 1
    if j < 0:
        return None
    if core[j] in ("in", "into", "inside", "to"):
        return "in"
    if core[j] in ("on", "onto", "atop", "over"):
        return "on"
    return None


def verb_intents(core: list[str]) -> set[str]:
    words = set(core)
    intents: set[str] = set()
    for name, verbs in (("pick", PICK_VERBS), ("place", PLACE_VERBS), ("stack", STACK_VERBS), ("push", PUSH_VERBS),
                        ("open", OPEN_VERBS), ("close", CLOSE_VERBS), ("generic", GENERIC_VERBS)):
        if words & verbs:
            intents.add(name)
    return intents


PUT_DOWN_RE = re.compile(r"\b(put|place|set|lay|drop|leave) (it|that|this|them)( back)? down\b|\bon (the )?table\b")


def is_put_down(core: list[str]) -> bool:
    return bool(PUT_DOWN_RE.search(" ".join(core)))


def block_for(ref: Ref, context: ReferenceContext | None) -> str:
    """The scene's display name for a block reference ("red" + scene {small red, large red} -> ambiguous name)."""
    assert ref.color is not None
    scene = context.scene_blocks if context else ()
    candidates = [b for b in scene if vocab.block_color(b) == ref.color]
    if ref.size:
        sized = [b for b in candidates if vocab.block_size(b) == ref.size]
        candidates = sized or candidates
    if len(candidates) == 1:
        return candidates[0]
    current = vocab.split_subtask(context.current_subtask) if context else None
    target = vocab.target_object(current) if current else None
    if target in candidates:  # "not the orange one" while going for the large orange block
        return target
    return vocab.block_name(ref.color, ref.size)


def resolve_subtask(core: list[str], kind: CorrectionKind, context: ReferenceContext | None) -> str | None:
    """The canonical subtask an override asks for, or a negation forbids; None when unclear."""
    all_refs = object_refs(core)
    refs = [r for r in all_refs if r.kind != "one" or r.color]
    anonymous = [r for r in all_refs if r.kind == "one" and not r.color]
    verbs = verb_intents(core)
    current = vocab.split_subtask(context.current_subtask) if context else None
    holding = context.holding if context else None

    if any(r.kind == "drawer" for r in refs):
        return _drawer_subtask(refs, verbs, context, holding)

    direction = next((w for w in core if w in vocab.PUSH_DIRECTIONS), None)
    if direction is None and {"forward", "forwards", "towards", "toward"} & set(core) and "push" in verbs:
        direction = "front"
    # "to the red block" names an object, not a place to put one: only containers take "in"/"to"
    destinations = [r for r in refs if r.destination and r.color and not (r.destination == "in" and r.kind == "block")]
    objects = [r for r in refs if r.color and r not in destinations]

    if destinations:
        dest = destinations[-1]
        obj = next((o for o in objects if o.kind in (None, "block", "one")), None)
        if obj is not None and kind is K.OVERRIDE and holding != block_for(obj, context):
            return vocab.pick_up(block_for(obj, context))
        dest_kind = dest.kind if dest.kind in ("block", "bowl") else ("bowl" if dest.destination == "in" else "block")
        return vocab.place_in_bowl(dest.color) if dest_kind == "bowl" else vocab.stack_on(block_for(dest, context))

    if objects:
        obj = objects[0]
        obj_kind = obj.kind
        if obj_kind in (None, "one"):  # "the blue one", "blue!": take the kind from what the robot is doing
            obj_kind = vocab.target_kind(current) if current else "block"
            if obj_kind not in ("block", "bowl"):
                obj_kind = "block"
        if obj_kind == "bowl":
            return vocab.place_in_bowl(obj.color)
        block = block_for(obj, context)
        if "push" in verbs or (direction and "place" in verbs and "in" not in core):
            push_dir = direction or (current.target if current and current.kind == "push" else None)
            return vocab.push(block, push_dir) if push_dir else None
        if "stack" in verbs and holding and holding != block:
            return vocab.stack_on(block)
        if obj.kind in (None, "one") and current and current.kind in ("stack", "push") and not verbs - {"generic"}:
            if current.kind == "push":
                return vocab.push(block, direction or current.target)
            return vocab.stack_on(block)
        return vocab.pick_up(block)

    if is_put_down(core):
        return vocab.PUT_DOWN
    # No colour named: "not that one", "wrong block", "pick it up"
    if context and context.current_subtask and (kind is K.NEGATION or anonymous or not verbs):
        return context.current_subtask
    if current and context and verbs & {current.kind, "generic"}:
        return context.current_subtask
    return None


def _drawer_subtask(refs: list[Ref], verbs: set[str], context: ReferenceContext | None, holding: str | None) -> str:
    if "open" in verbs:
        return vocab.OPEN_DRAWER
    if "close" in verbs:
        return vocab.CLOSE_DRAWER
    drawer = next(r for r in refs if r.kind == "drawer")
    if drawer.destination == "in" or verbs & {"place"}:
        block = next((r for r in refs if r.kind in (None, "block", "one") and r.color and not r.destination), None)
        if block is not None and holding != block_for(block, context):
            return vocab.pick_up(block_for(block, context))
        return vocab.PUT_IN_DRAWER
    # "do the drawer now": whatever drawer step comes next
    if context:
        for sub in context.pending_subtasks:
            parts = vocab.split_subtask(sub)
            if parts and vocab.target_object(parts) == "drawer":
                return sub
        if holding:
            return vocab.PUT_IN_DRAWER
        if context.drawer_open:
            return vocab.CLOSE_DRAWER
    return vocab.OPEN_DRAWER


def canonical_objects(core: list[str], context: ReferenceContext | None) -> list[str]:
    names = []
    current = vocab.split_subtask(context.current_subtask) if context else None
    for ref in object_refs(core):
        if ref.kind == "drawer":
            names.append("drawer")
        elif ref.color:
            kind = ref.kind if ref.kind in ("block", "bowl") else (
                "bowl" if ref.destination == "in" else (vocab.target_kind(current) if current else "block"))
            names.append(vocab.bowl_name(ref.color) if kind == "bowl" else block_for(ref, context))
    return names
