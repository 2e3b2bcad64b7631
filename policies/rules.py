"""Episode rules ("never use the drawer", "leave the green block alone"): what a constraint forbids.

A `Rule` says which canonical subtasks (policies.grammar) it rules out. The classifier attaches the
Rule a constraint states to its `Correction` (`correction.rule`), so planners with privileged access
(the oracle) and the scripted coach read structure, not the person's words.

Kinds:
    avoid_block   never pick, push or stack onto the named block    ("leave the green block alone")
    avoid_bowl    never place into the named bowl                   ("never use the red bowl")
    avoid_drawer  never open, close or put into the drawer          ("never use the drawer")
    only_bowl     place only into the named bowl                    ("always use the blue bowl")
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.grammar import SubtaskParseError, parse_subtask

RULE_KINDS = ("avoid_block", "avoid_bowl", "avoid_drawer", "only_bowl")


@dataclass(frozen=True)
class Rule:
    kind: str
    obj: str | None = None  # block display name (avoid_block) or bowl name (avoid_bowl, only_bowl)

    def __post_init__(self) -> None:
        if self.kind not in RULE_KINDS:
            raise ValueError(f"unknown rule kind {self.kind!r}; valid: {', '.join(RULE_KINDS)}")
        if self.kind != "avoid_drawer" and not self.obj:
            raise ValueError(f"a {self.kind} rule needs an object")

    def forbids(self, subtask: str | None) -> bool:
        """Whether doing `subtask` (canonical text) breaks this rule; free text breaks none."""
        try:
            sub = parse_subtask(subtask)
        except SubtaskParseError:
            return False
        if self.kind == "avoid_block":
            return (sub.kind in ("pick", "push") and same_block(sub.obj, self.obj)) or (
                sub.kind == "stack" and same_block(sub.target, self.obj))
        if self.kind == "avoid_bowl":
            return sub.kind == "place" and sub.target == self.obj
        if self.kind == "avoid_drawer":
            return sub.kind in ("open", "close", "drawer_put")
        return sub.kind == "place" and sub.target != self.obj  # only_bowl

    @property
    def template_key(self) -> str:
        """The coach grammar section ([constraint] key) that states this rule."""
        return self.kind

    def fills(self) -> dict[str, str]:
        if self.kind == "avoid_block":
            return {"obj": self.obj or "", "color": (self.obj or "x x").split()[-2]}
        if self.kind in ("avoid_bowl", "only_bowl"):
            return {"bowl": self.obj or "", "color": (self.obj or "x").split()[0]}
        return {}

    def __str__(self) -> str:
        return {"avoid_block": f"leave the {self.obj} alone", "avoid_bowl": f"never use the {self.obj}",
                "avoid_drawer": "never use the drawer", "only_bowl": f"only use the {self.obj}"}[self.kind]


def same_block(name: str | None, rule_obj: str | None) -> bool:
    """'red block' matches 'small red block' (a rule said without the size covers both)."""
    if not name or not rule_obj:
        return False
    return name == rule_obj or name.endswith(" " + rule_obj) or rule_obj.endswith(" " + name)
