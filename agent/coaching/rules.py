"""Reading episode rules from what people say: `parse_rule` turns a constraint's words into the
policies.rules.Rule it states (the classifier attaches it to the Correction), so "off limits", "stay
away from" and "never use" all become one checkable object.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from agent.coaching import vocab
from policies.rules import Rule
from policies.types import CorrectionKind

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
