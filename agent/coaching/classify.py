"""Console text -> a command, a classified correction, or just a reply.

`classify(text, context=None)` never raises. It returns one of (agent.inputs.UserInput):

  * `Command`             a console command: /pause /resume /reset /task TEXT /undo /good /save /help /quit
  * `ClassifiedCorrection` a `policies.types.Correction` (kind + canonical subtask when one can be
                          extracted) with a console reply, notes and the objects it mentions
  * `Reply`               nothing to do, only an answer ("unknown command /foo — try /help")

A line starting with a question word ("what do you see?", "why did you do that") is a question:
Command(ASK, text), as `/ask TEXT` is.

Precedence, first match wins:

 1. Cleaning: NFKC, curly quotes straightened, control/format characters stripped, whitespace
    collapsed, cut at MAX_CHARS (noted in the reply). Empty -> Reply.
 2. A leading "/" is a slash command. Console commands map to `Command`; forcing prefixes
    /override TEXT, /not TEXT, /rule TEXT, /nudge TEXT, /stop, /confirm force the correction kind
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

Subtask extraction maps object references into the canonical subtask language
(agent.coaching.vocab): "the blue one" -> "pick up the blue block", "put it in the green bowl
instead" -> "place it in the green bowl", "do the drawer" -> "open the drawer". Pass a
`ReferenceContext` (the subtask in force, the held object) to resolve "the blue one" against what
the robot is doing ("place it in the red bowl" + "no, the blue one" -> "place it in the blue
bowl") and "not that one" to the current subtask.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from typing import Union

from agent.coaching import vocab
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


# ====================================================================== vocabulary

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
}
NEEDS_TEXT = {K.OVERRIDE: "/override pick up the blue block", K.CONSTRAINT: "/rule never use the drawer",
              K.NUDGE: "/nudge a bit left"}
WRITTEN_PREFIX_RE = re.compile(r"^\s*(override|not|no|negation|rule|constraint|nudge|stop|confirm)\s*:\s*(.*)$", re.I)

HELP_TEXT = (
    "commands: /go /pause /resume /reset /task TEXT /undo /good /rules /forget N /speed X /slow /fast /ask QUESTION /save /help /quit\n"
    "force a kind: /override TEXT  /not TEXT  /rule TEXT  /nudge TEXT  /stop  (or 'override: TEXT', ...)\n"
    "or just type: 'no, the blue one first' (override), 'not that one' (negation), "
    "'never use the drawer' (rule), 'a bit left' (nudge), 'stop' / 'wait' / 'go on', 'good' (confirm)"
)

# Characters people type as whole words.
SYMBOL_WORDS = {"👍": " good ", "✅": " good ", "✔": " good ", "👌": " good ", "👎": " no ", "❌": " no ",
                "🛑": " stop ", "✋": " wait ", "⏸": " wait ", "▶": " continue ", "⬅": " left ", "➡": " right ",
                "⬆": " up ", "⬇": " down "}
WORD_FIXES = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "thats": "that's", "its": "it's",
              "ok": "okay", "k": "okay", "pls": "please", "plz": "please", "u": "you", "ur": "your",
              "anti": "anti", "colour": "color", "l": "left", "r": "right"}

FILLERS = frozenset("please okay hey um uh er erm hmm ah oh oops so well just now robot buddy mate "
                    "and then again quickly quick already sir".split())

STOP_PHRASES = frozenset({
    "stop", "halt", "freeze", "abort", "stop it", "stop right there", "stop moving", "stop everything",
    "emergency stop", "e stop", "estop", "whoa", "woah", "stop stop", "full stop", "stop the robot",
    "stop immediately", "stop here", "stand still", "stop that", "cut it out", "kill it", "stop the arm",
})
PAUSE_PHRASES = frozenset({
    "wait", "hold on", "hang on", "pause", "hold it", "hold up", "one moment", "one second", "one sec",
    "a moment", "a second", "a sec", "wait a moment", "wait a second", "wait a sec", "wait a bit",
    "give me a second", "give me a moment", "give me a sec", "let me think", "hold still", "stay there",
    "not yet", "wait up", "hold that", "hang on a second", "hold on a second", "hold on a moment",
    "wait there", "pause for a moment", "pause there", "take a break", "hold your horses", "wait wait",
    "stay put", "hold position", "wait for me", "don't move",
})
RESUME_PHRASES = frozenset({
    "go on", "continue", "resume", "carry on", "keep going", "go ahead", "proceed", "go", "unpause",
    "you can continue", "you may continue", "you can go on", "you can go", "back to work", "back to it",
    "let's go", "okay go", "go go", "off you go", "on you go", "as you were", "move on", "never mind",
    "nevermind", "forget it", "all clear", "don't stop", "keep at it", "resume the task", "continue the task",
    "go on then", "continue please", "carry on please", "you're clear", "keep it going", "start again",
    "get going", "go again", "continue where you were", "pick up where you left off", "back to the task",
    "you can resume", "resume please", "proceed please", "continue on", "go right ahead", "keep moving",
})
CONFIRM_CORE = frozenset(
    "yes yeah yep yup yea good great nice perfect correct exactly excellent awesome brilliant lovely super "
    "bingo fantastic wonderful splendid superb sweet cool beautiful neat done thanks thank nailed better "
    "right absolutely fine".split())
CONFIRM_ALLOWED = CONFIRM_CORE | frozenset(
    "that's that is it it's this one the very really so job work well nicely looks look looking seems "
    "thanks you spot on got what i wanted want way to go choice move a just like sir indeed definitely "
    "totally much now we're talking there you're doing thing keep up all bang on was were proper "
    "continue same".split())
CONFIRM_EXACT = frozenset({"that's it", "you got it", "nailed it", "there you go", "way to go", "bang on",
                           "spot on", "keep it up", "that's the one", "that one", "this one"})

NEGATION_WORDS = frozenset({"not", "don't", "doesn't", "isn't", "wrong", "incorrect", "mistake", "nope", "nah",
                            "skip", "cancel", "forget", "other", "different", "wrongly", "mistaken", "bad"})
WEAK_NEGATION = frozenset({"no", "nope", "nah", "no no", "no no no", "nope nope", "uh uh", "no way", "bad"})

PICK_VERBS = frozenset("pick picking picks grab grabbing take taking get getting lift lifting fetch grasp grasping "
                       "collect seize choose select touch touching want need reach".split())
PLACE_VERBS = frozenset("place placing put putting drop dropping set deposit lay bring carry load move moving "
                        "lower insert".split())
STACK_VERBS = frozenset("stack stacking pile balance".split())
PUSH_VERBS = frozenset("push pushing slide sliding shove sweep nudge".split())
OPEN_VERBS = frozenset("open opening pull".split())
CLOSE_VERBS = frozenset("close closing shut shutting".split())
GENERIC_VERBS = frozenset("do doing use using handle go try work start finish deal".split())
INTO_PREPS = frozenset("in into inside to onto on atop".split())

DIRECTION_WORDS = frozenset("left right forward forwards ahead back backward backwards backwards up down upward "
                            "upwards downward downwards higher lower raise descend ascend closer nearer further "
                            "farther away toward towards sideways".split())
GRIPPER_ACTION_WORDS = frozenset("release let grip squeeze tighter looser wider loosen tighten".split())
ROTATION_WORDS = frozenset("rotate rotating turn twist spin clockwise counterclockwise anticlockwise yaw".split())
MAGNITUDE_WORDS = frozenset("bit little slightly tad touch smidge tiny more further much lot way".split())

CONSTRAINT_PATTERNS = tuple(re.compile(p) for p in (
    r"\bnever\b(?!\s*mind)", r"\balways\b", r"\bfrom now on\b", r"\bfrom here on\b", r"\bfrom this point\b",
    r"\bfor the rest\b", r"\brest of the (episode|task|time|run|session)\b", r"\bat all times\b",
    r"\b(don't|do not) (you )?ever\b", r"\bever again\b", r"\bany ?more\b", r"\bleave\b.{0,40}\balone\b",
    r"\b(stay|keep|steer) (away|clear) (from|of)\b", r"\bavoid(ing)?\b", r"\bonly (ever )?(use|touch|pick|put|place|stack|move)\b",
    r"\bthe rule is\b", r"\bas a rule\b", r"\bnew rule\b", r"\bevery time\b", r"\beach time\b", r"\bwhenever\b",
    r"\bin (the )?future\b", r"\bgoing forward\b", r"\bwhatever you do\b", r"\buntil the end\b",
    r"\bat no point\b", r"\bunder no circumstances\b", r"\bno matter what\b", r"\bnot allowed\b",
    r"\bforbidden\b", r"\boff ?limits\b", r"\bout of bounds\b", r"\bhands off\b", r"\bfor good\b",
    r"\bmust (not )?\w+", r"\bis banned\b", r"\bkeep (your hands )?off\b", r"\bfrom then on\b",
    r"\bthroughout\b", r"\bthe whole (episode|task|time)\b",
))


# A constraint with one of these is a rule for good (kept for the session) ...
LASTING_PATTERNS = tuple(re.compile(p) for p in (
    r"\bnever\b(?!\s*mind)", r"\balways\b", r"\bfrom (now|here|then) on\b", r"\bfrom this point\b", r"\bfor good\b",
    r"\bin (the )?future\b", r"\bgoing forward\b", r"\b(every|each) time\b", r"\bwhenever\b", r"\bever again\b",
    r"\bany ?more\b", r"\b(every|each|all) (episode|task|session|run)s?\b", r"\bthe rule is\b", r"\bas a rule\b",
    r"\bnew rule\b", r"\b(don't|do not) (you )?ever\b", r"\bremember\b", r"\bpermanently\b",
))
# ... unless its words keep it to the episode at hand.
EPISODE_ONLY_PATTERNS = tuple(re.compile(p) for p in (
    r"\bthis (time|episode|task|round|run)\b", r"\bfor now\b", r"\b(rest|end) of the (episode|task|run)\b",
    r"\bthe whole (episode|task)\b", r"\bjust (now|here)\b", r"\bright now\b", r"\btoday\b",
))


def is_lasting(text: str, *, forced: bool = False) -> bool:
    """Whether a constraint's words state a rule for good (a forced /rule is one unless limited to now)."""
    lowered = " ".join(str(text).lower().split())
    if any(p.search(lowered) for p in EPISODE_ONLY_PATTERNS):
        return False
    return forced or any(p.search(lowered) for p in LASTING_PATTERNS)


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
    kind = _free_text_kind(text)
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


# ====================================================================== free text


def _words(text: str) -> list[str]:
    for symbol, word in SYMBOL_WORDS.items():
        text = text.replace(symbol, word)
    text = text.lower().replace("counter-clockwise", "counterclockwise").replace("counter clockwise", "counterclockwise")
    text = text.replace("anti-clockwise", "anticlockwise").replace("e-stop", "estop")
    words = re.findall(r"[^\W_]+(?:'[^\W_]+)?", text)
    return [WORD_FIXES.get(w, w) for w in words]


def _clauses(text: str) -> list[list[str]]:
    lowered = text.lower()
    for symbol, word in SYMBOL_WORDS.items():
        lowered = lowered.replace(symbol, f",{word},")
    lowered = re.sub(r"\b(instead of|rather than|and not)\b", ", not", lowered)
    parts = re.split(r"[,;.!?:()\[\]]+|\s[-–—]+\s|\bbut\b|\bthen\b|(?<=\w)\s+(?=not\b)", lowered)
    return [w for w in (_words(p) for p in parts) if w]


def _core(words: list[str]) -> list[str]:
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


def _free_text_kind(text: str) -> CorrectionKind | None:
    lowered = " ".join(_words(text))
    if any(p.search(lowered) for p in CONSTRAINT_PATTERNS):
        return K.CONSTRAINT
    kinds: list[CorrectionKind] = []
    weak_negation = False
    for clause in _clauses(text):
        kind = _clause_kind(clause)
        if kind == "weak_negation":
            weak_negation = True
        elif kind is not None:
            kinds.append(kind)
    for kind in _PRIORITY:
        if kind in kinds:
            return kind
    return K.NEGATION if weak_negation else None


def _clause_kind(words: list[str]) -> CorrectionKind | str | None:
    core = _core(words)
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
    refs = _object_refs(core)
    verbs = _verb_intents(core)
    nudge = _has_nudge_cue(core)
    if _has_negation(core):
        return K.NEGATION
    if refs and not (nudge and _has_magnitude(core) and not verbs - {"generic"}):
        return K.OVERRIDE
    if _is_put_down(core):
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
    if core[0] in ("no", "nope", "nah") and len(core) > 1 and not _object_refs(core[1:]):
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


# ====================================================================== objects and verbs


@dataclass(frozen=True)
class _Ref:
    color: str | None
    size: str | None  # "small" | "large" | None
    kind: str | None  # block | bowl | drawer | one | None (a bare colour)
    index: int  # word position
    destination: str | None = None  # "in" (a container) or "on" (stack onto) when after a preposition


def _object_refs(core: list[str]) -> list[_Ref]:
    refs: list[_Ref] = []
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
            refs.append(_Ref(word, size, kind, i, _destination(core, i)))
            i = j + 1
            continue
        kind = vocab.noun_kind(word)
        # a bare "one" only refers to an object after "that"/"this"/"other"/a size ("the small one")
        if kind and (kind != "one" or (i > 0 and core[i - 1] in vocab.SIZE_WORDS + ("other", "that", "this", "which"))):
            refs.append(_Ref(None, size, kind, i, _destination(core, i)))
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


def _verb_intents(core: list[str]) -> set[str]:
    words = set(core)
    intents: set[str] = set()
    for name, verbs in (("pick", PICK_VERBS), ("place", PLACE_VERBS), ("stack", STACK_VERBS), ("push", PUSH_VERBS),
                        ("open", OPEN_VERBS), ("close", CLOSE_VERBS), ("generic", GENERIC_VERBS)):
        if words & verbs:
            intents.add(name)
    return intents


PUT_DOWN_RE = re.compile(r"\b(put|place|set|lay|drop|leave) (it|that|this|them)( back)? down\b|\bon (the )?table\b")


def _is_put_down(core: list[str]) -> bool:
    return bool(PUT_DOWN_RE.search(" ".join(core)))


def _block(ref: _Ref, context: ReferenceContext | None) -> str:
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


def _resolve_subtask(core: list[str], kind: CorrectionKind, context: ReferenceContext | None) -> str | None:
    """The canonical subtask an override asks for, or a negation forbids; None when unclear."""
    all_refs = _object_refs(core)
    refs = [r for r in all_refs if r.kind != "one" or r.color]
    anonymous = [r for r in all_refs if r.kind == "one" and not r.color]
    verbs = _verb_intents(core)
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
        if obj is not None and kind is K.OVERRIDE and holding != _block(obj, context):
            return vocab.pick_up(_block(obj, context))
        dest_kind = dest.kind if dest.kind in ("block", "bowl") else ("bowl" if dest.destination == "in" else "block")
        return vocab.place_in_bowl(dest.color) if dest_kind == "bowl" else vocab.stack_on(_block(dest, context))

    if objects:
        obj = objects[0]
        obj_kind = obj.kind
        if obj_kind in (None, "one"):  # "the blue one", "blue!": take the kind from what the robot is doing
            obj_kind = vocab.target_kind(current) if current else "block"
            if obj_kind not in ("block", "bowl"):
                obj_kind = "block"
        if obj_kind == "bowl":
            return vocab.place_in_bowl(obj.color)
        block = _block(obj, context)
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

    if _is_put_down(core):
        return vocab.PUT_DOWN
    # No colour named: "not that one", "wrong block", "pick it up"
    if context and context.current_subtask and (kind is K.NEGATION or anonymous or not verbs):
        return context.current_subtask
    if current and context and verbs & {current.kind, "generic"}:
        return context.current_subtask
    return None


def _drawer_subtask(refs: list[_Ref], verbs: set[str], context: ReferenceContext | None, holding: str | None) -> str:
    if "open" in verbs:
        return vocab.OPEN_DRAWER
    if "close" in verbs:
        return vocab.CLOSE_DRAWER
    drawer = next(r for r in refs if r.kind == "drawer")
    if drawer.destination == "in" or verbs & {"place"}:
        block = next((r for r in refs if r.kind in (None, "block", "one") and r.color and not r.destination), None)
        if block is not None and holding != _block(block, context):
            return vocab.pick_up(_block(block, context))
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


# ====================================================================== building the result


def _correction(kind: CorrectionKind, text: str, notes: tuple[str, ...], context: ReferenceContext | None,
                *, forced: bool) -> ClassifiedCorrection:
    core = _core(_words(text))
    objects = tuple(dict.fromkeys(_canonical_objects(core, context)))
    subtask = None
    if kind in (K.OVERRIDE, K.NEGATION):
        subtask = _subtask_for(kind, text, context)
    unknown = [o for o in objects if o != "drawer" and o.split()[-2] not in vocab.SCENE_COLORS]
    reply_notes = notes + ((f"there is no {', '.join(unknown)} in this world",) if unknown else ())
    rule = parse_rule(text, context.scene_blocks if context else ()) if kind is K.CONSTRAINT else None
    lasting = kind is K.CONSTRAINT and is_lasting(text, forced=forced)
    reply = f"rule for the rest of the session: {text}" if lasting else _reply(kind, text, subtask)
    return ClassifiedCorrection(kind=kind, text=text, subtask=subtask, rule=rule, lasting=lasting,
                                reply=_with_notes(reply, reply_notes),
                                notes=reply_notes, objects=objects, forced=forced)


def _subtask_for(kind: CorrectionKind, text: str, context: ReferenceContext | None) -> str | None:
    """Take the subtask from the clause that decided the kind (the positive one for an override)."""
    clauses = _clauses(text) or [_words(text)]
    wanted = [c for c in clauses if _clause_kind(c) is kind] or clauses
    for clause in wanted:
        sub = _resolve_subtask(_core(clause), kind, context)
        if sub and vocab.split_subtask(sub) is not None:  # only subtasks the scene's grammar accepts
            return sub
    if kind is K.NEGATION and context and context.current_subtask:
        return context.current_subtask
    return None


def _canonical_objects(core: list[str], context: ReferenceContext | None) -> list[str]:
    names = []
    current = vocab.split_subtask(context.current_subtask) if context else None
    for ref in _object_refs(core):
        if ref.kind == "drawer":
            names.append("drawer")
        elif ref.color:
            kind = ref.kind if ref.kind in ("block", "bowl") else (
                "bowl" if ref.destination == "in" else (vocab.target_kind(current) if current else "block"))
            names.append(vocab.bowl_name(ref.color) if kind == "bowl" else _block(ref, context))
    return names


def _reply(kind: CorrectionKind, text: str, subtask: str | None) -> str:
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
