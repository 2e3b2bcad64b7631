"""How the scripted coach words what it means: prompts/coach.toml's templates, filled for the
scene, and only the sentences the classifier reads as meant (agent/coaching/scripted.py decides
what to say; this module says it)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from agent.coaching import vocab
from agent.coaching.classify import ClassifiedCorrection, ReferenceContext, classify
from policies.scene_line import DRAWER, NAMED, Fact
from policies.types import CorrectionKind

K = CorrectionKind


@dataclass(frozen=True)
class CoachUtterance(ClassifiedCorrection):
    """A correction spoken by the scripted coach (kind/subtask as the classifier read the text)."""

    speaker: str = "scripted"
    intended_kind: CorrectionKind | None = None
    intended_subtask: str | None = None
    mistake: str | None = None  # one of scripted.MISTAKES, or None (confirm, resume, false alarm)
    suspect_from_step: int | None = None  # frames from this step on show the mistake
    erroneous: bool = False  # deliberately wrong or unhelpful (error_rate)
    template: str = ""
    intended_fact: Fact | None = None  # a fact: what the coach means is true

    @property
    def agrees(self) -> bool:
        """The classifier read what the coach meant."""
        return self.kind is self.intended_kind and (
            self.intended_subtask is None or self.subtask == self.intended_subtask) and (
            self.intended_fact is None or fact_agrees(self.intended_fact, self.fact))


class CoachVoice:
    """Renders a kind (and subtask) as a sentence from the coach's grammar. Shares the coach's
    random generator, so the coach's draws and its wording interleave as one sequence."""

    def __init__(self, grammar: Mapping[str, Any], rng: np.random.Generator, rule_scope: str, stats: Counter) -> None:
        self.grammar = grammar
        self.rng = rng
        self.rule_scope = rule_scope
        self.stats = stats

    def render_subtask(self, kind: CorrectionKind, subtask: str | None, ctx: ReferenceContext, step: int, *,
                       mistake: str | None, suspect: int | None, erroneous: bool = False,
                       intended_subtask: str | None = None, group: str | None = None) -> CoachUtterance | None:
        sub = vocab.split_subtask(subtask)
        if sub is None:
            return None
        fills = subtask_fills(sub)
        if kind is K.NEGATION:
            # a negation is read against what the robot is doing: forbid the subtask in force
            ctx = dataclasses.replace(ctx, current_subtask=subtask)
        templates_key = group or sub.kind
        return self.render(kind.value, templates_key, fills, kind, subtask, ctx, step, mistake=mistake,
                           suspect=suspect, erroneous=erroneous, generic_ok=kind is K.NEGATION)

    def say_fact(self, fact: Fact, ctx: ReferenceContext, step: int, *, mistake: str | None = "wrong_belief",
                 suspect: int | None = None, must_name: tuple[str, ...] = ()) -> CoachUtterance | None:
        """State what is true (prompts/coach.toml [fact]), in words the reader reads back as this fact.
        `must_name` ("where", "side"): fields the words must say and the reader read ("the red block is at
        the left", not "the red block is on the table") where the wording can; else any wording."""
        key, fills = fact_key(fact), fact_fills(fact)
        if must_name:
            naming = [t for t in self.grammar.get("fact", {}).get(key, [])
                      if all(any(slot in t for slot in FACT_SLOTS[name]) for name in must_name)]
            said = self.render("fact", key, fills, K.FACT, None, ctx, step, mistake=mistake, suspect=suspect,
                               intended_fact=fact, templates=naming,
                               accept=lambda u: u.fact is not None and all(getattr(u.fact, n) is not None
                                                                           for n in must_name))
            if said is not None:
                return said
        return self.render("fact", key, fills, K.FACT, None, ctx, step, mistake=mistake, suspect=suspect,
                           intended_fact=fact)

    def say_simple(self, kind: CorrectionKind, ctx: ReferenceContext, step: int, *, mistake: str | None = None,
                   suspect: int | None = None) -> CoachUtterance | None:
        return self.render(kind.value, "any", {}, kind, None, ctx, step, mistake=mistake, suspect=suspect)

    def render(self, section: str, key: str, fills: dict, kind: CorrectionKind, subtask: str | None,
               ctx: ReferenceContext, step: int, *, mistake: str | None = None, suspect: int | None = None,
               erroneous: bool = False, generic_ok: bool = False, intended_fact: Fact | None = None,
               templates: list[str] | None = None, accept=None) -> CoachUtterance | None:
        """The first of up to 12 templates (drawn at random) whose sentence the classifier reads as meant;
        else one it reads otherwise (counted as disagreed). `templates`: these instead of the grammar's;
        `accept`: a further test the sentence must pass, and with it no fallback (None)."""
        templates = list(self.grammar.get(section, {}).get(key, []) if templates is None else templates)
        if generic_ok:
            templates += list(self.grammar.get(section, {}).get("generic", []))
        if not templates:
            return None
        order = self.rng.permutation(len(templates))
        fallback: CoachUtterance | None = None
        for i in order[:12]:
            template = templates[int(i)]
            if generic_ok and "block" in template and "{" not in template and not _about_a_block(subtask):
                continue  # "wrong block" said of a bowl or the drawer would be odd
            try:
                text = template.format(**fills)
            except (KeyError, IndexError):
                continue
            said = self._utterance(text, template, kind, subtask, ctx, step, mistake, suspect, erroneous, intended_fact)
            if said is None:
                continue
            if said.agrees and self._in_scope(said) and (accept is None or accept(said)):
                return said
            if accept is None:
                fallback = fallback or said
        if fallback is not None:
            self.stats["disagreed"] += 1
        return fallback

    def _in_scope(self, said: CoachUtterance) -> bool:
        """A rule is said for good ("from now on ...") or for the episode only, as `rule_scope` asks."""
        if said.kind is not K.CONSTRAINT or self.rule_scope == "any":
            return True
        return said.lasting == (self.rule_scope == "lasting")

    def _utterance(self, text: str, template: str, kind: CorrectionKind, subtask: str | None, ctx: ReferenceContext,
                   step: int, mistake: str | None, suspect: int | None, erroneous: bool,
                   intended_fact: Fact | None = None) -> CoachUtterance | None:
        parsed = classify(text, ctx)
        if not isinstance(parsed, ClassifiedCorrection):
            return None
        fields = {f.name: getattr(parsed, f.name) for f in dataclasses.fields(ClassifiedCorrection)}
        fields.update(step=step, speaker="scripted")
        return CoachUtterance(**fields, intended_kind=kind, intended_subtask=subtask, mistake=mistake,
                              suspect_from_step=suspect, erroneous=erroneous, template=template,
                              intended_fact=intended_fact)


def subtask_fills(sub: Any) -> dict[str, str]:
    """Template slots for a canonical subtask (see prompts/coach.toml)."""
    if sub.kind in ("pick", "push"):
        fills = {"obj": sub.obj, "color": vocab.block_color(sub.obj)}
        if sub.kind == "push":
            fills["dir"] = sub.target
        return fills
    if sub.kind == "place":
        return {"bowl": sub.target, "color": sub.target.split()[0]}
    if sub.kind == "stack":
        return {"target": sub.target, "obj": sub.target, "color": vocab.block_color(sub.target)}
    return {}


def _about_a_block(subtask: str | None) -> bool:
    sub = vocab.split_subtask(subtask)
    return sub is not None and sub.kind in ("pick", "push", "stack")


def fact_key(fact: Fact) -> str:
    """The [fact] group of prompts/coach.toml that words this fact."""
    if fact.subject == DRAWER:
        return f"drawer_{fact.place}"
    return "named" if fact.place == NAMED else fact.place


# the slots of prompts/coach.toml [fact] that say a fact's field
FACT_SLOTS = {"where": ("{bowl}", "{target}"), "side": ("{side}",)}


def fact_fills(fact: Fact) -> dict[str, str]:
    """Template slots for a fact (see prompts/coach.toml [fact])."""
    if fact.subject == DRAWER:
        return {}
    if fact.place == NAMED:
        other = fact.where or "bowl"
        return {"bowl": fact.subject, "color": fact.subject.split()[0], "other": other, "other_color": other.split()[0]}
    fills = {"obj": fact.subject, "color": vocab.block_color(fact.subject), "side": fact.side or "middle"}
    if fact.place == "bowl" and fact.where:
        fills["bowl"] = fact.where
    if fact.place == "block" and fact.where:
        fills["target"] = fact.where
    return fills


def fact_agrees(meant: Fact, read: Fact | None) -> bool:
    """The reader got the fact meant: its object and place, and its bowl, block beneath and side where
    the words name them (a statement may leave them out: "already in the bowl")."""
    return (read is not None and read.subject == meant.subject and read.place == meant.place
            and read.where in (None, meant.where) and read.side in (None, meant.side))
