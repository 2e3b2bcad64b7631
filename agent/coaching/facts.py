"""A statement about the scene -> the fact it states (policies.scene_line.Fact): the grammar of `fact`.

    parse_fact("the blue block is already in the bowl")   # Fact("blue block", "bowl")
    parse_fact("no, the red block is on the table, not in the bowl")   # Fact("red block", "table")
    parse_fact("there is no red block")                   # Fact("red block", "absent")
    parse_fact("that's the green bowl", ReferenceContext(current_subtask="place it in the blue bowl"))
                                                          # Fact("green bowl", "named", where="blue bowl")
    parse_fact("the drawer is open")                      # Fact("drawer", "open")

A fact needs a statement's shape: a subject (a block, "it", the drawer, "that" for a bowl), a copula
("is", "'s", "are", "has been", or a verb that says where it came to rest: "ended up", "fell", "went")
and a place, or "there is no ...", or the place first ("there's a red block in the blue bowl", "the
blue bowl has the red block", "you're holding the red block", "the green block is under the red
block"; "you already put the red block in the bowl" only with "already" / "just", since "you put
..." may be an order). Words of a rule that report the past ("it never went in", "isn't in the bowl
any more") do not make a statement a rule. `is_fact_statement` says whether a line has
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
           r"currently|obviously|sat|also|literally|honestly|totally|placed|put(?! away)|set|dropped|located|" \
           r"positioned|stuck|sitting there|kind of|pretty much|safely|very much|out(?! of)|back|down|\w+ly) )*"
_BLOCK = rf"{_DET}{_SIZE}{_COLOR} {_BLOCK_NOUN}"
_SUBJECT = rf"(?:{_BLOCK}|(it|that one|this one))"
# "is", and verbs that report where a block came to rest ("ended up in", "fell into"); never "stays",
# which is a rule. `has been` is read as "is" (_normalise).
_COPULA = rf"(?:(?:,? it)?(?: (?:already|just|now|actually|also|still|\w+ly))* (?:is|are|was|were|got|ended up|made it|" \
          rf"landed|fell|went|sits|lies|rests)" \
          rf"(?: (not|n't|no longer|never))? | ?[:\u2014] *| - ){_ADVERBS}"
_SIDE = r"(left|right|middle|center|centre)"
# "the left", "the far right", "the right-hand side", "the middle of the table"
_SIDE_PHRASE = rf"(?:far )?{_SIDE}(?:[- ]hand)?(?: side| part| edge| end| half| corner)?" \
               r"(?: of the (?:table|workspace|surface))?" \
               r"(?! (?:bowl|dish|plate|cup|container|basket|block|cube|brick|one)s?\b)"  # not "in the left bowl"
_VAGUE = r"(?:(?:right|over|in|up|back|down) )?(?:there|here)\b,? *"  # "in there, in the red bowl"

# place phrases after the copula: (regex, place); the groups they read are named
_PLACES = (
    (rf"in(?:to|side)? (?:the |a |any |your |that |one of the |either )?(?:{_COLOR} |(?:left|right|middle|other|first|"
     rf"second) )?(?:{_BOWL_NOUN}s?|one\b)", "bowl"),
    (r"(?:in(?:to)? (?:the |your |its |my |the robot's |the robot is )?(?:gripper|hand|claw|fingers|grip|jaws|pincers)|"
     r"being held|held|being carried|"
     r"picked up|grabbed|grasped|in hand|what (?:you are|the gripper is|the robot is) (?:holding|carrying|gripping)|"
     r"what you (?:have|have got|got))", "held"),
    (r"(?:(?:put|shut|tucked|stored|locked) away(?: in(?:to|side)? the (?:drawer|cabinet|cupboard))?|"
     r"(?:away )?in(?:to|side)? the (?:drawer|cabinet|cupboard))", "drawer"),
    (rf"(?:stacked )?on(?:to)? (?:top of )?(?:(?:the |that |a )?{_SIZE}{_COLOR} {_BLOCK_NOUN}|anything|another block|"
     rf"any block|a block)", "block"),
    (rf"(?:on|onto|lying on|sitting on|back on|down on) the (?:table|floor|surface)"
     rf"(?:,? (?:at|on|to|in|towards?) the {_SIDE_PHRASE}|,? (?:the )?(?:far )?{_SIDE}(?:[- ]hand)? "
     rf"(?:side|part|edge|end|half|corner))?", "table"),
    (rf"(?:over )?(?:at|on|to|in|towards?) the {_SIDE_PHRASE}", "table"),
    (r"(?:out of the (?:bowl|drawer|gripper)|loose|free|on its own|(?:next to|beside|near|by|behind|in front of) the \w+)",
     "table"),
    (r"(?:gone|missing|not there|not here|nowhere|not in (?:the|this) scene|not on the table at all)", "absent"),
)
_PLACE_RE = [(re.compile(p), place) for p, place in _PLACES]

_THERE_IS_NO = re.compile(rf"\bthere (?:is|are|'s) (?:no|not a|not an|no such|no such thing as an?) {_SIZE}{_COLOR} "
                          rf"{_BLOCK_NOUN}s?\b|\bno {_SIZE}{_COLOR} {_BLOCK_NOUN}s? "
                          rf"(?:here|there|in (?:the|this) scene|on the table|at all|anywhere)\b|\b(?:the )?{_SIZE}{_COLOR} "
                          rf"{_BLOCK_NOUN} (?:does not|doesn't) exist\b|\bthere (?:is|are|'s) (?:not|no) any {_SIZE}{_COLOR} "
                          rf"{_BLOCK_NOUN}s?\b")
# "you won't find a red block, there isn't one": the block named before "there isn't one"
_NONE_OF_IT = re.compile(rf"\b{_SIZE}{_COLOR} {_BLOCK_NOUN}\b[^.;!?]*?\bthere (?:is|are) (?:not one|none|not any|no such)\b")
_DRAWER = re.compile(r"\b(?:the |that |your )?(?:drawer|cabinet|cupboard) (?:is|was)(?: (not|n't|never|no longer))? "
                     rf"{_ADVERBS}(?:left )?(?:half |partly |partially |slightly |a bit |a little )?"
                     r"(open|opened|wide open|ajar|shut|closed|close)\b")
_DRAWER_TERSE = re.compile(r"^(?:(?:um|uh|erm|hey|look|fyi|btw|so|ok|okay|no|wait|actually|oh)\W+)*(?:the )?"
                           r"(?:drawer|cabinet|cupboard) (?:already |still |now )?(open|opened|ajar|shut|closed)\b")
_NAMED = re.compile(rf"\b(?:that|this|it|that one|this one) (?:is|was) (?:actually |really |in fact )?(?:the )?{_COLOR} "
                    rf"{_BOWL_NOUN}(?:,? (?:not|and not|rather than) (?:the )?{_COLOR}(?: {_BOWL_NOUN}| one))?(?=$|\W)"
                    rf"|\b(?:that|this|the) {_BOWL_NOUN} (?:(?:that |which )?(?:you|it|the robot|we)\b[^,.;]{{0,40}}? |"
                    rf"(?:in front|at the (?:front|back)|(?:on|to|at) the (?:left|right|far left|far right)|in the middle|"
                    rf"over there|right there|there|here|nearest|closest|furthest)(?: of (?:the table|you|it))? )?"
                    rf"(?:is|was) (?:actually |really )?(?:the )?{_COLOR}(?: one| {_BOWL_NOUN})?"
                    rf"(?:,? (?:not|and not|rather than) (?:the )?{_COLOR}(?: {_BOWL_NOUN}| one))?(?=$|\W| not\b)")
# "that's not the blue bowl, it's the green one": the bowl named, in place of the one denied
_NAMED_INSTEAD = re.compile(rf"\b(?:that|this|it) is not (?:the )?{_COLOR} {_BOWL_NOUN},? (?:it is|that is|this is|but|"
                            rf"it is actually) (?:the )?{_COLOR}(?: {_BOWL_NOUN}| one)?(?=$|\W)")
_SUBJECT_PLACE = re.compile(rf"\b{_SUBJECT}{_COPULA}")
_VAGUE_RE = re.compile(_VAGUE)
# Where the place comes before the block: "there's a red block in the blue bowl", "the blue bowl has
# the red block in it", "you're holding the red block", "the green block is under the red block".
_THERE_IS_A = re.compile(rf"\bthere (?:is|are) (?:already |still )?(?:a |the |one )?{_SIZE}{_COLOR} {_BLOCK_NOUN} ")
_BOWL_HAS = re.compile(rf"\b(?:the )?(?:{_COLOR} )?{_BOWL_NOUN} (?:already |still )?(?:has|holds|contains|has got) "
                       rf"(?:the |a )?{_SIZE}{_COLOR} {_BLOCK_NOUN}\b")
_HOLD = r"(?:holding|carrying|gripping|grasping|clutching)"
_HOLDING = re.compile(rf"\b(?:you (?:are |have |already |still |now |actually )*(?:{_HOLD}|have got|have|got|"
                      rf"already (?:grabbed|picked up))|(?:the |your )?(?:gripper|hand|claw) (?:is |already |still |now )*"
                      rf"(?:{_HOLD}|has got|has|holds)) (?:the |a )?{_SIZE}{_COLOR} {_BLOCK_NOUN}\b(?! to\b)"
                      rf"|\b{_SIZE}{_COLOR} {_BLOCK_NOUN},? you (?:are |already |still |now )*(?:{_HOLD}|have got|have|got)"
                      rf" it\b")
_YOU_PUT = re.compile(rf"\byou (?:have )?((?:already|just) )?(?:put|placed|dropped|stacked|set|moved) (?:the |a )?"
                      rf"{_SIZE}{_COLOR} {_BLOCK_NOUN} ")
_DRAWER_DONE = re.compile(r"\byou (?:have )?(?:already|just) (opened|closed|shut) the (?:drawer|cabinet|cupboard)\b")
_UNDER = re.compile(rf"\b{_DET}{_SIZE}{_COLOR} {_BLOCK_NOUN} is (?:already |actually |now )?(?:under|underneath|beneath|"
                    rf"below) (?:the )?{_SIZE}{_COLOR} {_BLOCK_NOUN}\b")


def _normalise(text: str) -> str:
    t = " ".join(str(text).lower().replace("\u2019", "'").split())
    t = re.sub(r"\b(\w+)n't\b", r"\1 not", t).replace("ca not", "can not").replace("wo not", "will not")
    t = re.sub(r"\b(\w+)'s got\b", r"\1 has got", t)  # "the blue bowl's got the purple block"
    t = re.sub(r"\b(it|that|there|this|one|what|block|cube|brick|drawer|cabinet|cupboard|bowl|dish|gripper|hand)'s\b",
               r"\1 is", t)
    t = re.sub(r",? (?:like|um|uh|erm|you know|i mean|basically),(?= )", "", t)  # "is, like, already in"
    t = re.sub(r"\b(?:has |have )?(?:disappeared|vanished)\b", "is gone", t)
    # "has landed in", "has gone into": where it came to rest
    t = re.sub(r"\b(?:has|have) ((?:already |just |now )*)(?:landed|fallen|ended up|made it|moved|rolled|gone)"
               r"(?= (?:in|into|inside|onto|on|to|out|back|off)\b)", r"\1went", t)
    t = re.sub(r"\b(?:has|have) gone\b", "is gone", t)
    t = re.sub(r"\bnever left the (table|gripper|hand|drawer)\b",
               lambda m: "is still " + ("on the table" if m.group(1) == "table" else f"in the {m.group(1)}"), t)
    t = re.sub(r"\b(\w+) (block|cube|one)'s\b", r"\1 \2 is", t)
    t = re.sub(r"\b(you|they|we)'re\b", r"\1 are", t)
    t = re.sub(r"\b(you|they|we)'ve\b", r"\1 have", t)
    # "has already been put in", "has never been in": a report of where it is, read as "is"
    t = re.sub(r"\b(?:has|have|had|is) (not |never )?((?:already |just |still |actually |now )*)been\b",
               lambda m: "is " + ("not " if m.group(1) else "") + m.group(2).rstrip(), t)
    t = re.sub(r"\bis +", "is ", t)
    return t


_NOT_STATED = re.compile(r"\b(pretend|imagine|act as if|as though|suppose|what if|if)\b")  # a what-if, not a fact
# Words of a rule that, in these phrases, report the past instead ("it never went in", "it was on the
# table the whole time", "isn't in the bowl any more"): left out before a line is checked for a rule.
_REPORTED = (
    re.compile(r"\bnever (?:even |actually |really )?(?:went|got|made|moved|left|was|were|did|had|been|came|fell|reached|"
               r"landed|touched|\w+ed)\b"),
    re.compile(r"\b(?:it|you|i|we|they|he|she|that|this|the robot) never\b"),  # "you never let go": what happened
    re.compile(r"\b(?:was|were) always\b|\balways (?:was|were)\b"),
    re.compile(r"\b(?:was|were)\b[^,;.!?]* (?:the whole time|all along|this whole time)\b"),
    re.compile(r"\b(?:is|are|was|were) not\b[^,;.!?]* any ?more\b"),
)


def _not_a_statement(t: str) -> bool:
    if not t or _looks_like_question(t) or _NOT_STATED.search(t):
        return True
    for reported in _REPORTED:
        t = reported.sub(" ", t)
    return any(p.search(t) for p in CONSTRAINT_PATTERNS)


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
    return bool(_THERE_IS_NO.search(t) or _NONE_OF_IT.search(t) or _DRAWER.search(t) or _NAMED_INSTEAD.search(t)
                or _NAMED.search(t) or _block_place(t) is not None or _place_first(t) is not None)


# A statement's shape about a block, whether or not its place is read ("the red block is ...",
# "red block: ...", "the red block has ..."): an order read from such a line is asked back.
_STATEMENT_SHAPE = re.compile(rf"\b{_BLOCK}(?:,? it)? (?:is|are|was|were|has|had|got|made it|ended up|fell|went|sits|lies|"
                              rf"rests)\b(?! (?:not |the |a )?(?:wrong|right|incorrect|correct|next|first|last|one|bad|"
                              rf"fine|ok|okay|better|best)\b)|\b{_BLOCK} ?[:\u2014]")  # not "the orange block is wrong"


def looks_like_statement(text: str) -> bool:
    """Whether a line has a statement's shape about a block, though the grammar may not read its place
    (understand asks back an order read from it rather than act on what may be a fact)."""
    t = _normalise(text)
    return not _not_a_statement(t) and bool(_STATEMENT_SHAPE.search(t) or _THERE_IS_A.search(t))


def _size(word: str | None) -> str | None:
    return vocab.SIZE_SYNONYMS.get(word) if word else None


def _block_place(t: str):
    """(subject match, place, place match) of the first "<block> is <place>" in t, positive places first."""
    denied = None
    for m in _SUBJECT_PLACE.finditer(t):
        rest = t[m.end():]
        negated = bool(m.group(4))
        vague = _VAGUE_RE.match(rest)
        if vague is not None:  # "in there, in the red bowl", "right there on the table", "not there"
            after = rest[vague.end():]
            if negated:
                positive = _positive_after(after)
                if positive is not None:
                    return m, positive[0], positive[1]
                if re.match(r"(?:there|here)\b", rest):
                    return m, "absent", None  # "the red block is not there"
                denied = denied or (m, "table", None)  # "not in there": in no bowl or drawer
                continue
            placed = _place_at(after)
            if placed is not None:
                return m, placed[0], placed[1]
            continue
        if negated and re.match(r"(?:anywhere|to be (?:seen|found)|in (?:the|this) (?:scene|picture|image|view)|"
                                r"on the table at all)\b", rest):
            return m, "absent", None  # "the green block isn't anywhere"
        for pattern, place in _PLACE_RE:
            pm = pattern.match(rest)
            if pm is None:
                continue
            if negated:  # "is not in the bowl": look for the place said instead (", on the table")
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


def _place_at(text: str):
    """(place, match) of the place phrase `text` opens with, or None."""
    for pattern, place in _PLACE_RE:
        pm = pattern.match(text)
        if pm is not None:
            return place, pm
    return None


def _colors_sizes(m: re.Match) -> tuple[list[str], list[str | None]]:
    """The colours a match read, in order, each with the size word said before it (or None)."""
    colors, sizes, size = [], [], None
    for g in m.groups():
        if g in vocab.SIZE_SYNONYMS:
            size = g
        elif g in vocab.ALL_COLORS:
            colors.append(g)
            sizes.append(size)
            size = None
    return colors, sizes


def _place_first(t: str, context: ReferenceContext | None = None) -> Fact | None:
    """The fact of a line that names the place before, or around, the block: "there's a red block in
    the blue bowl", "the blue bowl has the red block", "you're holding the red block", "the green
    block is under the red block", "you already opened the drawer"."""
    m = _DRAWER_DONE.search(t)
    if m is not None:
        return Fact(DRAWER, "open" if m.group(1) == "opened" else "shut")
    m = _DRAWER_TERSE.search(t)
    if m is not None:
        return Fact(DRAWER, "open" if m.group(1) in ("open", "opened", "ajar") else "shut")
    m = _UNDER.search(t)
    if m is not None:
        (below, above), (below_size, above_size) = _colors_sizes(m)
        return Fact(_block_name(above, above_size, context), "block", _block_name(below, below_size, context))
    m = _BOWL_HAS.search(t)
    if m is not None:
        colors, sizes = _colors_sizes(m)
        bowl = vocab.bowl_name(colors[0]) if len(colors) == 2 else None
        return Fact(_block_name(colors[-1], sizes[-1], context), "bowl", bowl)
    m = _HOLDING.search(t)
    if m is not None:
        colors, sizes = _colors_sizes(m)
        return Fact(_block_name(colors[0], sizes[0], context), "held")
    m = _YOU_PUT.search(t)
    if m is not None:  # a report only with "already" / "just" ("you put the red block in the bowl" may be an order)
        placed = _place_at(t[m.end():])
        if placed is not None and (m.group(1) or re.match(r"\W*(?:already|just now)\b", t[m.end() + placed[1].end():])):
            colors, sizes = _colors_sizes(m)
            return _with_where(Fact(_block_name(colors[0], sizes[0], context), placed[0]), placed[1], context)
    m = _THERE_IS_A.search(t)
    if m is not None:
        placed = _place_at(t[m.end():])
        if placed is not None and placed[0] != "absent":
            colors, sizes = _colors_sizes(m)
            return _with_where(Fact(_block_name(colors[0], sizes[0], context), placed[0]), placed[1], context)
    return None


def _positive_after(rest: str):
    """ "..., it's on the table" / ", on the table" after a denied place."""
    for piece in re.split(r"[,;]|\bbut\b|\bit is\b|\bit's\b", rest):
        piece = piece.strip()
        piece = piece[re.match(_ADVERBS, piece + " ").end():] if piece else piece  # "it's still on the table"
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


def _named_before(t: str, end: int, context: ReferenceContext | None) -> str | None:
    """The last block named in t before `end` ("the orange block hasn't moved, it's on the table")."""
    named = list(re.finditer(rf"\b{_SIZE}{_COLOR} {_BLOCK_NOUN}\b", t[:end]))
    return _block_name(named[-1].group(2), named[-1].group(1), context) if named else None


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
    m = _THERE_IS_NO.search(t) or _NONE_OF_IT.search(t)
    if m is not None:
        color = next(g for g in m.groups() if g in vocab.ALL_COLORS)
        size = next((g for g in m.groups() if g and g in vocab.SIZE_SYNONYMS), None)
        return Fact(vocab.block_name(color, _size(size)), "absent")
    m = _DRAWER.search(t)
    if m is not None:
        is_open = m.group(2) in ("open", "opened", "wide open", "ajar")
        return Fact(DRAWER, "open" if is_open != bool(m.group(1)) else "shut")
    m = _DRAWER_DONE.search(t)
    if m is not None:
        return _place_first(t, context)
    m = _NAMED_INSTEAD.search(t)
    if m is not None:  # "that's not the blue bowl, it's the green one"
        denied_color, named_color = [g for g in m.groups() if g]
        return Fact(f"{named_color} bowl", NAMED, where=f"{denied_color} bowl")
    m = _NAMED.search(t)
    if m is not None:
        colors = [g for g in m.groups() if g]
        instead = f"{colors[1]} bowl" if len(colors) > 1 else _current_bowl(context)
        subject = f"{colors[0]} bowl"
        return Fact(subject, NAMED, where=instead if instead != subject else None)
    found = _block_place(t)
    if found is None:
        return _place_first(t, context)
    sm, place, pm = found
    if sm.group(3):  # "it", "that one": the block the line named before it, else the one held or at hand
        subject = _named_before(t, sm.start(), context) or _held_or_current(context)
        if subject is None:
            return None
    else:
        subject = _block_name(sm.group(2), sm.group(1), context)
    return _with_where(Fact(subject, place), pm, context)


def _with_where(fact: Fact, pm: re.Match | None, context: ReferenceContext | None) -> Fact:
    """The fact with the bowl, the block beneath or the side its place phrase `pm` names."""
    if pm is None:
        return fact
    groups = [g for g in pm.groups() if g]
    colors = [g for g in groups if g in vocab.ALL_COLORS]
    where = side = None
    if fact.place == "bowl" and colors:
        where = vocab.bowl_name(colors[0])
    elif fact.place == "block" and colors:
        sizes = [g for g in groups if g in vocab.SIZE_SYNONYMS]
        where = _block_name(colors[0], sizes[0] if sizes else None, context)
    elif fact.place == "table":
        sides = [g for g in groups if g in ("left", "right", "middle", "center", "centre")]
        side = {"center": "middle", "centre": "middle"}.get(sides[0], sides[0]) if sides else None
    return Fact(fact.subject, fact.place, where, side)
