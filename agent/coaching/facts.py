"""A statement about the scene -> the fact it states (policies.scene_line.Fact): the grammar of `fact`.

    parse_fact("the blue block is already in the bowl")   # Fact("blue block", "bowl")
    parse_fact("no, the red block is on the table, not in the bowl")   # Fact("red block", "table")
    parse_fact("there is no red block")                   # Fact("red block", "absent")
    parse_fact("that's the green bowl", ReferenceContext(current_subtask="place it in the blue bowl"))
                                                          # Fact("green bowl", "named", where="blue bowl")
    parse_fact("the drawer is open")                      # Fact("drawer", "open")

A fact needs a statement's shape: a subject (a block, "it", the drawer, "that" for a bowl), a copula
("is", "'s", "are") and a place, or "there is no ...". `is_fact_statement` says whether a line has
that shape (the classifier's kind: a fact), `parse_fact` reads the object and its place, with the
robot's context for "it" (the held block) and "that's the green bowl" (the bowl of the subtask in
force). A question ("is the red block in the bowl?") and a rule ("the drawer must stay shut") are
not facts. A place only denied ("the red block isn't in the bowl") leaves a block on the table: in
this world a block in no bowl, gripper, drawer and on no block lies on the table.
"""

from __future__ import annotations

import re

from agent.coaching import vocab
from agent.coaching.phrases import CONSTRAINT_PATTERNS
from agent.coaching.references import ReferenceContext
from policies.scene_line import DRAWER, NAMED, Fact

_COLOR = "(" + "|".join(vocab.ALL_COLORS) + ")"
_SIZE = r"(?:(small|smaller|little|tiny|large|larger|big|bigger) )?"
_BLOCK_NOUN = r"(?:block|cube|brick|box|piece|one)"
_BOWL_NOUN = r"(?:bowl|dish|plate|cup|container|basket)"
_DET = r"(?:the |that |this |your |a |one )?"
_ADVERBS = r"(?:(?:already|still|actually|really|now|just|definitely|clearly|sitting|lying|resting|right|all|in fact|" \
           r"currently|obviously|sat) )*"
_BLOCK = rf"{_DET}{_SIZE}{_COLOR} {_BLOCK_NOUN}"
_SUBJECT = rf"(?:{_BLOCK}|(it|that one|this one))"
_COPULA = rf" (?:is|are|was)(?: (not|n't))? {_ADVERBS}"
_SIDE = r"(left|right|middle|center|centre)"

# place phrases after the copula: (regex, place); the groups they read are named
_PLACES = (
    (rf"in (?:the |a |your |that |one of the )?(?:{_COLOR} )?{_BOWL_NOUN}", "bowl"),
    (r"(?:in (?:the |your |its )?(?:gripper|hand|claw|fingers|grip|jaws|pincers)|being held|held|being carried|picked up)", "held"),
    (r"(?:in(?:side)? the (?:drawer|cabinet|cupboard)|put away)", "drawer"),
    (rf"(?:stacked )?on (?:top of )?(?:the |that |a )?{_SIZE}{_COLOR} {_BLOCK_NOUN}", "block"),
    (rf"(?:on|lying on|sitting on|back on) the (?:table|floor|surface)(?: (?:at|on|to) the {_SIDE}(?: side)?)?", "table"),
    (rf"(?:over )?(?:at|on|to) the {_SIDE}(?: side)?(?: of the table)?", "table"),
    (r"(?:out of the (?:bowl|drawer|gripper)|loose|free|on its own)", "table"),
    (r"(?:gone|missing|not there|not here|nowhere|not in (?:the|this) scene|not on the table at all)", "absent"),
)
_PLACE_RE = [(re.compile(p), place) for p, place in _PLACES]

_THERE_IS_NO = re.compile(rf"\bthere (?:is|are|'s) no {_SIZE}{_COLOR} {_BLOCK_NOUN}s?\b|\bno {_SIZE}{_COLOR} {_BLOCK_NOUN}s? "
                          rf"(?:here|there|in (?:the|this) scene|on the table|at all|anywhere)\b|\b(?:the )?{_SIZE}{_COLOR} "
                          rf"{_BLOCK_NOUN} (?:does not|doesn't) exist\b|\bthere (?:is|are|'s) (?:not|no) any {_SIZE}{_COLOR} {_BLOCK_NOUN}s?\b")
_DRAWER = re.compile(r"\b(?:the |that |your )?(?:drawer|cabinet|cupboard) (?:is|was)(?: (not|n't))? "
                     rf"{_ADVERBS}(open|opened|wide open|ajar|shut|closed|close)\b")
_NAMED = re.compile(rf"\b(?:that|this|it|that one|this one) (?:is|was) (?:actually |really |in fact )?(?:the )?{_COLOR} "
                    rf"{_BOWL_NOUN}(?:,? (?:not|and not|rather than) (?:the )?{_COLOR}(?: {_BOWL_NOUN}| one))?(?=$|\W)"
                    rf"|\b(?:that|this|the) {_BOWL_NOUN} (?:is|was) (?:actually |really )?(?:the )?{_COLOR}(?: one| {_BOWL_NOUN})?(?=$|\W| not\b)")
_SUBJECT_PLACE = re.compile(rf"\b{_SUBJECT}{_COPULA}")


def _normalise(text: str) -> str:
    t = " ".join(str(text).lower().replace("\u2019", "'").split())
    t = re.sub(r"\b(\w+)n't\b", r"\1 not", t).replace("ca not", "can not").replace("wo not", "will not")
    t = re.sub(r"\b(it|that|there|this|one|block|cube|drawer|bowl)'s\b", r"\1 is", t)
    t = re.sub(r"\b(\w+) block's\b", r"\1 block is", t)
    return t


_NOT_STATED = re.compile(r"\b(pretend|imagine|act as if|as though|suppose|what if|if)\b")  # a rule or a what-if, not a fact


def _not_a_statement(t: str) -> bool:
    return not t or _looks_like_question(t) or bool(_NOT_STATED.search(t)) or any(p.search(t) for p in CONSTRAINT_PATTERNS)


def _looks_like_question(t: str) -> bool:
    """A question's shape: a question word first, or a "?" not after a tag ("..., ok?", "right?")."""
    if re.match(r"^(is|are|was|does|do|did|can|could|where|which|what|why|how|isn't|aren't)\b", t):
        return True
    return t.rstrip().endswith("?") and not re.search(r"\b(ok|okay|right|yeah|see|yes|alright|pls|please|thanks)\W*$", t)


def is_fact_statement(text: str) -> bool:
    """Whether a line states something about the scene (the grammar's reading: kind `fact`)."""
    t = _normalise(text)
    if _not_a_statement(t):
        return False
    return bool(_THERE_IS_NO.search(t) or _DRAWER.search(t) or _NAMED.search(t) or _block_place(t) is not None)


def _size(word: str | None) -> str | None:
    return vocab.SIZE_SYNONYMS.get(word) if word else None


def _block_place(t: str):
    """(subject match, place, place match) of the first "<block> is <place>" in t, positive places first."""
    denied = None
    for m in _SUBJECT_PLACE.finditer(t):
        rest = t[m.end():]
        if not m.group(4) and re.match(r"(?:right )?there (?:on|in|at)\b", rest):
            rest = rest[rest.index("there ") + 6:]  # "right there on the table"
        if m.group(4) and re.match(r"(?:there|here)\b", rest):
            return m, "absent", None  # "the red block is not there"
        for pattern, place in _PLACE_RE:
            pm = pattern.match(rest)
            if pm is None:
                continue
            if m.group(4):  # "is not in the bowl": look for the place said instead (", on the table")
                positive = _positive_after(rest[pm.end():])
                if positive is not None:
                    return m, positive[0], positive[1]
                if denied is None and place in ("bowl", "held", "drawer", "block"):
                    denied = (m, "table", None)
                elif denied is None and place == "absent":
                    denied = (m, "table", None)
                break
            return m, place, pm
    return denied


def _positive_after(rest: str):
    """ "..., it's on the table" / ", on the table" after a denied place."""
    for piece in re.split(r"[,;]| but | it is | it's ", rest):
        piece = piece.strip()
        for pattern, place in _PLACE_RE:
            pm = pattern.match(piece)
            if pm is not None and place != "absent":
                return place, pm
    return None


def _block_name(color: str, size_word: str | None, context: ReferenceContext | None) -> str:
    size = _size(size_word)
    if size is None and context is not None and context.scene_blocks:
        sized = [b for b in context.scene_blocks if b.endswith(f" {color} block")]
        if len(sized) == 1:  # "the red one" is the large red block where that is the only red block
            return sized[0]
    return vocab.block_name(color, size)


def _held_or_current(context: ReferenceContext | None) -> str | None:
    if context is None:
        return None
    if context.holding:
        return context.holding
    sub = vocab.split_subtask(context.current_subtask)
    return sub.obj if sub is not None and sub.kind in ("pick", "push") else None


def _current_bowl(context: ReferenceContext | None) -> str | None:
    sub = vocab.split_subtask(context.current_subtask) if context is not None else None
    return sub.target if sub is not None and sub.kind == "place" else None


def parse_fact(text: str, context: ReferenceContext | None = None) -> Fact | None:
    """The fact a statement states, or None (not a statement, or its object cannot be told)."""
    t = _normalise(text)
    if _not_a_statement(t):
        return None
    m = _THERE_IS_NO.search(t)
    if m is not None:
        color = next(g for g in m.groups() if g in vocab.ALL_COLORS)
        size = next((g for g in m.groups() if g and g in vocab.SIZE_SYNONYMS), None)
        return Fact(vocab.block_name(color, _size(size)), "absent")
    m = _DRAWER.search(t)
    if m is not None:
        is_open = m.group(2) in ("open", "opened", "wide open", "ajar")
        return Fact(DRAWER, "open" if is_open != bool(m.group(1)) else "shut")
    m = _NAMED.search(t)
    if m is not None:
        colors = [g for g in m.groups() if g]
        instead = f"{colors[1]} bowl" if len(colors) > 1 else _current_bowl(context)
        subject = f"{colors[0]} bowl"
        return Fact(subject, NAMED, where=instead if instead != subject else None)
    found = _block_place(t)
    if found is None:
        return None
    sm, place, pm = found
    if sm.group(3):  # "it", "that one"
        subject = _held_or_current(context)
        if subject is None:
            return None
    else:
        subject = _block_name(sm.group(2), sm.group(1), context)
    where = side = None
    if pm is not None:
        groups = [g for g in pm.groups() if g]
        colors = [g for g in groups if g in vocab.ALL_COLORS]
        if place == "bowl" and colors:
            where = vocab.bowl_name(colors[0])
        elif place == "block" and colors:
            sizes = [g for g in groups if g in vocab.SIZE_SYNONYMS]
            where = _block_name(colors[0], sizes[0] if sizes else None, context)
        elif place == "table":
            sides = [g for g in groups if g in ("left", "right", "middle", "center", "centre")]
            side = {"center": "middle", "centre": "middle"}.get(sides[0], sides[0]) if sides else None
    return Fact(subject, place, where, side)
