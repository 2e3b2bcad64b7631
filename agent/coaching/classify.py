"""Console text -> a command, a classified correction, or just a reply.

`classify(text, context=None)` never raises. It returns one of (agent.inputs.UserInput):

  * `Command`             a console command: /pause /resume /reset /task TEXT /undo /good /save /help /quit
  * `ClassifiedCorrection` a `policies.types.Correction` (kind + canonical subtask when one can be
                          extracted) with a console reply, notes and the objects it mentions
  * `Reply`               nothing to do, only an answer ("unknown command /foo — try /help")

A line starting with a question word ("what do you see?", "why did you do that") is a question:
Command(ASK, text), as `/ask TEXT` is.

A statement about the scene ("the blue block is already in the bowl", "there is no red block",
"that's the green bowl", "the drawer is open") is a `fact` (agent/coaching/facts.py reads its object
and place into Correction.fact): it corrects what the planner believes, never what it does, so it
is read before the clause kinds that would take its object for an order.

Precedence, first match wins:

 1. Cleaning: NFKC, curly quotes straightened, control/format characters stripped, whitespace
    collapsed, cut at MAX_CHARS (noted in the reply). Empty -> Reply.
 2. A leading "/" is a slash command. Console commands map to `Command`; forcing prefixes
    /override TEXT, /not TEXT, /rule TEXT, /nudge TEXT, /fact TEXT, /stop, /confirm force the correction kind
    (the text is still parsed for a subtask). Unknown commands -> Reply naming /help.
 3. A written prefix "override:", "not:", "rule:", "nudge:", "stop:", "confirm:" forces the kind too.
 4. Constraint markers anywhere in the text ("never", "always", "from now on", "leave X alone",
    "stay away from", "avoid", "anymore", ...) make it a constraint: a rule for the rest of the
    episode. A constraint said as a rule for good ("from now on", "always", "never", "in future",
    "every time") or forced with /rule is `lasting`: the loop keeps it for the rest of the session,
    unless the words limit it to now ("this time", "for this episode", "for now").
 5. Otherwise the text is split into clauses (at punctuation, "but", "then", "instead of",
    "rather than", and before "not") and each clause gets a kind; the utterance takes the
    strongest one in this order:
        override > negation > nudge > stop > pause > resume > confirm
    so "no, the blue one first" is an override (the bare "no" only counts when nothing else
    does), "stop! wrong block" a negation, "wait" a pause and "good, keep going" a resume.
    Within a clause: exact stop/pause/resume/confirm phrases first; then a negation marker
    ("not", "don't", "wrong", "other one", "stop picking"); then an object reference (an
    override); then motion words without an object (a nudge: "a bit left", "open the gripper").
 6. Nothing recognised -> Reply suggesting the forcing prefixes.

Steps 4 and 5 are agent/coaching/clauses.py's; the words they look for are agent/coaching/phrases.py's.

Subtask extraction (agent/coaching/references.py) maps object references into the canonical
subtask language (agent.coaching.vocab): "the blue one" -> "pick up the blue block", "put it in
the green bowl instead" -> "place it in the green bowl", "do the drawer" -> "open the drawer". Pass
a `ReferenceContext` (the subtask in force, the held object) to resolve "the blue one" against what
the robot is doing ("place it in the red bowl" + "no, the blue one" -> "place it in the blue
bowl") and "not that one" to the current subtask.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Union

from agent.coaching import vocab
from agent.coaching.facts import is_fact_statement, parse_fact
from agent.coaching.clauses import clause_kind, core_words, free_text_kind, split_clauses, split_words
# the word tables stay importable from here (understand.py reads them from this module)
from agent.coaching.phrases import (  # noqa: F401
    CONFIRM_ALLOWED, DIRECTION_WORDS, FILLERS, GENERIC_VERBS, MAGNITUDE_WORDS, NEGATION_WORDS, PICK_VERBS,
    PLACE_VERBS, is_lasting,
)
from agent.coaching.references import ReferenceContext, canonical_objects, resolve_subtask
from agent.coaching.rules import parse_rule
from agent.inputs import Command, CommandName, Reply
from policies.types import Correction, CorrectionKind

MAX_CHARS = 500

K = CorrectionKind


# ====================================================================== result types


@dataclass(frozen=True)
class ClassifiedCorrection(Correction):
    """A Correction as the classifier produced it, with what the console should answer.

    `objects` are canonical object names mentioned ("red block", "blue bowl", "drawer");
    `forced` is True when a slash command or written prefix chose the kind.
    """

    reply: str = ""
    notes: tuple[str, ...] = ()
    objects: tuple[str, ...] = ()
    forced: bool = False
    speaker: str = "human"


ParsedInput = Union[ClassifiedCorrection, Command, Reply]


# ====================================================================== commands and forcing prefixes

COMMAND_ALIASES: dict[str, CommandName] = {
    "pause": CommandName.PAUSE, "p": CommandName.PAUSE,
    "resume": CommandName.RESUME, "continue": CommandName.RESUME, "go": CommandName.RESUME, "r": CommandName.RESUME,
    "reset": CommandName.RESET, "restart": CommandName.RESET,
    "task": CommandName.TASK, "newtask": CommandName.TASK,
    "undo": CommandName.UNDO, "withdraw": CommandName.UNDO,
    "good": CommandName.GOOD,
    "rules": CommandName.RULES, "memory": CommandName.RULES, "forget": CommandName.FORGET,
    "save": CommandName.SAVE,
    "help": CommandName.HELP, "h": CommandName.HELP, "?": CommandName.HELP, "commands": CommandName.HELP,
    "quit": CommandName.QUIT, "exit": CommandName.QUIT, "q": CommandName.QUIT,
    "speed": CommandName.SPEED, "slow": CommandName.SLOW, "slower": CommandName.SLOW,
    "fast": CommandName.FAST, "faster": CommandName.FAST,
    "ask": CommandName.ASK,
}
FORCING_ALIASES: dict[str, CorrectionKind] = {
    "override": K.OVERRIDE, "do": K.OVERRIDE, "instead": K.OVERRIDE,
    "not": K.NEGATION, "no": K.NEGATION, "negate": K.NEGATION, "negation": K.NEGATION, "dont": K.NEGATION,
    "rule": K.CONSTRAINT, "constraint": K.CONSTRAINT, "always": K.CONSTRAINT, "never": K.CONSTRAINT,
    "nudge": K.NUDGE, "move": K.NUDGE,
    "stop": K.STOP, "halt": K.STOP,
    "confirm": K.CONFIRM, "yes": K.CONFIRM, "ok": K.CONFIRM,
    "fact": K.FACT, "belief": K.FACT, "see": K.FACT,
}
NEEDS_TEXT = {K.OVERRIDE: "/override pick up the blue block", K.CONSTRAINT: "/rule never use the drawer",
              K.NUDGE: "/nudge a bit left", K.FACT: "/fact the red block is on the table"}
WRITTEN_PREFIX_RE = re.compile(r"^\s*(override|not|no|negation|rule|constraint|nudge|stop|confirm|fact)\s*:\s*(.*)$", re.I)

HELP_TEXT = (
    "commands: /go /pause /resume /reset /task TEXT /undo /good /rules /forget N /speed X /slow /fast /ask QUESTION /save /help /quit\n"
    "force a kind: /override TEXT  /not TEXT  /rule TEXT  /nudge TEXT  /fact TEXT  /stop  (or 'override: TEXT', ...)\n"
    "or just type: 'no, the blue one first' (override), 'not that one' (negation), "
    "'never use the drawer' (rule), 'a bit left' (nudge), 'stop' / 'wait' / 'go on', 'good' (confirm), "
    "'the red block is already in the bowl' (fact: what is true, the planner re-plans from it)"
)


# "what do you see?", "why did you do that": a question for the high level, not a correction
# ("what about the blue one" and "how about ..." are suggestions, read as corrections).
QUESTION_RE = re.compile(r"^(what|what's|whats|why|where|where's|which|how|who|when)\b(?!\s+about\b)")


# ====================================================================== entry point


def classify(text: object, context: ReferenceContext | None = None) -> ParsedInput:
    """Classify one line of console (or scripted-coach) text. Never raises."""
    try:
        return _classify(text, context)
    except Exception as err:  # a classifier bug must not take the console down; say what happened
        return Reply(f"could not read that input ({type(err).__name__}: {err}); try /help")


def _classify(raw: object, context: ReferenceContext | None) -> ParsedInput:
    text, notes = clean_text(raw)
    if not text:
        return Reply("(empty input ignored — type /help for commands)")
    if text.startswith("/"):
        return _slash(text, notes, context)
    prefixed = WRITTEN_PREFIX_RE.match(text)
    if prefixed:
        kind = FORCING_ALIASES[prefixed.group(1).lower()]
        return _forced(kind, prefixed.group(2).strip(), text, notes, context, f"{prefixed.group(1)}:")
    if QUESTION_RE.match(text.lower()):
        return Command(CommandName.ASK, text, _with_notes(_command_reply(CommandName.ASK, text), notes))
    if is_fact_statement(text):
        return _correction(K.FACT, text, notes, context, forced=False)
    kind = free_text_kind(text)
    if kind is None:
        return Reply(_with_notes(
            f'not sure what "{_short(text)}" asks for — rephrase, or force a kind with '
            "/override TEXT, /not TEXT, /rule TEXT or /nudge TEXT (/help lists all)", notes))
    return _correction(kind, text, notes, context, forced=False)


def correction_as(kind: CorrectionKind, text: str, context: ReferenceContext | None = None) -> ClassifiedCorrection:
    """`text` read as a correction of `kind` chosen elsewhere (the console's intent model): the
    grammar still finds the subtask, the objects and the reply."""
    cleaned, notes = clean_text(text)
    return _correction(kind, cleaned, notes, context, forced=False)


def clean_text(raw: object) -> tuple[str, tuple[str, ...]]:
    """Normalise raw input; returns (text, notes about what was changed)."""
    notes: list[str] = []
    if raw is None:
        return "", ()
    if isinstance(raw, (bytes, bytearray)):
        raw = bytes(raw).decode("utf-8", errors="replace")
    text = raw if isinstance(raw, str) else str(raw)
    text = unicodedata.normalize("NFKC", text)
    text = (text.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
            .replace("`", "'"))
    kept, dropped = [], 0
    for ch in text:
        if ch in "\t\n\r\v\f":
            kept.append(" ")
        elif unicodedata.category(ch)[0] == "C":
            dropped += 1
        else:
            kept.append(ch)
    if dropped:
        notes.append(f"removed {dropped} control character{'s' * (dropped != 1)}")
    text = " ".join("".join(kept).split())
    if len(text) > MAX_CHARS:
        notes.append(f"input cut to {MAX_CHARS} of {len(text)} characters")
        text = text[:MAX_CHARS].rstrip()
    return text, tuple(notes)


# ====================================================================== slash commands and prefixes


def _slash(text: str, notes: tuple[str, ...], context: ReferenceContext | None) -> ParsedInput:
    head, _, argument = text[1:].partition(" ")
    name = head.lower().strip()
    argument = argument.strip()
    if not name:
        return Reply(_with_notes("a bare '/' is not a command — try /help", notes))
    if name in COMMAND_ALIASES:
        command = COMMAND_ALIASES[name]
        if command is CommandName.TASK and not argument:
            return Reply("/task needs the new task, e.g. /task put the red block in the blue bowl")
        if command is CommandName.SPEED and not argument:
            return Reply("/speed needs a value: simulated seconds per wall second, e.g. /speed 0.25, /speed 2, /speed max")
        if command is CommandName.FORGET and not argument.isdigit():
            return Reply("/forget needs the number of a remembered rule, e.g. /forget 1 (/rules lists them)")
        if command is CommandName.ASK and not argument:
            return Reply("/ask needs a question, e.g. /ask what do you see?")
        return Command(command, argument, _with_notes(_command_reply(command, argument), notes))
    if name in FORCING_ALIASES:
        return _forced(FORCING_ALIASES[name], argument, text, notes, context, f"/{name}")
    return Reply(_with_notes(f"unknown command /{_short(name, 30)} — try /help", notes))


def _command_reply(command: CommandName, argument: str) -> str:
    return {
        CommandName.PAUSE: "paused — /resume to continue",
        CommandName.RESUME: "resuming",
        CommandName.RESET: "resetting the episode",
        CommandName.TASK: f"new task: {argument}",
        CommandName.UNDO: "withdrawing the last correction",
        CommandName.GOOD: "noted: that was right",
        CommandName.RULES: "remembered rules",
        CommandName.FORGET: f"forgetting rule {argument}",
        CommandName.SAVE: "saving the session",
        CommandName.HELP: HELP_TEXT,
        CommandName.QUIT: "bye",
        CommandName.SPEED: f"speed {argument}",
        CommandName.SLOW: "slower",
        CommandName.FAST: "faster",
        CommandName.ASK: f"asking: {argument}",
    }[command]


def _forced(kind: CorrectionKind, body: str, full_text: str, notes: tuple[str, ...],
            context: ReferenceContext | None, prefix: str) -> ParsedInput:
    if not body and kind in NEEDS_TEXT:
        return Reply(f"{prefix} needs text, e.g. {NEEDS_TEXT[kind]}")
    text = body or {K.STOP: "stop", K.NEGATION: "not that", K.CONFIRM: "good", K.PAUSE: "wait",
                    K.RESUME: "go on"}.get(kind, full_text)
    return _correction(kind, text, notes, context, forced=True)


# ====================================================================== building the result


def _correction(kind: CorrectionKind, text: str, notes: tuple[str, ...], context: ReferenceContext | None,
                *, forced: bool) -> ClassifiedCorrection:
    core = core_words(split_words(text))
    objects = tuple(dict.fromkeys(canonical_objects(core, context)))
    subtask = None
    if kind in (K.OVERRIDE, K.NEGATION):
        subtask = _subtask_for(kind, text, context)
    unknown = [o for o in objects if o != "drawer" and o.split()[-2] not in vocab.SCENE_COLORS]
    reply_notes = notes + ((f"there is no {', '.join(unknown)} in this world",) if unknown else ())
    rule = parse_rule(text, context.scene_blocks if context else ()) if kind is K.CONSTRAINT else None
    lasting = kind is K.CONSTRAINT and is_lasting(text, forced=forced)
    fact = parse_fact(text, context) if kind is K.FACT else None
    if fact is not None:
        objects = _with_fact_objects(objects, fact)
    reply = f"rule for the rest of the session: {text}" if lasting else _reply(kind, text, subtask, fact)
    return ClassifiedCorrection(kind=kind, text=text, subtask=subtask, rule=rule, lasting=lasting, fact=fact,
                                reply=_with_notes(reply, reply_notes),
                                notes=reply_notes, objects=objects, forced=forced)


def _with_fact_objects(objects: tuple[str, ...], fact) -> tuple[str, ...]:
    """The objects a fact names first (its reading knows a bowl from a block: "that bowl is purple",
    "the drawer's been left open"), then the others the words name, less a "<colour> block" read
    where the fact names that colour's bowl and no such block."""
    named = tuple(o for o in (fact.subject, fact.where) if o)
    bowls = {o.split()[-2] for o in named if o.endswith(" bowl")}
    blocks = {o for o in named if o.endswith(" block")}
    rest = tuple(o for o in objects if o not in named and not (o.endswith(" block") and o not in blocks
                                                                 and o.split()[-2] in bowls))
    return named + rest


def _subtask_for(kind: CorrectionKind, text: str, context: ReferenceContext | None) -> str | None:
    """Take the subtask from the clause that decided the kind (the positive one for an override)."""
    clauses = split_clauses(text) or [split_words(text)]
    wanted = [c for c in clauses if clause_kind(c) is kind] or clauses
    for clause in wanted:
        sub = resolve_subtask(core_words(clause), kind, context)
        if sub and vocab.split_subtask(sub) is not None:  # only subtasks the scene's grammar accepts
            return sub
    if kind is K.NEGATION and context and context.current_subtask:
        return context.current_subtask
    return None


def _reply(kind: CorrectionKind, text: str, subtask: str | None, fact=None) -> str:
    if kind is K.FACT:  # the console echoes the belief it will use
        return f"belief → {fact.phrase()}" if fact is not None else f"fact: {text} (no object and place read)"
    if kind is K.OVERRIDE:
        return f"override → {subtask}" if subtask else f"override: {text} (no canonical subtask found; passed as said)"
    if kind is K.NEGATION:
        return f"negation → not: {subtask}" if subtask else f"negation: {text}"
    return {
        K.CONSTRAINT: f"rule for the rest of the episode: {text}",
        K.NUDGE: f"nudge: {text}",
        K.STOP: "stopping",
        K.PAUSE: "pausing",
        K.RESUME: "resuming",
        K.CONFIRM: "noted: that was right",
    }[kind]


def _with_notes(reply: str, notes: tuple[str, ...]) -> str:
    return f"{reply} ({'; '.join(notes)})" if notes else reply


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
