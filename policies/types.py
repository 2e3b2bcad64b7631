"""The data every part of hivla exchanges: observations, plans, action chunks, corrections.

These are in-memory contracts (dataclasses, numpy arrays). What goes to disk is described by the
versioned pydantic schema in `sessions.schema`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from policies.rules import Rule
from policies.scene_line import Fact

PlanSource = Literal["model", "human", "oracle"]

# The subtask of a plan that says the task is finished: the control loop holds the arm still and
# does not re-plan on "subtask done" (it would, at every step, for any real subtask already satisfied).
TASK_DONE = "done"

# float32[H, A]: H future actions, each [dx, dy, dz, dyaw, grip] (see agent.envs for units).
ActionChunk = np.ndarray


@dataclass
class Observation:
    """What a policy sees at one control step.

    `privileged` is filled only by the simulator and read only by privileged policies
    (the oracle planner, the scripted expert, the scripted coach); learned policies must ignore it.
    """

    images: dict[str, np.ndarray]  # camera name -> uint8 [H, W, 3]; at least "front" and "wrist"
    state: np.ndarray  # float32 [D] proprioception
    task: str
    time: float
    privileged: Any = None

    def __post_init__(self) -> None:
        for name in ("front", "wrist"):
            if name not in self.images:
                raise ValueError(f"Observation needs a {name!r} camera image, got {sorted(self.images)}")
        for name, img in self.images.items():
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
                raise ValueError(f"image {name!r} must be uint8 [H, W, 3], got {img.dtype} {img.shape}")


@dataclass(frozen=True)
class Plan:
    """The high level's output: a short chain of thought ending in one subtask."""

    thought: str
    subtask: str
    source: PlanSource = "model"

    @property
    def is_done(self) -> bool:
        return self.subtask == TASK_DONE


class CorrectionKind(str, enum.Enum):
    OVERRIDE = "override"  # do this subtask now
    NEGATION = "negation"  # not that
    CONSTRAINT = "constraint"  # a rule for the rest of the episode
    NUDGE = "nudge"  # a motion in language: "a bit left", "lower", "open the gripper"
    STOP = "stop"
    PAUSE = "pause"
    RESUME = "resume"
    CONFIRM = "confirm"  # that was right
    FACT = "fact"  # a statement about the scene: corrects what the planner believes, never what it does


@dataclass(frozen=True)
class Correction:
    """One thing a person (or the scripted coach) said, already classified."""

    kind: CorrectionKind
    text: str
    time: float = 0.0
    step: int = 0
    subtask: str | None = None  # the subtask it asks for (override) or forbids (negation), if any
    rule: Rule | None = None  # what a constraint forbids, as the classifier read it (None: nothing checkable)
    lasting: bool = False  # a constraint said as a rule for good ("from now on ...", /rule): kept for the session
    fact: Fact | None = None  # what a fact says, as the grammar read it (None: no object and place could be read)


@dataclass
class PlanContext:
    """What the high level knows beyond the current observation."""

    task: str
    plan_history: list[Plan] = field(default_factory=list)
    corrections: list[Correction] = field(default_factory=list)
    completed_subtasks: list[str] = field(default_factory=list)
    # rules remembered for the session (lasting constraints, this episode's and earlier ones), oldest first
    memory: list[Correction] = field(default_factory=list)
    # facts in force (kind FACT, read), oldest first: each holds until its block is moved by a subtask
    # that completes, or the episode ends (agent/runtime)
    facts: list[Correction] = field(default_factory=list)

    @property
    def constraints(self) -> list[Correction]:
        return [c for c in self.corrections if c.kind is CorrectionKind.CONSTRAINT]

    @property
    def negations(self) -> list[Correction]:
        return [c for c in self.corrections if c.kind is CorrectionKind.NEGATION]
