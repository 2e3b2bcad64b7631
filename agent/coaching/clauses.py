"""Free text -> the kind of correction it is: words, clauses, and a kind per clause.

The utterance takes the strongest kind of its clauses (override > negation > nudge > stop > pause
> resume > confirm); a constraint marker anywhere makes it a constraint. The precedence and its
reasons are in agent/coaching/classify.py's docstring.
"""

from __future__ import annotations

import re

from agent.coaching import vocab
from agent.coaching.phrases import (
    CONFIRM_ALLOWED, CONFIRM_CORE, CONFIRM_EXACT, CONSTRAINT_PATTERNS, DIRECTION_WORDS, FILLERS,
    GRIPPER_ACTION_WORDS, MAGNITUDE_WORDS, NEGATION_WORDS, PAUSE_PHRASES, RESUME_PHRASES, ROTATION_WORDS,
    STOP_PHRASES, SYMBOL_WORDS, WEAK_NEGATION, WORD_FIXES,
)
from agent.coaching.references import is_put_down, object_refs, verb_intents
from policies.types import CorrectionKind

K = CorrectionKind


def split_words(text: str) -> list[str]:
    for symbol, word in SYMBOL_WORDS.items():
        text = text.replace(symbol, word)
    text = text.lower().replace("counter-clockwise", "counterclockwise").replace("counter clockwise", "counterclockwise")
    text = text.replace("anti-clockwise", "anticlockwise").replace("e-stop", "estop")
    words = re.findall(r"[^\W_]+(?:'[^\W_]+)?", text)
    return [WORD_FIXES.get(w, w) for w in words]


def split_clauses(text: str) -> list[list[str]]:
    lowered = text.lower()
    for symbol, word in SYMBOL_WORDS.items():
        lowered = lowered.replace(symbol, f",{word},")
    lowered = re.sub(r"\b(instead of|rather than|and not)\b", ", not", lowered)
    parts = re.split(r"[,;.!?:()\[\]]+|\s[-–—]+\s|\bbut\b|\bthen\b|(?<=\w)\s+(?=not\b)", lowered)
    return [w for w in (split_words(p) for p in parts) if w]


def core_words(words: list[str]) -> list[str]:
    """Words without fillers and immediate repeats ("stop stop stop" -> "stop")."""
    out: list[str] = []
    for w in words:
        if w in FILLERS:
            continue
        if out and out[-1] == w:
            continue
        out.append(w)
    return out


_PRIORITY = (K.OVERRIDE, K.NEGATION, K.NUDGE, K.STOP, K.PAUSE, K.RESUME, K.CONFIRM)


def free_text_kind(text: str) -> CorrectionKind | None:
    lowered = " ".join(split_words(text))
    if any(p.search(lowered) for p in CONSTRAINT_PATTERNS):
        return K.CONSTRAINT
    kinds: list[CorrectionKind] = []
    weak_negation = False
    for clause in split_clauses(text):
        kind = clause_kind(clause)
        if kind == "weak_negation":
            weak_negation = True
        elif kind is not None:
            kinds.append(kind)
    for kind in _PRIORITY:
        if kind in kinds:
            return kind
    return K.NEGATION if weak_negation else None


def clause_kind(words: list[str]) -> CorrectionKind | str | None:
    core = core_words(words)
    if not core:
        return None
    phrase = " ".join(core)
    if phrase in STOP_PHRASES:
        return K.STOP
    if phrase in PAUSE_PHRASES:
        return K.PAUSE
    if phrase in RESUME_PHRASES:
        return K.RESUME
    if phrase in WEAK_NEGATION:
        return "weak_negation"
    if _is_confirm(core):
        return K.CONFIRM
    refs = object_refs(core)
    verbs = verb_intents(core)
    nudge = _has_nudge_cue(core)
    if _has_negation(core):
        return K.NEGATION
    if refs and not (nudge and _has_magnitude(core) and not verbs - {"generic"}):
        return K.OVERRIDE
    if is_put_down(core):
        return K.OVERRIDE
    if nudge:
        return K.NUDGE
    if verbs & {"pick", "place", "stack", "push"}:
        return K.OVERRIDE
    # lenient single-word cues inside longer clauses
    if "stop" in core or "halt" in core or "freeze" in core:
        return K.STOP
    if {"wait", "pause"} & set(core) or "hold on" in phrase or "hang on" in phrase:
        return K.PAUSE
    if {"continue", "resume", "proceed"} & set(core) or re.search(r"\b(go on|carry on|keep going|go ahead)\b", phrase):
        return K.RESUME
    if set(core) & CONFIRM_CORE - {"right", "done", "fine"} and not set(core) & DIRECTION_WORDS:
        return K.CONFIRM
    return None


def _is_confirm(core: list[str]) -> bool:
    phrase = " ".join(core)
    if phrase in CONFIRM_EXACT:
        return True
    if re.fullmatch(r"(that's |that is |it's |yes |yep |yeah )?(the )?right (one|block|bowl|choice|thing|move|way)", phrase):
        return True
    words = set(core)
    if not words <= CONFIRM_ALLOWED:
        return False
    core_hits = words & CONFIRM_CORE
    if not core_hits:
        return False
    if core_hits == {"right"} and not words & {"that's", "that", "is", "it's", "looks", "exactly", "all", "yes"}:
        return False  # "right", "go right": a direction; "that's right": approval
    return True


def _has_negation(core: list[str]) -> bool:
    words = set(core)
    if words & NEGATION_WORDS:
        return True
    if core[0] in ("no", "nope", "nah") and len(core) > 1 and not object_refs(core[1:]):
        return True  # "no no no that's wrong" — but "no, the blue one" is an override
    phrase = " ".join(core)
    return bool(re.search(r"\b(do not|stop (?!moving\b)\w+ing|leave it|let it be|that's enough)\b", phrase))


def _has_magnitude(core: list[str]) -> bool:
    return bool(set(core) & MAGNITUDE_WORDS)


def _has_nudge_cue(core: list[str]) -> bool:
    phrase = " ".join(core)
    words = set(core)
    if words & set(vocab.GRIPPER_NOUNS) or re.search(r"\b(let go|let it go|open up|close up|open it|close it|drop it)\b", phrase):
        return True
    # "up" in "pick up", "right" in "all right"/"right now", "back" in "put it back" are not motions
    phrase = re.sub(r"\b(pick|picking|picks|picked|lift|pile|open|stack|stacking) (it |them |\w+ )?up\b", " ", phrase)
    phrase = re.sub(r"\b(right (now|there|away|here|ahead)|all right|that's right|put it back|back to)\b", " ", phrase)
    directions = set(phrase.split()) & DIRECTION_WORDS
    if directions:
        return True
    if words & ROTATION_WORDS or words & GRIPPER_ACTION_WORDS:
        return True
    return phrase.strip() in ("open", "close", "more", "a bit more", "a little more", "further", "bit more")
