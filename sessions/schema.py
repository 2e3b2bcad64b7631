"""Versioned schema of everything a session writes to disk.

A session directory holds `session.json` (a SessionHeader), an append-only `events.jsonl`
(one record per line, discriminated by `type`) and per-episode camera frame files. Bump
SCHEMA_VERSION on any incompatible change; readers refuse versions they do not know.

Versions: 1, the first; 2, PlanEmitted records the context the planner read (`context`), which
sessions of version 1 lack (their readers fall back to no context; see sessions.export); 3, rules
remembered for the session (RuleRemembered, RuleForgotten) and the context's `memory` (additive:
sessions of versions 1 and 2 read as having no memory); 4, facts (corrections of kind `fact`):
the fact a correction states (`CorrectionRecord.fact`) and the facts in force a planner read
(`ContextData.facts`) (additive: older sessions read as having none); 5, a step may carry a `label`:
the action chunk a privileged expert would execute from that step's state (DAgger's label, written by
`hivla datagen --mode dagger`; additive: older sessions read as having none); 6, a correction may carry
the `subtask` it asks for or forbids, as the reader read it (a negation said "no, not that" names the
subtask in force; the planner reads it as "not: <subtask>", policies.planning.read_text; additive:
older sessions read as having none, so their planners read the words); 7, a step says whether its
action was a person's (`Step.intervention`: a nudge moved the arm; additive: older sessions read False).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from policies.types import CorrectionKind

SCHEMA_VERSION = 7


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlanData(_Record):
    thought: str
    subtask: str
    source: Literal["model", "human", "oracle"]


class SessionHeader(_Record):
    format: Literal["hivla-session"] = "hivla-session"
    schema_version: int = SCHEMA_VERSION
    session_id: str
    created: str  # ISO-8601 UTC
    hivla_version: str
    high_level: str  # policy spec string
    low_level: str
    fps: float = 10.0
    cameras: dict[str, tuple[int, int]]  # name -> (height, width)
    state_names: list[str]
    action_names: list[str]
    env: dict = Field(default_factory=dict)  # env config (suite, image size, ...)
    notes: str = ""


class EpisodeStart(_Record):
    type: Literal["episode_start"] = "episode_start"
    episode: int
    task: str
    family: str | None = None
    seed: int | None = None
    subtasks: list[str] = Field(default_factory=list)  # the reference decomposition, if known
    wall_time: float


class Step(_Record):
    """One control step. Images are stored in the frame files, indexed by (episode, frame)."""

    type: Literal["step"] = "step"
    episode: int
    step: int
    frame: int  # index into this episode's frame files
    time: float  # simulated seconds since episode start
    wall_time: float
    state: list[float]
    action: list[float]
    plan_id: int | None  # id of the PlanEmitted in force
    subtask: str | None
    subtask_index: int | None = None  # index into EpisodeStart.subtasks, if known
    paused: bool = False
    # [H][A]: the chunk the scripted expert would execute from this step's state under `subtask`
    # (schema 5). The low level learns it instead of the actions executed next (DAgger).
    label: list[list[float]] | None = None
    # the action was a person's, not the policy's: a step a nudge's burst moved the arm (schema 7).
    # Sessions of earlier versions read False; agent.coaching.nudge_bursts recovers theirs from the records.
    intervention: bool = False


class SaidData(_Record):
    kind: CorrectionKind
    text: str


class FactData(_Record):
    """A fact as data: policies.scene_line.Fact (subject, place, where, side)."""

    subject: str
    place: str
    where: str | None = None
    side: str | None = None


class ContextData(_Record):
    """What the high level read at a decision: policies.planning.PlannerContext as data."""

    task: str
    done: list[str] = Field(default_factory=list)  # subtasks completed, each once, the latest last
    in_force: str | None = None  # the subtask of the plan in force when it was asked
    corrections: list[SaidData] = Field(default_factory=list)  # the planning corrections it read, oldest first
    memory: list[str] = Field(default_factory=list)  # the session's remembered rules it read (schema 3)
    facts: list[FactData] = Field(default_factory=list)  # the facts in force it read, oldest first (schema 4)


class PlanEmitted(_Record):
    type: Literal["plan"] = "plan"
    episode: int
    step: int
    plan_id: int
    plan: PlanData
    reason: Literal["start", "timer", "subtask_done", "correction", "reset", "task_change"]
    latency_s: float | None = None  # the high level's own compute time for this plan
    wall_time: float  # when the plan landed (was applied), at control step `step`
    # When it was asked (None: asked and applied at once, e.g. a human override or an older session).
    # With the high level off the control path these differ: the robot kept acting in between.
    asked_step: int | None = None
    asked_wall_time: float | None = None
    context: ContextData | None = None  # what the planner read (schema 2); None in sessions of schema 1


class CorrectionRecord(_Record):
    type: Literal["correction"] = "correction"
    episode: int
    step: int
    correction_id: int
    kind: CorrectionKind
    text: str
    subtask: str | None = None  # the subtask it asks for (override) or forbids (negation), as read (schema 6)
    speaker: Literal["human", "scripted"] = "human"
    replaced_plan: PlanData | None = None  # the plan in force when the correction came
    model_plan: PlanData | None = None  # what the model itself would plan now (if computed)
    resulting_plan: PlanData | None = None  # the plan adopted because of it
    suspect_from_step: int | None = None  # steps [suspect_from_step, step) are likely wrong behaviour
    mistake: str | None = None  # scripted coach: what it saw (wrong_object, wrong_order, ...)
    # a fact: what it says is true, as the reader read it (schema 4): a perception label on this step's frames
    fact: FactData | None = None
    withdrawn: bool = False
    wall_time: float


class CorrectionWithdrawn(_Record):
    type: Literal["correction_withdrawn"] = "correction_withdrawn"
    episode: int
    step: int
    correction_id: int
    wall_time: float


class QuestionAnswered(_Record):
    """A question put to the high level (`/ask`, or a typed question) and its answer. It changes
    nothing in the episode; exported as a `vqa` language event."""

    type: Literal["question"] = "question"
    episode: int
    step: int
    question: str
    answer: str
    camera: str = "front"  # the view the answer is grounded in (LeRobot's vqa rows name one)
    wall_time: float


class RuleRemembered(_Record):
    """A rule kept for the rest of the session: said for good ("from now on ...", "always ..."), typed
    with /rule, or the same rule said in two episodes. It is in every later plan's context until a
    RuleForgotten with its `rule_id`."""

    type: Literal["rule_remembered"] = "rule_remembered"
    episode: int
    step: int
    rule_id: int  # unique within the session
    text: str
    how: Literal["said", "command", "repeated"]
    correction_id: int | None = None  # the correction that stated it
    wall_time: float


class RuleForgotten(_Record):
    """/forget N: the remembered rule `rule_id` stops applying from this step on."""

    type: Literal["rule_forgotten"] = "rule_forgotten"
    episode: int
    step: int
    rule_id: int
    wall_time: float


class EpisodeEnd(_Record):
    type: Literal["episode_end"] = "episode_end"
    episode: int
    steps: int
    success: bool
    subtasks_completed: int
    subtasks_total: int
    reason: Literal["success", "timeout", "stopped", "reset", "task_change", "quit", "error"]
    wall_time: float


# What an episode records besides its start and its steps (SessionRecorder.record takes these).
EPISODE_EVENTS = (PlanEmitted, CorrectionRecord, CorrectionWithdrawn, QuestionAnswered, RuleRemembered, RuleForgotten,
                  EpisodeEnd)
EpisodeEvent = Union[EPISODE_EVENTS]

# Any line of events.jsonl.
Event = Annotated[Union[(EpisodeStart, Step, *EPISODE_EVENTS)], Field(discriminator="type")]
