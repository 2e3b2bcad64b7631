"""What a typed line means, and how sure we are: the console's reading of free text.

Two readers, each doing what it is good at:
  * the intent model (policies.intent: a frozen sentence encoder and a linear head trained on
    generated utterances) chooses what the line asks for: one of the eight correction kinds, a
    question for the high level, or a change of pace ("slower please");
  * the grammar (agent.coaching.classify) finds what it is about: the objects, the canonical
    subtask of an override or negation, and (agent.coaching.rules) the rule of a constraint.

Slash commands and written prefixes ("/rule ...", "not: ...") are the grammar's alone and sure.
The reading is *unsure* when the intent model's probability is below ASK_BELOW, or when the
grammar's own reading of the line is the opposite one: always when the model hears an override and
the grammar a negation or rule, and below SURE_REFUSAL the other way round. A fact is never acted on
as an order: a line the grammar reads as a statement about the scene is read as a fact whatever the
model hears (asked back when the model hears something else), and a fact the model hears but the
grammar cannot place (no object or no place) is asked back; a fact's meaning is the belief it sets.
An override or negation read from a line with a statement's shape ("the red block is ...", "red
block: ...") is asked back too: it may be a fact the grammar cannot place. The console then asks
back ("did you mean: never touch the green block for this episode? (y / n / rephrase)") and acts
only on yes.

A few misspelt words are mended first ("gren" -> "green", "blok" -> "block", "contineu" ->
"continue"): only words within one edit of a colour or an object noun of this world (or one swapped,
doubled or dropped letter from a few words that say what is wanted), and only words the grammar does
not already know.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Union

from agent.coaching import vocab
from agent.coaching.classify import (
    CONFIRM_ALLOWED, DIRECTION_WORDS, FILLERS, GENERIC_VERBS, MAGNITUDE_WORDS,
    NEGATION_WORDS, PICK_VERBS, PLACE_VERBS, WRITTEN_PREFIX_RE, ClassifiedCorrection, ReferenceContext, classify,
    clean_text, correction_as,
)
from agent.coaching.facts import looks_like_statement
from agent.coaching.rules import Rule, parse_rule
from agent.inputs import Command, CommandName, Reply
from policies.types import CorrectionKind

K = CorrectionKind
ASK_BELOW = 0.7  # the intent model's probability under which the console asks back
SURE_REFUSAL = 0.9  # a negation or rule the grammar reads as an override is asked back below this
CORRECTION_INTENTS = {k.value: k for k in CorrectionKind}
PACE_INTENTS = {"slower": CommandName.SLOW, "faster": CommandName.FAST}
_REFUSING = {K.NEGATION, K.CONSTRAINT}

Item = Union[ClassifiedCorrection, Command, Reply]


@dataclass(frozen=True)
class Understanding:
    """One reading of a line: `item` is what would be acted on (a correction, a command, a reply;
    a question is Command(ASK, question)); `intent` names it ("constraint", "question", "slower",
    "command", "reply"); `confidence` in [0, 1]; `rule` is a constraint's checkable rule."""

    item: Item
    intent: str
    confidence: float = 1.0
    rule: Rule | None = None
    why_unsure: str = ""

    @property
    def unsure(self) -> bool:
        return bool(self.why_unsure)

    @property
    def objects(self) -> tuple[str, ...]:
        return getattr(self.item, "objects", ())

    def meaning(self) -> str:
        """The reading in a few words, as the console asks it back."""
        item = self.item
        if self.intent == "question":
            return f'a question for the planner: "{item.argument}"'
        if self.intent in PACE_INTENTS:
            return "slow the robot down" if self.intent == "slower" else "speed the robot up"
        if not isinstance(item, ClassifiedCorrection):
            return getattr(item, "reply", "") or str(item)
        kind = item.kind
        if kind is K.CONSTRAINT:
            return _rule_meaning(self.rule, item.text, lasting=bool(getattr(item, "lasting", False)))
        if kind is K.OVERRIDE:
            return f"{item.subtask} now" if item.subtask else f'do "{item.text}" now'
        if kind is K.NEGATION:
            return f"don't {item.subtask}" if item.subtask else f'not that ("{item.text}")'
        if kind is K.FACT:
            fact = getattr(item, "fact", None)
            return f"believe: {fact.phrase()}" if fact is not None else f'a fact I cannot place: "{item.text}"'
        return {K.NUDGE: f'a small motion: "{item.text}"', K.STOP: "stop the robot", K.PAUSE: "pause the robot",
                K.RESUME: "carry on", K.CONFIRM: "that was right"}[kind]


def _rule_meaning(rule: Rule | None, text: str, *, lasting: bool = False) -> str:
    """A rule in a few words, with how long it lasts (a rule for good is kept for the session)."""
    scope = "from now on, every episode" if lasting else "for this episode"
    if rule is None:
        return f'a rule {scope}: "{text}"'
    return {"avoid_block": f"never touch the {rule.obj} {scope}",
            "avoid_bowl": f"never put anything in the {rule.obj} {scope}",
            "avoid_drawer": f"never use the drawer {scope}",
            "only_bowl": f"only use the {rule.obj} {scope}"}[rule.kind]


# ====================================================================== spelling of object words

_TARGETS = tuple(vocab.SCENE_COLORS) + ("block", "blocks", "bowl", "bowls", "drawer", "cube", "cubes")
_KNOWN = (set(vocab.ALL_COLORS) | set(vocab.BLOCK_NOUNS) | set(vocab.BOWL_NOUNS) | set(vocab.DRAWER_NOUNS)
          | set(vocab.SIZE_WORDS) | set(FILLERS) | set(DIRECTION_WORDS) | set(MAGNITUDE_WORDS) | set(NEGATION_WORDS)
          | set(PICK_VERBS) | set(PLACE_VERBS) | set(GENERIC_VERBS) | set(CONFIRM_ALLOWED)
          | {"read", "lock", "rock", "glue", "tube", "cute", "bold", "bowel", "grew", "greet", "greed", "reed",
             "bed", "rod", "lowly", "blow", "slowly", "brown", "ranger"})


# Words that say what is wanted (and two that say a statement is one: "allready", "acutally"), mended
# only for a swapped, doubled or dropped letter ("contineu", "waiit", "rigth"): a changed letter would
# turn real words ("tower", "might") into them.
_KIND_TARGETS = ("continue", "resume", "wait", "stop", "proceed", "pause", "freeze", "forward", "higher", "lower", "slower", "faster",
                 "gripper", "rotate", "clockwise", "release", "right", "never", "always", "alone", "please", "already",
                 "actually")
_KNOWN |= set(_KIND_TARGETS) | {"tower", "towers", "slowly", "flower", "power", "might", "night", "light", "tight",
                                 "eight", "fight", "sight", "whatever", "forever"}


def _one_edit(a: str, b: str, substitution: bool = True) -> bool:
    """Damerau distance exactly one (a deletion, insertion, substitution or adjacent swap)."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return (len(diff) == 1 and substitution) or (len(diff) == 2 and diff[1] == diff[0] + 1
                                                      and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def _mend_word(word: str) -> str:
    lower = word.lower()
    if lower in _KNOWN or not lower.isalpha() or len(lower) < 3:
        return word
    for target in _TARGETS:
        if len(lower) == 3 and sorted(lower) != sorted(target):
            continue  # three letters: only a swap ("rde"), else "bed" would become "red"
        if _one_edit(lower, target):
            return target
    if len(lower) >= 5:
        for target in _KIND_TARGETS:
            if _one_edit(lower, target, substitution=False):
                return target
    return word


# Apostrophes people skip; the encoder has seen the words with them.
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "thats": "that's", "whats": "what's",
                 "wheres": "where's", "hows": "how's", "whys": "why's", "youre": "you're", "cant": "can't",
                 "wont": "won't", "didnt": "didn't", "im": "i'm", "ive": "i've", "lets": "let's"}


def mend_spelling(text: str) -> str:
    """'pick up the gren blok' -> 'pick up the green block' (object words and skipped apostrophes)."""
    import re

    def mend(m: re.Match) -> str:
        word = m.group(0)
        return _CONTRACTIONS.get(word.lower(), None) or _mend_word(word)

    return re.sub(r"[A-Za-z]+", mend, text)


# ====================================================================== reading a line


def understand(text: object, context: ReferenceContext | None = None,
               probs: Callable[[str], dict[str, float]] | None = None) -> Understanding:
    """Read one console line. `probs` is the intent model (text -> {intent: p}); default the shipped one."""
    cleaned, _ = clean_text(text)
    grammar = classify(text, context)
    if not cleaned or cleaned.startswith("/") or WRITTEN_PREFIX_RE.match(cleaned):
        return _from_grammar(grammar, cleaned)
    mended = mend_spelling(cleaned)
    probs = probs or _shipped_probs()
    if probs is None:  # the console opened a moment ago and the model is still loading
        if mended != cleaned:
            grammar = classify(mended, context)
        reading = _from_grammar(grammar, cleaned)
        if isinstance(grammar, ClassifiedCorrection) and grammar.kind is K.NEGATION and looks_like_statement(mended):
            return Understanding(reading.item, reading.intent, 0.0, reading.rule, why_unsure=_STATED)
        if not (isinstance(grammar, ClassifiedCorrection) and grammar.kind is K.OVERRIDE):
            return reading  # as the console read lines before the model: the grammar's other readings hold
        # the grammar's blind spot: rules it reads as overrides ("leave the green block where it is")
        return Understanding(reading.item, reading.intent, 0.0, reading.rule,
                             why_unsure="read by the grammar alone: the intent model is still loading")
    p = probs(mended)
    intent = max(p, key=p.get)
    confidence = p[intent]
    if mended != cleaned:
        grammar = classify(mended, context)
    why = f"the intent model is {confidence:.0%} sure" if confidence < ASK_BELOW else ""
    if intent == "unclear" or (why and isinstance(grammar, Reply)):
        # Neither reader makes sense of it ("hmm", "asdf qwer"): say so. Or only the grammar does: its
        # reading, asked back.
        reading = _from_grammar(grammar, cleaned)
        if isinstance(grammar, Reply):
            return reading
        return Understanding(reading.item, reading.intent, confidence, reading.rule,
                             why_unsure=f"the intent model cannot tell ({intent}, {confidence:.0%})")
    if (isinstance(grammar, ClassifiedCorrection) and grammar.kind is K.FACT) or intent == "fact":
        fact_item = grammar if isinstance(grammar, ClassifiedCorrection) and grammar.kind is K.FACT else None
        return _fact_reading(fact_item or correction_as(K.FACT, mended, context), intent, confidence, why)
    if intent == "question":
        return Understanding(Command(CommandName.ASK, cleaned, ""), intent, confidence, why_unsure=why)
    if intent in PACE_INTENTS:
        name = PACE_INTENTS[intent]
        return Understanding(Command(name, "", "slower" if intent == "slower" else "faster"), intent, confidence,
                             why_unsure=why)
    if isinstance(grammar, Command) and grammar.name is CommandName.ASK:
        why = why or "the grammar reads it as a question"  # "why the blue one?" may be either
    grammar_kind = grammar.kind if isinstance(grammar, ClassifiedCorrection) else None
    kind = CORRECTION_INTENTS[intent]
    item = correction_as(kind, mended, context)
    if grammar_kind is not None and _opposite(kind, grammar_kind):
        # Acting on an override the person meant as a refusal does what they forbade: always ask.
        # A refusal the grammar reads as an override ("leave the green block where it is") is the
        # grammar's known blind spot: ask unless the intent model is quite sure.
        if kind is K.OVERRIDE or confidence < SURE_REFUSAL:
            why = why or f"the grammar reads it as a {grammar_kind.value}"
        two_objects = len(set(grammar.objects)) > 1
        if grammar_kind is K.OVERRIDE and (two_objects or (kind is K.NEGATION and confidence < SURE_REFUSAL)):
            # "not the yellow one, the orange one", "no, in the purple bowl": the grammar reads clause
            # by clause and knows a leading "no" starts a request; the encoder pools the line into one
            # vector. (Its blind spot is rules, "leave X where it is": there the model's reading stays.)
            kind, intent, item = K.OVERRIDE, "override", grammar
        runner_up = sorted(p, key=p.get)[-2]
        if confidence < ASK_BELOW and CORRECTION_INTENTS.get(runner_up) is grammar_kind:
            # The model is unsure and the grammar's reading is its close second ("the blue bowl is where
            # it should go": rule 45%, request 41%): ask back the reading both readers find plausible,
            # never a rule the words do not state.
            kind, intent, item = grammar_kind, runner_up, grammar
    if kind in (K.OVERRIDE, K.NEGATION) and not why and looks_like_statement(mended):
        why = _STATED  # "purple block: already in the green bowl" may be a fact the grammar cannot place
    rule = parse_rule(item.text, context.scene_blocks if context else ()) if kind is K.CONSTRAINT else None
    return Understanding(item, intent, confidence, rule=rule, why_unsure=why)


_STATED = "it reads like a statement about the scene, not an order"


def _fact_reading(item: ClassifiedCorrection, intent: str, confidence: float, why: str) -> Understanding:
    """A statement about the scene: read as a fact, never as an order; unsure when the two readers
    disagree, or when the grammar cannot say which object and where."""
    if intent != "fact":
        why = why or f"the intent model reads it as {'a' if intent != 'override' else 'an'} {intent}"
    elif item.fact is None:
        why = why or "the grammar cannot read which object it is about and where"
    return Understanding(item, "fact", confidence if intent == "fact" else 1.0 - confidence, why_unsure=why)


_loader: threading.Thread | None = None


def start_loading(on_ready: Callable[[str], None] | None = None) -> None:
    """Load the shipped intent model on a thread (a few seconds), so a console opens at once; lines
    typed before it is ready are read by the grammar, and its overrides count as unsure. `on_ready` gets one line
    saying it is loaded (or why it failed)."""
    global _loader
    if _loader is None:
        _loader = threading.Thread(target=_load, args=(on_ready,), daemon=True, name="intent-model-load")
        _loader.start()


def finish_loading(timeout: float = 30.0) -> None:
    """Wait for start_loading's thread before the process exits: a daemon thread still importing or
    running torch when the interpreter shuts down can abort it ("terminate called without an active
    exception", exit 134; seen once, after a session was saved)."""
    if _loader is not None:
        _loader.join(timeout)


def _load(on_ready: Callable[[str], None] | None) -> None:
    try:
        from policies.intent import shipped_intent_model  # torch and transformers: imported here, off the UI thread

        shipped_intent_model().probs("ready")  # the first pass through torch is the slow one
        message = "intent model loaded: typed lines are read as people say them"
    except Exception as err:  # said once here; the next line raises it again, with the fix
        message = f"the intent model did not load ({type(err).__name__}: {err})"
    if on_ready is not None:
        on_ready(message)


def _shipped_probs() -> Callable[[str], dict[str, float]] | None:
    """The shipped model's probs; None while start_loading's thread is still at work."""
    if _loader is not None and _loader.is_alive():
        return None
    from policies.intent import shipped_intent_model

    return shipped_intent_model().probs  # loaded (or loads now, on this thread: headless scripts)


def _opposite(a: CorrectionKind, b: CorrectionKind) -> bool:
    return (a is K.OVERRIDE and b in _REFUSING) or (b is K.OVERRIDE and a in _REFUSING)


def _from_grammar(item: Item, cleaned: str) -> Understanding:
    if isinstance(item, ClassifiedCorrection):
        rule = parse_rule(item.text) if item.kind is K.CONSTRAINT else None
        return Understanding(item, item.kind.value, 1.0, rule=rule)
    if isinstance(item, Command):
        if item.name is CommandName.ASK:
            return Understanding(item, "question")
        return Understanding(item, PACE_NAMES.get(item.name, "command"))
    return Understanding(item, "reply")


PACE_NAMES = {CommandName.SLOW: "slower", CommandName.FAST: "faster"}
