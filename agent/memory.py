"""Memory within a session (DROC's route): rules a person wants kept beyond the episode they said them in.

A constraint is remembered when
  said            its words state it for good ("from now on ...", "always ...", "never ...": the
                  classifier's `Correction.lasting`), or it was forced with /rule;
  repeated        the same rule (the same policies.rules.Rule, else the same words) is said in a second episode.
Remembered rules are in every later plan's context (PlanContext.memory -> PlannerContext.memory, the
one context builder) until `/forget N`. The control loop owns one SessionMemory; its observer
agent.runtime.session_memory offers it the corrections said and tells each change (RuleKept /
RuleDropped, recorded as sessions.schema RuleRemembered / RuleForgotten).

    memory = SessionMemory()
    kept = memory.offer(correction, episode=0)   # Remembered or None
    memory.texts()                              # ("never use the drawer",)
    memory.forget(1)                            # numbered as /rules lists them
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from policies.grammar import normalize
from policies.rules import Rule
from policies.types import Correction, CorrectionKind

How = Literal["said", "command", "repeated"]


@dataclass(frozen=True)
class Remembered:
    rule_id: int  # unique within the session (the recorded events name it)
    correction: Correction
    how: How
    episode: int  # the episode it was remembered in


def rule_key(correction: Correction) -> Rule | str:
    """What makes two constraints the same rule: the checkable Rule, else the normalised words."""
    return correction.rule if correction.rule is not None else normalize(correction.text)


@dataclass
class SessionMemory:
    enabled: bool = True  # False: nothing is kept (the without-memory baseline)
    rules: list[Remembered] = field(default_factory=list)
    _first_said: dict = field(default_factory=dict)  # rule key -> episode it was first said in
    _next_id: int = 0

    def offer(self, correction: Correction, episode: int) -> Remembered | None:
        """A constraint was said in `episode`: the Remembered it becomes, or None (episode only, or known)."""
        if not self.enabled or correction.kind is not CorrectionKind.CONSTRAINT:
            return None
        key = rule_key(correction)
        if any(rule_key(r.correction) == key for r in self.rules):
            return None
        first = self._first_said.setdefault(key, episode)
        if correction.lasting:
            how: How = "command" if getattr(correction, "forced", False) else "said"
        elif first < episode:
            how = "repeated"
        else:
            return None
        kept = Remembered(self._next_id, correction, how, episode)
        self._next_id += 1
        self.rules.append(kept)
        return kept

    def forget(self, number: int) -> Remembered | None:
        """Drop rule `number` (1-based, as /rules lists them); None when there is no such rule."""
        if not 1 <= number <= len(self.rules):
            return None
        gone = self.rules.pop(number - 1)
        self._first_said.pop(rule_key(gone.correction), None)  # said once more later: episode only again
        return gone

    def number_of(self, correction: Correction) -> int | None:
        return next((i + 1 for i, r in enumerate(self.rules) if r.correction is correction), None)

    def corrections(self) -> list[Correction]:
        return [r.correction for r in self.rules]

    def texts(self) -> tuple[str, ...]:
        return tuple(r.correction.text for r in self.rules)

    def listing(self) -> str:
        """/rules: the remembered rules, numbered for /forget."""
        if not self.enabled:
            return "session memory is off: rules last one episode"
        return describe_rules(self.texts())


def describe_rules(texts: tuple[str, ...]) -> str:
    """The remembered rules as /rules answers, numbered for /forget."""
    if not texts:
        return "no rules remembered (say one for good: 'from now on ...', or /rule TEXT)"
    return "remembered rules: " + "; ".join(f"{i}. {t}" for i, t in enumerate(texts, 1)) + " (/forget N drops one)"
