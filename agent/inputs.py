"""What the control loop accepts from a person or the scripted coach: a Correction
(policies.types) or a console Command. The classifier (agent.coaching.classify) turns text into
one of these, or into a Reply when there is nothing to do but answer."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Union

from policies.types import Correction


class CommandName(str, enum.Enum):
    PAUSE = "pause"
    RESUME = "resume"
    RESET = "reset"
    TASK = "task"
    UNDO = "undo"
    GOOD = "good"
    RULES = "rules"  # list the rules remembered for the session, numbered
    FORGET = "forget"  # /forget N: drop remembered rule N (it stops applying from now on)
    SAVE = "save"
    HELP = "help"
    QUIT = "quit"
    # the console's pace (agent.console.pace): handled by the console, never sent to the loop
    SPEED = "speed"
    SLOW = "slow"
    FAST = "fast"
    # a question for the high level (agent.console.controller): answered in the console, never sent to the loop
    ASK = "ask"


@dataclass(frozen=True)
class Command:
    name: CommandName
    argument: str = ""
    reply: str = ""


@dataclass(frozen=True)
class Reply:
    """Input that changes nothing (empty line, unknown command): only an answer for the console."""

    reply: str


UserInput = Union[Correction, Command, Reply]
