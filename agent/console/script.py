"""Headless coaching: the same controller fed from a script instead of a keyboard.

A script is plain text, one line per thing said (what a person would type in the console):

    # comments and blank lines are ignored
    @25 no, the blue one first        said at control step 25
    a bit more to the left            said SPACING_STEPS (1 s) after the previous line
    /pause

Headless runs are not paced in real time (the loop runs as fast as it can) unless a pace is
given (`--speed`, or a '/speed X' line), so they suit CI and reproducible demos: the same
script, seed and policies give the same session.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from agent.runtime.loop import ControlLoop

SPACING_STEPS = 10  # lines without "@STEP" follow the previous one by 1 s of control (10 Hz)
DEFAULT_MAX_STEPS = 600
# A step past this is surely a typo (a day of control at 10 Hz is 864,000 steps).
MAX_SCRIPT_STEP = 10_000_000
_AT_STEP = re.compile(r"^@(\d+)(?:\s+(.*))?$")


class ScriptError(ValueError):
    """A script line that cannot be scheduled; the message names the line."""


@dataclass(frozen=True)
class ScriptLine:
    step: int  # console iteration at which the line is said
    text: str
    lineno: int


def parse_script(lines: Iterable[str], first_step: int = SPACING_STEPS) -> list[ScriptLine]:
    """Schedule script lines; "@N" lines must not go back in time."""
    scheduled: list[ScriptLine] = []
    next_step = first_step
    for lineno, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        stripped = line.strip()
        if stripped.startswith("@"):
            match = _AT_STEP.match(stripped)
            word = stripped.split()[0]
            if not match:
                raise ScriptError(f"script line {lineno}: {word[:20]!r} is not a step; write @STEP TEXT with STEP a "
                                  "whole number >= 0, e.g. '@25 no, the blue one first'")
            step, text = int(match.group(1)), (match.group(2) or "").strip()
            if not text:
                raise ScriptError(f"script line {lineno}: {word[:20]} says nothing; write @STEP TEXT")
            if step > MAX_SCRIPT_STEP:
                raise ScriptError(f"script line {lineno}: @{step} is past the last step a script may name "
                                  f"(@{MAX_SCRIPT_STEP}); is it a typo?")
            if scheduled and step < scheduled[-1].step:
                raise ScriptError(f"script line {lineno}: @{step} is earlier than the line before it (@{scheduled[-1].step})")
        else:
            step, text = next_step, line
        scheduled.append(ScriptLine(step=step, text=text, lineno=lineno))
        next_step = step + SPACING_STEPS
    return scheduled


def run_script(
    loop: ControlLoop,
    controller: Any,
    script: list[ScriptLine],
    *,
    max_steps: int | None = None,
    echo: Callable[[str], None] = print,
    pace: Any = None,
) -> str:
    """Step the loop, saying each script line at its step; returns why it stopped.

    Without `max_steps` the run ends once every line has been said and the last episode is over
    (or after DEFAULT_MAX_STEPS, whichever comes first); the controller's sequencer, if any,
    starts the next episode when one ends. While the episode is over nothing moves, so the run
    goes straight on to the next line (a late line is answered "the episode ... nothing
    recorded" at once instead of the loop idling until its step). `pace` (agent.console.pace)
    spaces the steps in wall time; without one they run back to back.
    """
    sequencer = getattr(controller, "sequencer", None)
    pending = list(script)
    limit = max_steps if max_steps is not None else max(DEFAULT_MAX_STEPS, (script[-1].step + 1) if script else 0)
    iteration = 0
    while iteration < limit:
        while pending and pending[0].step <= iteration:
            line = pending.pop(0)
            outcome = controller.handle(line.text)
            echo(f"[step {iteration}] › {printable(line.text)}")
            for reply in outcome.reply.splitlines():
                echo(f"    {printable(reply)}")
            if outcome.quit:
                return "quit"
        if pace is not None:
            pace.wait_for_next_step()
        loop.step()
        if pace is not None:
            pace.stepped()
        snap = loop.snapshot()
        shown = controller.loop_replied(snap.last_reply) if snap is not None else None
        if shown:  # what the loop itself answered, e.g. "withdrew: ..."
            echo(f"    {shown}")
        if sequencer is not None:
            sequencer.observe(snap)  # says the summary; may start the next episode at once
            snap = loop.snapshot()
        last = sequencer is None or sequencer.finished
        if max_steps is None and not pending and snap is not None and snap.episode_over and last:
            return "episode over"
        iteration += 1
        if snap is not None and snap.episode_over and pending and pending[0].step > iteration:
            iteration = min(pending[0].step, limit)  # nothing happens in between: skip the idle steps
    if pending:  # said nowhere: tell, rather than let the lines vanish
        first = pending[0]
        echo(f"not said: {len(pending)} script line(s) from line {first.lineno} (@{first.step}) on come after "
             f"the last step ({limit}); raise --steps to reach them")
    return "step limit"


def printable(text: str) -> str:
    """`text` safe to print to a terminal: control characters (escape sequences that clear the
    screen or set the title) shown as '?'."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)
