"""The planner's two contracts: what it reads (the context) and what it writes ("thought So: subtask").

    ctx = build_planner_context(context)        # the ONE rule for what a high level reads
    text = format_plan("the drawer is shut", "open the drawer")   # "the drawer is shut So: open the drawer"
    plan = parse_plan(text)                     # Plan(thought, subtask); PlanParseError if there is no subtask

Every high level (pi05, hf), the control loop's recorder and every dataset builder goes through these,
so a model is trained on the context and the answer format it meets at inference. The loop records
`build_planner_context` in each PlanEmitted, so readers use what the planner saw instead of
re-deriving it from the events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from policies.scene_line import Fact
from policies.types import CorrectionKind, Plan, PlanContext, PlanSource

PLAN_SEPARATOR = " So: "
CONTEXT_CORRECTIONS = 4  # how many recent corrections the high level reads
# corrections whose words steer the plan; pause/resume/stop/confirm are handled by the loop
PLANNING_KINDS = frozenset({CorrectionKind.OVERRIDE, CorrectionKind.NEGATION, CorrectionKind.CONSTRAINT,
                            CorrectionKind.NUDGE})
ContextLast = Literal["in_force", "done", "history"]
HISTORY_SUBTASKS = 4  # how many completed subtasks a "history" context lists, the most recent last
RULE_MARK = "rule: "  # how a compact context marks a rule remembered for the session
NEGATION_MARK = "not: "  # how a context reads a negation whose subtask is known


def record_completion(completed: list[str], subtask: str) -> None:
    """Note a finished subtask: each appears once, the most recent completion last (PlannerContext.done;
    a high level whose context names the subtask done last reads completed[-1]). The loop notes them
    this way, and every reader rebuilding them from recorded plans uses this same rule."""
    if subtask in completed:
        completed.remove(subtask)
    completed.append(subtask)


class PlanParseError(ValueError):
    """Text with no "So: <subtask>" in it: no plan can be read from it."""


@dataclass(frozen=True)
class Said:
    """One correction as the planner reads it: its kind and its words."""

    kind: CorrectionKind
    text: str


@dataclass(frozen=True)
class PlannerContext:
    """What a high level reads beyond the cameras and the robot state, at one decision."""

    task: str
    done: tuple[str, ...] = ()  # subtasks completed, each once, the most recent last
    in_force: str | None = None  # the subtask of the plan in force (None before the first plan)
    corrections: tuple[Said, ...] = ()  # planning corrections in force, oldest first, the last CONTEXT_CORRECTIONS
    memory: tuple[str, ...] = ()  # rules remembered for the session (said "from now on", /rule), oldest first
    # facts in force, oldest first: a grounded planner writes each in place of its read-out's reading
    # of that object (policies/scene_line.py apply_facts) before it decides; never part of the text context
    facts: tuple[Fact, ...] = ()

    def last(self, which: ContextLast = "in_force") -> str | None:
        """What a compact context names of the episode's progress: the subtask in force ("in_force"),
        the one completed last ("done"), or ("history") its own labelled phrase, "done: a; b; c | doing: x":
        the last HISTORY_SUBTASKS completed, oldest first, and the subtask in force while it is not the
        one just completed (a timer re-plan mid-subtask). A planner that reads only the last completed
        subtask cannot tell a swap's first move from its last (the same block held, the same subtask
        just done), nor a re-plan mid-subtask from the decision that started it; the history says both."""
        if which == "done":
            return self.done[-1] if self.done else None
        if which == "history":
            parts = [f"done: {'; '.join(self.done[-HISTORY_SUBTASKS:])}"] if self.done else []
            if self.in_force and (not self.done or self.in_force != self.done[-1]):
                parts.append(f"doing: {self.in_force}")
            return " | ".join(parts) or None
        return self.in_force

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.corrections]

    @property
    def read_texts(self) -> list[str]:
        """What a compact context lists: each remembered rule not said again this episode ("rule: ..."),
        oldest first, then the corrections (the pi05 context and the datasets built for it read this)."""
        return [f"{RULE_MARK}{m}" for m in self.memory if m not in self.texts] + self.texts

    def to_dict(self) -> dict:
        return {"task": self.task, "done": list(self.done), "in_force": self.in_force,
                "corrections": [{"kind": s.kind.value, "text": s.text} for s in self.corrections],
                "memory": list(self.memory), "facts": [f.to_dict() for f in self.facts]}

    @classmethod
    def from_dict(cls, data: dict) -> "PlannerContext":
        return planner_context(data["task"], data.get("done") or (), data.get("in_force"),
                               [Said(CorrectionKind(c["kind"]), c["text"]) for c in data.get("corrections") or ()],
                               data.get("memory") or (), [Fact.from_dict(f) for f in data.get("facts") or ()])


def read_text(correction) -> str:
    """How the planner reads one correction: a negation as the subtask it forbids ("not: pick up the red
    block", what the console echoed to the person), since most are said as "no, not that" and name
    nothing a planner could tell apart; the rest as said."""
    subtask = getattr(correction, "subtask", None)
    if CorrectionKind(correction.kind) is CorrectionKind.NEGATION and subtask:
        return f"{NEGATION_MARK}{subtask}"
    return correction.text


def planner_context(task: str, done=(), in_force: str | None = None, said=(), memory=(), facts=()) -> PlannerContext:
    """The context from its parts: `said` is every correction in force, oldest first (objects with
    `kind`, `text` and, for a negation, `subtask`: see read_text); only the planning kinds, and the
    last CONTEXT_CORRECTIONS of them, are kept.
    `memory`: the session's remembered rules (texts), all of them: a rule for good is never cut.
    `facts`: the facts in force (policies.scene_line.Fact), oldest first, all of them."""
    kept = [Said(CorrectionKind(c.kind), read_text(c)) for c in said if CorrectionKind(c.kind) in PLANNING_KINDS]
    return PlannerContext(task=task, done=tuple(done), in_force=in_force,
                          corrections=tuple(kept[-CONTEXT_CORRECTIONS:]), memory=tuple(memory), facts=tuple(facts))


def build_planner_context(context: PlanContext) -> PlannerContext:
    """What the high level reads from the loop's PlanContext (the ONE rule: every planner and dataset uses it)."""
    in_force = context.plan_history[-1].subtask if context.plan_history else None
    return planner_context(context.task, context.completed_subtasks, in_force, context.corrections,
                           [c.text for c in context.memory], [c.fact for c in context.facts if c.fact is not None])


def format_plan(thought: str, subtask: str) -> str:
    """The text a high level writes: "thought So: subtask" ("So: subtask" without a thought)."""
    return f"{thought.strip()}{PLAN_SEPARATOR}{subtask}".strip()


def parse_plan(text: str, source: PlanSource = "model") -> Plan:
    """"thought So: subtask" -> Plan, read at the last "So:" (any case); the subtask is the first line
    after it without trailing punctuation. PlanParseError when there is no subtask to read."""
    marker = PLAN_SEPARATOR.strip().lower()
    idx = text.lower().rfind(marker)
    lines = text[idx + len(marker):].strip().splitlines() if idx >= 0 else []
    subtask = lines[0].strip().strip(" .!\"'").strip() if lines else ""
    if not subtask:
        raise PlanParseError(f"no 'So: <subtask>' in {' '.join(text.split())[:80]!r}")
    return Plan(thought=text[:idx].strip(), subtask=subtask, source=source)
