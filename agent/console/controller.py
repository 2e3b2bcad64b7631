"""What happens to a line the person types: check it, understand it, act on it, answer.

The controller never touches the environment or the policies: corrections and loop commands go
to `ControlLoop.submit` (applied at the next control step, so typing never stalls the robot);
only the console's own commands (/save, /help, /quit) are handled here. Every line gets a reply
for the view, including the ones that are refused (empty, too long, control characters,
text that is not plain English).

Free text is read by agent.coaching.understand (intent model for the kind, grammar for the
objects). With `ask_back` (the interactive console; headless scripts only with --confirm) an
unsure reading is asked back, "did you mean: never touch the green block for this episode?
(y / n / rephrase)", and acted on only after "y"; "n" records nothing, anything else is read as
the rephrased line. A question (typed, or /ask QUESTION) goes to the high level's `answer` when it
has one (policies.base.SceneQuestionAnswerer); it never changes the plan and is never recorded.
"""

from __future__ import annotations

import time
import unicodedata
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from agent.inputs import Command, CommandName, Reply
from policies.types import Correction

if TYPE_CHECKING:
    from agent.runtime.loop import ControlLoop
    from sessions.recorder import SessionRecorder

MAX_LINE_CHARS = 300  # corrections are short; a longer line is most likely a paste accident
MAX_MESSAGES = 50

# The console's commands, in the order /help lists them.
SLASH_COMMANDS: dict[str, str] = {
    "/go": "start the robot (it waits at the first frame), or the next episode now",
    "/pause": "hold the robot still (steps keep being recorded, flagged paused)",
    "/resume": "carry on after /pause or a stop",
    "/reset": "end this episode and start a new one",
    "/task": "/task TEXT: start a new episode with this task",
    "/undo": "withdraw your last correction",
    "/good": "confirm that what the robot does is right",
    "/rules": "list the rules remembered for the session, numbered",
    "/forget": "/forget N: stop applying remembered rule N (from now on)",
    "/speed": "/speed X: X simulated seconds per wall second (0.25, 0.5, 1, 2, max)",
    "/slow": "half the speed (about)",
    "/fast": "double the speed (about)",
    "/ask": "/ask QUESTION: ask the high level about the scene (a typed question does the same)",
    "/save": "flush the session to disk now",
    "/help": "show this list",
    "/quit": "save the session and leave (Ctrl-C does the same)",
}
# Slash prefixes that force the kind of a correction (agent.coaching.classify understands them;
# a written "override: TEXT", "not: TEXT", ... works too).
FORCING_COMMANDS: dict[str, str] = {
    "/override": "/override TEXT: do this subtask now",
    "/not": "/not TEXT: not that",
    "/rule": "/rule TEXT: a rule kept for the rest of the session",
    "/nudge": "/nudge TEXT: a small motion (\"a bit left\")",
    "/stop": "stop moving",
    "/confirm": "that was right",
}
# Commands a finished episode still answers (the rest would act on a robot that has stopped).
_STILL_ANSWERED = {CommandName.RULES, CommandName.RESET, CommandName.TASK, CommandName.SAVE, CommandName.HELP,
                   CommandName.QUIT, CommandName.SPEED, CommandName.SLOW, CommandName.FAST}
_PACE_COMMANDS = {CommandName.SPEED, CommandName.SLOW, CommandName.FAST}
WRITTEN_PREFIXES = ("override:", "not:", "rule:", "nudge:", "stop:", "confirm:")

# Typographic characters people paste from other apps, mapped to the ASCII the classifier reads.
_ASCII_LOOKALIKES = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "–": "-", "—": "-", "…": "...", "\u00a0": " "})


def help_text() -> str:
    lines = ['Type a correction in plain English ("no, the blue one first", "a bit more to the left"), or a command:']
    lines += [f"  {name:<10} {text}" for name, text in SLASH_COMMANDS.items()]
    lines.append("Force the kind of a correction: " + "  ".join(f"{name} TEXT" for name in list(FORCING_COMMANDS)[:4])
                 + "  /stop  /confirm  (or write 'override: TEXT', 'not: TEXT', ...)")
    return "\n".join(lines)


def check_line(line: str) -> tuple[str | None, str | None]:
    """(text to classify, None), or (None, why the line is refused).

    The classifier copes with most oddities itself (empty input, emoji, stray whitespace); the
    console refuses, with a reply, what it should not guess about: very long lines, control
    characters (escape sequences leave debris like "[A" if merely stripped) and non-English
    letters. Accents and typographic quotes are folded to ASCII ("réd" -> "red").
    """
    line = line.replace("\t", " ").strip()
    if len(line) > MAX_LINE_CHARS:
        return None, f"line too long ({len(line)} characters, at most {MAX_LINE_CHARS}): not sent; say it in fewer words"
    controls = sorted({ch for ch in line if unicodedata.category(ch) in ("Cc", "Cf")})
    if controls:
        shown = " ".join(repr(ch) for ch in controls[:3])
        return None, f"the line contains control characters ({shown}): not sent; please retype it"
    if not line.isascii():
        folded = unicodedata.normalize("NFKD", line.translate(_ASCII_LOOKALIKES))
        folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
        foreign = "".join(dict.fromkeys(ch for ch in folded if not ch.isascii() and unicodedata.category(ch)[0] == "L"))
        if foreign:
            return None, f"only English is understood ({foreign[:5]!r} is not): not sent; please say it in English"
        line = folded  # what is left beyond ASCII are symbols (e.g. a thumbs-up) the classifier reads
    return line, None


def expand_command_prefix(text: str) -> str:
    """'/pau' -> '/pause': a slash word that starts exactly one command stands for it (as in
    many shells); words the classifier knows as aliases ('/p', '/q') are left alone."""
    if not text.startswith("/"):
        return text
    word, sep, rest = text.partition(" ")
    word = word.lower()
    from agent.coaching.classify import COMMAND_ALIASES, FORCING_ALIASES

    aliases = {f"/{name}" for name in (*COMMAND_ALIASES, *FORCING_ALIASES)}
    commands = [*SLASH_COMMANDS, *FORCING_COMMANDS]
    if len(word) < 2 or word in aliases or word in commands:
        return text
    matches = [name for name in commands if name.startswith(word)]
    return matches[0] + sep + rest if len(matches) == 1 else text


YES_WORDS = frozenset({"y", "yes", "yep", "yeah", "yes please", "correct", "right", "exactly", "ok", "okay", "sure"})
NO_WORDS = frozenset({"n", "no", "nope", "nah", "no thanks", "wrong", "cancel"})


@dataclass(frozen=True)
class Outcome:
    reply: str
    quit: bool = False
    submitted: Any = None  # what went to the loop (a Correction or Command), if anything


def _default_understand() -> Callable[..., Any]:
    from agent.coaching.understand import understand

    return understand


def _sure(classify: Callable[..., Any]) -> Callable[..., Any]:
    """A plain classifier (text, context) -> item, as a reader whose every reading is sure."""
    from agent.coaching.understand import Understanding

    def read(text: str, context: Any) -> Any:
        item = classify(text, context)
        return Understanding(item, getattr(getattr(item, "kind", None), "value", "command"))

    return read


class CoachController:
    """Handles typed lines for the console (thread-safe enough: called from the UI thread only)."""

    def __init__(
        self,
        loop: ControlLoop,
        recorder: SessionRecorder | None = None,
        classify: Callable[..., Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        pace: Any = None,
        sequencer: Any = None,
        understand: Callable[..., Any] | None = None,
        ask_back: bool = False,
    ) -> None:
        self.loop = loop
        self.recorder = recorder
        self.pace = pace  # agent.console.pace.Pace, when the speed can be changed here
        self.sequencer = sequencer  # agent.console.episodes.EpisodeSequencer, when episodes follow on
        # (text, context) -> agent.coaching.understand.Understanding; a plain `classify` is always sure
        self._shipped_reader = understand is None and classify is None
        self.understand = understand or (_sure(classify) if classify is not None else _default_understand())
        self.ask_back = ask_back  # ask unsure readings back before acting on them
        self.pending: Any = None  # the Understanding asked back, waiting for y / n / a rephrased line
        self.clock = clock
        self.messages: deque[str] = deque(maxlen=MAX_MESSAGES)
        self.lines_handled = 0
        self._last_loop_reply = ""
        # Replies the loop will echo for what we submitted; already answered here, not repeated.
        self._answered: deque[str] = deque(maxlen=8)

    def prepare(self) -> None:
        """Start loading the intent model (a few seconds) on a thread, rather than on the first line."""
        if self._shipped_reader:
            from agent.coaching.understand import start_loading

            start_loading(on_ready=self.say)

    def say(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            self.messages.append(line)

    def loop_replied(self, reply: str) -> str | None:
        """Show the loop's latest reply (e.g. "withdrew: ...") unless it repeats ours; returns it if shown."""
        if not reply or reply == self._last_loop_reply:
            return None
        self._last_loop_reply = reply
        if reply in self._answered:
            return None
        self.say(reply)
        return reply

    def handle(self, line: str) -> Outcome:
        outcome = self._handle(line)
        self.lines_handled += 1
        item = outcome.submitted
        if isinstance(item, Correction):
            self._answered.append(f"{item.kind.value}: {item.text}")
        elif isinstance(item, Command):
            self._answered.append(item.reply)
        shown = line if len(line) <= 80 else line[:77] + "..."
        shown = shown if shown.strip() else "(Enter)"
        self.messages.append("› " + "".join(ch if ch.isprintable() else "?" for ch in shown))
        self.say(outcome.reply)
        return outcome

    def _handle(self, line: str) -> Outcome:
        text, problem = check_line(line)
        if problem:
            return Outcome(problem)
        if self.pending is not None:
            answered = self._answer_pending(text)
            if answered is not None:
                return answered
        if not text and (go := self._go()):  # Enter on an empty line: start, or skip the pause
            return Outcome(go)
        text = expand_command_prefix(text)
        try:
            reading = self.understand(text, self.reference_context())
        except Exception as err:  # a classifier bug must not end the session
            return Outcome(f"could not understand that ({type(err).__name__}: {err}); nothing was sent")
        if self.ask_back and reading.unsure and not isinstance(reading.item, Reply):
            self.pending = reading
            return Outcome(f"did you mean: {reading.meaning()}? (y / n / rephrase)")
        return self._act(reading.item)

    def _answer_pending(self, text: str) -> Outcome | None:
        """y: act on the reading asked back; n: nothing; anything else: the rephrased line (None)."""
        reading, self.pending = self.pending, None
        word = " ".join(text.lower().strip(" !.").split())
        if word in YES_WORDS:
            outcome = self._act(reading.item)
            return Outcome(f"ok: {outcome.reply}", quit=outcome.quit, submitted=outcome.submitted)
        if word in NO_WORDS:
            return Outcome("nothing recorded: say it another way, or force the kind with /override, /not, /rule "
                           "or /nudge TEXT")
        return None

    def _act(self, item: Any) -> Outcome:
        if isinstance(item, Reply):
            return Outcome(item.reply)
        if isinstance(item, Command) and item.name is CommandName.ASK:
            return Outcome(self._ask(item.argument))
        if isinstance(item, Command) and item.name in _PACE_COMMANDS:
            return Outcome(self._change_speed(item))
        if isinstance(item, Command) and item.name is CommandName.RESUME and (go := self._go()):
            return Outcome(go)  # /go (or /resume) said to a robot waiting to start: it starts
        if isinstance(item, (Correction, Command)) and self._episode_over(item):
            return Outcome(self._episode_over_reply())
        if isinstance(item, Command):
            return self._command(item)
        if isinstance(item, Correction):
            self.loop.submit(item)
            reply = getattr(item, "reply", None) or f"{item.kind.value}: {item.text}"
            return Outcome(reply, submitted=item)
        return Outcome(f"could not understand that (classifier returned {type(item).__name__}); nothing was sent")

    def _ask(self, question: str) -> str:
        """The high level's answer, or one line saying it cannot answer. Changes nothing."""
        from policies.base import SceneQuestionAnswerer

        high = getattr(self.loop, "high", None)
        if not isinstance(high, SceneQuestionAnswerer):
            name = type(high).__name__ if high is not None else "none"
            return f"the high level ({name}) does not answer questions; /ask needs one that does (e.g. a pi05 planner)"
        obs = self.loop.latest_observation()
        if obs is None:
            return "no observation yet: ask again once the episode has started"
        try:
            answer = high.answer(obs, question)
        except Exception as err:  # a failing answer must not end the session
            return f"could not answer ({type(err).__name__}: {err})"
        self.loop.record_question(question, answer)  # a vqa event in the session; the plan is untouched
        return f"Q: {question}\nA: {answer}"

    def _command(self, cmd: Command) -> Outcome:
        if cmd.name is CommandName.QUIT:
            return Outcome(cmd.reply or "saving and quitting", quit=True)
        if cmd.name is CommandName.HELP:
            return Outcome(help_text())
        if cmd.name is CommandName.SAVE:
            return Outcome(self.save())
        if cmd.name is CommandName.RULES:  # answered at once from the loop's published snapshot
            from agent.memory import describe_rules

            snap = self.loop.snapshot()
            return Outcome(describe_rules(snap.memory if snap is not None else ()))
        if cmd.name is CommandName.TASK and not cmd.argument.strip():
            return Outcome("/task needs the task text, e.g. /task put the red block in the blue bowl")
        self.loop.submit(cmd)
        return Outcome(cmd.reply or f"/{cmd.name.value}", submitted=cmd)

    def _go(self) -> str | None:
        """Start a robot held at its first frame, or skip the pause before the next episode; the
        reply, or None when there was nothing to start."""
        if self.pace is not None and self.pace.held:
            self.pace.release()
            return "go: the robot starts (/pause holds it, /slow and /fast change the pace)"
        if self.sequencer is not None and self.sequencer.next_now():
            return "starting the next episode"
        return None

    def _change_speed(self, cmd: Command) -> str:
        if self.pace is None:
            return "the pace cannot be changed here"
        from agent.console.pace import describe_speed, parse_speed
        from agent.errors import UserError

        if cmd.name is CommandName.SLOW:
            self.pace.slower()
        elif cmd.name is CommandName.FAST:
            self.pace.faster()
        else:
            try:
                self.pace.set_speed(parse_speed(cmd.argument))
            except UserError as err:
                return f"{err}: speed unchanged"
        return f"speed {describe_speed(self.pace.speed)} (simulated seconds per wall second)"

    def _episode_over(self, item: Any) -> bool:
        """True when the episode has ended and `item` would act on it (the loop refuses it too;
        answering here says so at once instead of after the next step)."""
        if isinstance(item, Command) and item.name in _STILL_ANSWERED:
            return False
        snap = self.loop.snapshot()
        return bool(getattr(snap, "episode_over", False))

    def _episode_over_reply(self) -> str:
        from agent.loop import episode_over_reply

        snap = self.loop.snapshot()
        what_next = self.sequencer.hint() if self.sequencer is not None else None
        return episode_over_reply(bool(getattr(snap, "success", False)), int(getattr(snap, "step", 0)), what_next)

    def reference_context(self) -> Any:
        """What the robot is doing, so the classifier can resolve "the blue one", "not that one"."""
        from agent.coaching.classify import ReferenceContext

        snap = self.loop.snapshot()
        if snap is None:
            return None
        pending = tuple(s for s, done in zip(snap.subtasks, snap.subtasks_done) if not done)
        return ReferenceContext(current_subtask=snap.plan.subtask if snap.plan else None, pending_subtasks=pending)

    def save(self) -> str:
        if self.recorder is None:
            return "not recording: nothing to save"
        try:
            self.recorder.flush(timeout=10.0)
        except Exception as err:
            return f"saving failed: {err}"
        return f"saved to {self.recorder.path}"
