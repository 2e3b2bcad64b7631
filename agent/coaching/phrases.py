"""The word tables of the console classifier (agent/coaching/classify.py): what people type for
each kind of correction, the verbs and motion words, and the patterns that make a line a rule
(and a rule for good). Data only, plus `is_lasting`, which reads its own two pattern lists."""

from __future__ import annotations

import re

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
