"""Episode rules ("never use the drawer", "leave the green block alone") as checkable objects.

A `Rule` says which canonical subtasks it forbids. The scripted coach enforces the rules a family
gives it (its `intended` hook) and those said during the episode; `parse_rule` turns a constraint's
text back into a Rule, so planners with privileged access (the oracle) can honour spoken rules too.

Kinds:
    avoid_block   never pick, push or stack onto the named block    ("leave the green block alone")
    avoid_bowl    never place into the named bowl                   ("never use the red bowl")
    avoid_drawer  never open, close or put into the drawer          ("never use the drawer")
    only_bowl     place only into the named bowl                    ("always use the blue bowl")
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from agent.coaching import vocab
from policies.types import CorrectionKind

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
        """Whether doing `subtask` (canonical text) breaks this rule."""
        sub = vocab.split_subtask(subtask)
        if sub is None:
            return False
        if self.kind == "avoid_block":
            return (sub.kind in ("pick", "push") and _same_block(sub.obj, self.obj)) or (
                sub.kind == "stack" and _same_block(sub.target, self.obj))
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
            return {"obj": self.obj or "", "color": vocab.block_color(self.obj or "x x")}
        if self.kind in ("avoid_bowl", "only_bowl"):
            return {"bowl": self.obj or "", "color": (self.obj or "x").split()[0]}
        return {}

    def __str__(self) -> str:
        return {"avoid_block": f"leave the {self.obj} alone", "avoid_bowl": f"never use the {self.obj}",
                "avoid_drawer": "never use the drawer", "only_bowl": f"only use the {self.obj}"}[self.kind]


def _same_block(name: str | None, rule_obj: str | None) -> bool:
    """'red block' matches 'small red block' (a rule said without the size covers both)."""
    if not name or not rule_obj:
        return False
    return name == rule_obj or name.endswith(" " + rule_obj) or rule_obj.endswith(" " + name)


_POSITIVE = re.compile(r"\b(always|only|everything goes|everything in|all blocks go|put (all )?blocks in)\b")
# "the green one" names a block: blocks are what a person points at and moves here
_COLOR_NOUN = re.compile(r"\b(?:(small|large|big|little|tiny) )?(%s) (block|cube|bowl|one)s?\b" % "|".join(vocab.ALL_COLORS))


def parse_rule(text: str, scene_blocks: tuple[str, ...] = ()) -> Rule | None:
    """The Rule a constraint's text states, or None if it names nothing this module can check.

    `scene_blocks` (display names) turns "the red block" into "large red block" when that is the
    only red block in the scene.
    """
    lowered = " ".join(str(text).lower().split())
    positive = bool(_POSITIVE.search(lowered))
    m = _COLOR_NOUN.search(lowered)
    if m:
        size, color, noun = m.groups()
        if noun == "bowl":
            return Rule("only_bowl" if positive else "avoid_bowl", vocab.bowl_name(color))
        size = vocab.SIZE_SYNONYMS.get(size) if size else None
        name = vocab.block_name(color, size)
        matches = [b for b in scene_blocks if vocab.block_color(b) == color and (size is None or vocab.block_size(b) == size)]
        if len(matches) == 1:
            name = matches[0]
        return None if positive else Rule("avoid_block", name)
    if re.search(r"\b(drawer|cabinet|cupboard)\b", lowered) and not positive:
        return Rule("avoid_drawer")
    if re.search(r"\b(drawer|cabinet|cupboard)\b", lowered) and re.search(r"\b(shut|closed)\b", lowered):
        return Rule("avoid_drawer")  # "always keep the drawer shut"
    return None


def rules_from_corrections(corrections: Sequence[Any], scene_blocks: tuple[str, ...] = ()) -> list[Rule]:
    """The checkable rules among an episode's corrections (constraints only, in order, no repeats).

    For privileged planners: `any(r.forbids(subtask) for r in rules)` tells whether a subtask is
    ruled out, whatever words the person used ("off limits", "stay away from", "never use").
    """
    rules: list[Rule] = []
    for c in corrections:
        if getattr(c, "kind", None) is not CorrectionKind.CONSTRAINT:
            continue
        rule = parse_rule(getattr(c, "text", ""), scene_blocks)
        if rule is not None and rule not in rules:
            rules.append(rule)
    return rules
