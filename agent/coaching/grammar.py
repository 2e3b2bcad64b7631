"""The scripted coach's grammar (prompts/coach.toml): loading, counting, and the round-trip check.

`round_trip()` renders every template of the grammar in a few scenes, classifies each sentence
the way the coach does (with a ReferenceContext describing the scene and the plan being
corrected) and reports how often the classifier recovers what the coach meant: the kind, the
subtask (override, negation), the rule (constraint, via `parse_rule`) and the motion (nudge, via
`nudge_to_action_offset`) and the fact (fact: its object and place, agent.coaching.facts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import numpy as np

import prompts
from agent.coaching import vocab
from agent.coaching.classify import ClassifiedCorrection, ReferenceContext, classify
from agent.coaching.nudge import nudge_to_action_offset
from agent.coaching.rules import parse_rule
from policies.rules import Rule
from policies.scene_line import DRAWER, NAMED, Fact
from policies.types import CorrectionKind

K = CorrectionKind

# [nudge] key -> (action axis, sign) it must produce
NUDGE_AXES: dict[str, tuple[int, int]] = {
    "left": (0, -1), "right": (0, 1), "forward": (1, -1), "back": (1, 1), "up": (2, 1), "down": (2, -1),
    "rotate_cw": (3, -1), "rotate_ccw": (3, 1), "open": (4, -1), "close": (4, 1),
}
SUBTASK_SECTIONS = ("override", "negation")
SIMPLE_SECTIONS = {"stop": K.STOP, "pause": K.PAUSE, "resume": K.RESUME, "confirm": K.CONFIRM}


def load_grammar(name: str = "coach") -> dict:
    grammar = prompts.load(name)
    for section, groups in grammar.items():
        if section == "version":
            continue
        if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
            raise ValueError(f"prompts/{name}.toml: [{section}] must map keys to lists of templates")
    return grammar


def templates(grammar: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(section, key, template) for every template."""
    for section, groups in grammar.items():
        if section == "version":
            continue
        for key, items in groups.items():
            for template in items:
                yield section, key, template


def count_surface_forms(grammar: Mapping[str, Any]) -> int:
    """Distinct template strings (each a different way of saying something)."""
    return len({t for _, _, t in templates(grammar)})


@dataclass(frozen=True)
class Scene:
    """A small scene to render templates in: block names, a bowl, a push direction."""

    blocks: tuple[str, ...]
    bowls: tuple[str, ...]
    direction: str = "left"


DEFAULT_SCENES = (
    Scene(("red block", "green block", "yellow block"), ("blue bowl", "purple bowl")),
    Scene(("large orange block", "small orange block", "blue block"), ("green bowl", "red bowl"), "right"),
    Scene(("purple block", "large yellow block", "small yellow block"), ("yellow bowl", "orange bowl"), "front"),
)


def _subtask_for(kind_key: str, scene: Scene) -> tuple[str, str | None, str]:
    """(intended subtask, held block, a different subtask of the same kind) for a grammar key."""
    a, b = scene.blocks[0], scene.blocks[1]
    bowl, other_bowl = scene.bowls[0], scene.bowls[1]
    table = {
        "pick": (vocab.pick_up(a), None, vocab.pick_up(b)),
        "pick_again": (vocab.pick_up(a), None, vocab.place_in_bowl(other_bowl.split()[0])),
        "place": (vocab.place_in_bowl(bowl.split()[0]), a, vocab.place_in_bowl(other_bowl.split()[0])),
        "stack": (vocab.stack_on(b), a, vocab.stack_on(scene.blocks[2])),
        "drawer_put": (vocab.PUT_IN_DRAWER, a, vocab.place_in_bowl(bowl.split()[0])),
        "open": (vocab.OPEN_DRAWER, None, vocab.pick_up(b)),
        "close": (vocab.CLOSE_DRAWER, None, vocab.OPEN_DRAWER),
        "push": (vocab.push(a, scene.direction), None, vocab.push(b, scene.direction)),
        "put_down": (vocab.PUT_DOWN, a, vocab.place_in_bowl(bowl.split()[0])),
    }
    return table[kind_key]


def _fills(subtask: str) -> dict[str, str]:
    from agent.coaching.scripted import subtask_fills

    sub = vocab.split_subtask(subtask)
    return subtask_fills(sub) if sub is not None else {}


def _rule_for(key: str, scene: Scene) -> Rule:
    if key == "avoid_block":
        return Rule("avoid_block", scene.blocks[0])
    if key == "avoid_drawer":
        return Rule("avoid_drawer")
    return Rule(key, scene.bowls[0])


def _fact_for(key: str, scene: Scene) -> Fact:
    a, b = scene.blocks[0], scene.blocks[1]
    if key.startswith("drawer_"):
        return Fact(DRAWER, key.split("_", 1)[1])
    return {"bowl": Fact(a, "bowl", scene.bowls[0]), "table": Fact(a, "table", side="left"), "held": Fact(a, "held"),
            "drawer": Fact(a, "drawer"), "block": Fact(a, "block", b), "absent": Fact(a, "absent"),
            "named": Fact(scene.bowls[0], NAMED, scene.bowls[1])}[key]


@dataclass
class RoundTrip:
    checked: int = 0
    agreed: int = 0
    failures: list[tuple[str, str, str, str]] = field(default_factory=list)  # section, key, text, got
    per_template: dict[str, bool] = field(default_factory=dict)  # template -> agreed in some scene

    @property
    def agreement(self) -> float:
        return self.agreed / self.checked if self.checked else 0.0

    @property
    def template_agreement(self) -> float:
        return sum(self.per_template.values()) / len(self.per_template) if self.per_template else 0.0


def check_sentence(section: str, key: str, text: str, scene: Scene) -> tuple[bool, str]:
    """Does `text` (rendered from [section] key) classify as the coach means it? (ok, what it got)"""
    if section in SUBTASK_SECTIONS:
        kind = K(section)
        intended, held, other = _subtask_for("pick" if key == "generic" else key, scene)
        current = intended if kind is K.NEGATION else other
        pending = (vocab.OPEN_DRAWER, vocab.pick_up(scene.blocks[0]), vocab.PUT_IN_DRAWER, vocab.CLOSE_DRAWER)
        if key == "close":
            pending = (vocab.CLOSE_DRAWER,)
        ctx = ReferenceContext(current_subtask=current, holding=held, drawer_open=key == "close",
                               pending_subtasks=pending, scene_blocks=scene.blocks)
        got = classify(text, ctx)
        ok = isinstance(got, ClassifiedCorrection) and got.kind is kind and got.subtask == intended
        return ok, _describe(got)
    if section == "fact":
        from agent.coaching.voice import fact_agrees

        meant = _fact_for(key, scene)
        current = vocab.place_in_bowl(meant.where.split()[0]) if meant.place == NAMED else None
        got = classify(text, ReferenceContext(current_subtask=current, scene_blocks=scene.blocks))
        read = got.fact if isinstance(got, ClassifiedCorrection) else None
        return isinstance(got, ClassifiedCorrection) and got.kind is K.FACT and fact_agrees(meant, read), \
            f"{_describe(got)} fact={read}"
    got = classify(text, ReferenceContext(scene_blocks=scene.blocks))
    if section == "constraint":
        rule = _rule_for(key, scene)
        ok = isinstance(got, ClassifiedCorrection) and got.kind is K.CONSTRAINT and parse_rule(text, scene.blocks) == rule
        return ok, f"{_describe(got)} rule={parse_rule(text, scene.blocks)}"
    if section == "nudge":
        ok = isinstance(got, ClassifiedCorrection) and got.kind is K.NUDGE
        offset = nudge_to_action_offset(text)
        axis, sign = NUDGE_AXES[key]
        moved = [i for i in range(5) if offset[i] != 0]
        ok = ok and moved == [axis] and np.sign(offset[axis]) == sign
        return ok, f"{_describe(got)} offset={np.round(offset, 3).tolist()}"
    kind = SIMPLE_SECTIONS[section]
    return isinstance(got, ClassifiedCorrection) and got.kind is kind, _describe(got)


def _describe(got: Any) -> str:
    if isinstance(got, ClassifiedCorrection):
        return f"{got.kind.value}: {got.subtask}"
    return f"{type(got).__name__}: {getattr(got, 'reply', '')}"


def round_trip(grammar: Mapping[str, Any] | None = None, scenes: tuple[Scene, ...] = DEFAULT_SCENES) -> RoundTrip:
    """Render every template in every scene and check the classifier reads it as meant."""
    grammar = grammar if grammar is not None else load_grammar()
    report = RoundTrip()
    for section, key, template in templates(grammar):
        for scene in scenes:
            if section in SUBTASK_SECTIONS:
                fills = _fills(_subtask_for("pick" if key == "generic" else key, scene)[0])
            elif section == "constraint":
                fills = _rule_for(key, scene).fills()
            elif section == "fact":
                from agent.coaching.voice import fact_fills

                fills = fact_fills(_fact_for(key, scene))
            else:
                fills = {}
            try:
                text = template.format(**fills)
            except (KeyError, IndexError):
                raise ValueError(f"[{section}] {key}: template {template!r} uses a slot its group does not fill")
            ok, got = check_sentence(section, key, text, scene)
            report.checked += 1
            report.agreed += ok
            report.per_template[template] = report.per_template.get(template, False) or ok
            if not ok:
                report.failures.append((section, key, text, got))
    return report
