"""Whether a plan obeys what it was told: the negations and rules in force at one decision.

    forbids = forbids_in_force(corrections, memory)   # what the planner's context rules out (checkable)
    obeys("pick up the red block", forbids, allowed)   # False: forbidden while a compliant step exists

What a correction in force rules out (a `Forbid`):
  negation     its subtask (`Correction.subtask`, as the classifier read it); a negated pick or push
               rules out every pick and push of that block ("not the red block"), any other kind
               that very subtask ("don't open the drawer", "not the red bowl")
  constraint   its rule (`Correction.rule`: policies.rules avoid_block / avoid_bowl / avoid_drawer /
               only_bowl) for the rest of the episode
  memory       a rule remembered for the session (PlanContext.memory), in every episode
A later override asking for a subtask lifts what ruled it out (the person changed their mind).
Corrections with nothing checkable (a bare "no", a rule the classifier could not read) rule out
nothing here.

`obeys` judges the subtask a plan names against the steps the task allows now (`allowed`, privileged:
the reference's ready steps; a planner never reads it): a forbidden subtask disobeys only while some
allowed step is forbidden by nothing, since a rule the task cannot finish without is kept by doing
that step last ("leave the red block alone" in a task that moves the red block: red goes last).
The oracle (agent/envs/oracle.py) plans by the same rules, the planner-frames data records them with
every frame (agent/training/planner_frames.py), and benchmarks/offline_eval.py reports the share of a
model's plans that obey them beside the oracle's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

from policies.grammar import SubtaskParseError, normalize, parse_subtask
from policies.planning import read_text
from policies.rules import Rule, same_block
from policies.types import Correction, CorrectionKind

Source = Literal["negation", "constraint", "memory"]
SOURCES: tuple[Source, ...] = ("negation", "constraint", "memory")


@dataclass(frozen=True)
class Forbid:
    """What one correction in force rules out."""

    source: Source
    text: str  # what was said, as the planner's context lists it (policies.planning.read_text)
    rule: Rule | None = None  # constraint / memory: the rule
    subtask: str | None = None  # negation: the subtask negated

    def forbids(self, subtask: str | None) -> bool:
        """Whether doing `subtask` (canonical text) goes against this; free text goes against nothing."""
        if self.rule is not None:
            return self.rule.forbids(subtask)
        said, asked = _parse(self.subtask), _parse(subtask)
        if said is None or asked is None:
            return False
        if said.kind in ("pick", "push") and said.obj:
            return asked.kind in ("pick", "push") and same_block(asked.obj, said.obj)
        return normalize(said.text) == normalize(asked.text)

    def to_dict(self) -> dict:
        rule = None if self.rule is None else {"kind": self.rule.kind, "obj": self.rule.obj}
        return {"source": self.source, "text": self.text, "rule": rule, "subtask": self.subtask}

    @classmethod
    def from_dict(cls, data: dict) -> "Forbid":
        rule = data.get("rule")
        return cls(data["source"], data["text"], Rule(rule["kind"], rule.get("obj")) if rule else None,
                   data.get("subtask"))


def _parse(text: str | None):
    try:
        return parse_subtask(text) if text else None
    except SubtaskParseError:
        return None


def forbids_in_force(corrections: Sequence[Correction], memory: Sequence[Correction] = ()) -> list[Forbid]:
    """What the corrections in force (oldest first) and the session's remembered rules rule out, in
    that order (memory first), each once; a later override lifts what ruled its subtask out."""
    out: list[Forbid] = []
    for c in memory:
        if c.rule is not None:
            out.append(Forbid("memory", c.text, rule=c.rule))
    for c in corrections:
        kind = CorrectionKind(c.kind)
        if kind is CorrectionKind.NEGATION and _parse(c.subtask) is not None:
            out.append(Forbid("negation", read_text(c), subtask=c.subtask))
        elif kind is CorrectionKind.CONSTRAINT and c.rule is not None:
            out.append(Forbid("constraint", c.text, rule=c.rule))
        elif kind is CorrectionKind.OVERRIDE and c.subtask:
            out = [f for f in out if not f.forbids(c.subtask)]
    unique: dict[object, Forbid] = {}  # a rule said again (this episode, or remembered) is one rule
    for f in out:
        unique.setdefault(f.rule if f.rule is not None else normalize(f.subtask or ""), f)
    return list(unique.values())


def forbidden(subtask: str | None, forbids: Sequence[Forbid]) -> bool:
    return any(f.forbids(subtask) for f in forbids)


def binding(forbids: Sequence[Forbid], allowed: Sequence[str]) -> bool:
    """Whether the rules in force make a choice here: some allowed step is ruled out and another is not."""
    ruled = [forbidden(s, forbids) for s in allowed]
    return any(ruled) and not all(ruled)


def obeys(subtask: str | None, forbids: Sequence[Forbid], allowed: Sequence[str]) -> bool:
    """THE definition: a plan obeys unless its subtask is ruled out while some step the task allows
    now is ruled out by nothing."""
    if not forbidden(subtask, forbids):
        return True
    return all(forbidden(s, forbids) for s in allowed)
