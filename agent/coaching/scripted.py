"""The scripted coach: a stand-in for the person at the console, with privileged sight.

Each control step the loop calls `coach.observe(obs, info, plan, step)`; the coach watches the
simulator's privileged state and the plan in force, and now and then says something: the text a
person would type, already classified (a `CoachUtterance`, which is a `Correction`), plus what it
meant (`intended_kind`, `intended_subtask`), the mistake it saw and the first step whose frames
show that mistake (`suspect_from_step`). What it reads off the simulator's state (a drop, which
way to nudge) is agent/coaching/coach_sight.py's.

What it watches for (MISTAKES):
  wrong_object       the plan targets something the task does not need now
  wrong_order        the plan is a step of the task, but not one allowed yet
  broken_constraint  the plan breaks a rule of the episode (a family rule, or one said earlier)
  drop               a held block fell somewhere the plan did not put it
  stuck              no task progress for `stuck_steps`, or a finished subtask still in force
                     after `stale_steps` (nobody re-planned)
  wrong_belief       the plan's scene line (a grounded planner's "I see: ...") contradicts the
                     simulator's scene at the frame the plan was read from (the step before the
                     coach first sees the plan: the loop plans, acts, then lets the coach look), and
                     what is true there still holds when the coach speaks (a person says what is
                     true now): the coach states it, a `fact` ("the red block is already in the
                     blue bowl"), never an order, in words naming what the line got wrong (the side
                     of a block on the table, the bowl or block it is in or on) where the line had
                     the block elsewhere or not at all; `state_facts=False` never does,
                     `facts_only=True` says nothing else. The fact's frames, for a read-out
                     fine-tune, are the plan's (sessions/export/common.py fact_frame_step)
and it confirms a correctly finished subtask now and then (`confirm_rate`).

What it says comes from prompts/coach.toml (several hundred surface forms), by kind: override,
negation, constraint, nudge, stop/pause (sometimes before a correction; `interrupt_rate`),
resume (when a pause turned out unnecessary) and confirm. Each rendered sentence is classified
with the coach's knowledge of the scene and only said if the classifier recovers the intended
kind and subtask (else another template is tried), so the loop obeys what the coach meant. The
wording is agent/coaching/voice.py's (`CoachVoice`); this module decides what to say and when.

A rule is worded for good or for the episode as `rule_scope` says ("lasting": "from now on leave
the red block alone", which the loop remembers for the session; "episode": "avoid the red block").

Imperfection, on purpose: `delay_steps` is its reaction time (a mistake must persist that long),
and with probability `error_rate` a correction is missed (half) or wrong (half: an override of a
subtask the task does not need, or a negation of the right one); rare false alarms negate a
correct plan. Erroneous utterances carry `erroneous=True`.

What the coach believes the task needs (`intended`; agent/coaching/behaviour.py):
  None                       the env's reference decomposition (groups and their deps when the
                             privileged WorldState carries the TaskInstance, else the first
                             subtask not done)
  callable(info, world)      returns the next subtask (str), several acceptable ones, or None
  an IntendedBehaviour       `.allowed_next(info, world) -> list[str]`, `.rules(info, world)`
  {family: any of the above} per family (missing families fall back to the reference)
so a coaching suite can hold families whose intended behaviour (an order, a rule) the coach knows
but the model does not.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

import prompts
from agent.coaching import vocab
from agent.coaching.behaviour import (  # noqa: F401  (FamilyBehaviour: importable from here, as before)
    FamilyBehaviour, IntendedBehaviour, IntendedSpec, ReferenceBehaviour, as_behaviour,
)
from agent.coaching.classify import ReferenceContext
from agent.coaching.coach_sight import is_drop, nudge_words
from agent.coaching.voice import CoachUtterance, CoachVoice, subtask_fills  # noqa: F401  (subtask_fills: as before)
from agent.envs.scene_facts import scene_facts
from policies.rules import Rule
from policies.scene_line import Fact, Scene, SceneParseError, contradictions, parse_scene, scene_from_facts, split_scene
from policies.types import CorrectionKind, Plan

K = CorrectionKind
MISTAKES = ("wrong_object", "wrong_order", "broken_constraint", "drop", "stuck", "wrong_belief")
# how the coach words a rule: for good ("from now on ...": kept for the session by the loop's memory),
# for the episode only ("avoid the red block"), or either
RULE_SCOPES = ("any", "lasting", "episode")


# ====================================================================== the coach


def _differs(fact: Fact, believed: Scene) -> tuple[str, ...]:
    """The fields of a fact the believed line does not already say (its bowl or block beneath, its side on
    the table): the words must name them, or the corrected line would keep the line's (or a default)."""
    block = believed.block(fact.subject)
    return tuple(name for name in ("where", "side")
                 if getattr(fact, name) is not None and (block is None or getattr(block, name) != getattr(fact, name)))


@dataclass
class _Finding:
    mistake: str
    key: tuple
    kind_hint: str  # how to answer: "plan" | "drop" | "stuck"
    plan_subtask: str | None = None
    rule: Rule | None = None
    block: str | None = None
    fact: Fact | None = None
    must_name: tuple[str, ...] = ()  # a fact's fields the words must say ("where", "side"): what the line got wrong


@dataclass
class _FollowUp:
    due: int
    finding: _Finding
    first_seen: int


@dataclass
class _EpisodeMemory:
    first_seen: dict[tuple, int] = field(default_factory=dict)
    handled: dict[tuple, int] = field(default_factory=dict)
    quiet_until: int = -1
    best_done: int = 0
    last_progress: int = 0
    prev_held: str | None = None
    prev_plan: str | None = None
    release: tuple[int, str, str | None] | None = None  # (step, block, plan at release)
    drop: tuple[int, str] | None = None  # (step seen, block)
    confirm_due: int | None = None
    followup: _FollowUp | None = None
    spoken_rules: list[Rule] = field(default_factory=list)
    announced: bool = False
    belief_thought: str | None = None  # the plan thought whose scene line was last checked
    true_at_plan: Scene | None = None  # the simulator's scene at the frame that plan was read from
    last_scene: tuple[int, Scene] | None = None  # (step, the simulator's scene then): the coach's last look


class ScriptedCoach:
    """Watches privileged state and speaks corrections; see the module docstring."""

    def __init__(
        self,
        seed: int = 0,
        delay_steps: int = 5,
        error_rate: float = 0.0,
        intended: IntendedSpec = None,
        *,
        confirm_rate: float = 0.2,
        interrupt_rate: float = 0.15,
        override_share: float = 0.6,
        nudge_share: float = 0.7,
        stuck_steps: int = 80,
        stale_steps: int = 20,
        cooldown_steps: int = 10,
        repeat_after: int = 40,
        settle_steps: int = 3,
        false_alarm_rate: float = 0.01,
        announce_rules: bool = False,
        rule_scope: str = "any",
        grammar: Mapping[str, Any] | None = None,
        state_facts: bool = True,
        facts_only: bool = False,
    ) -> None:
        if not 0.0 <= error_rate <= 1.0:
            raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
        if delay_steps < 0:
            raise ValueError(f"delay_steps must be >= 0, got {delay_steps}")
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.delay_steps = int(delay_steps)
        self.error_rate = float(error_rate)
        # "only facts" means nothing else is said: no confirmation ("good") and no false alarm either,
        # which are not findings and so would survive the findings filter below
        self.confirm_rate = 0.0 if facts_only else confirm_rate
        self.interrupt_rate = interrupt_rate
        self.override_share = override_share
        self.nudge_share = nudge_share
        self.stuck_steps = stuck_steps
        self.stale_steps = stale_steps
        self.cooldown_steps = cooldown_steps
        self.repeat_after = repeat_after
        self.settle_steps = settle_steps
        self.false_alarm_rate = 0.0 if facts_only else false_alarm_rate
        self.announce_rules = announce_rules
        if rule_scope not in RULE_SCOPES:
            raise ValueError(f"rule_scope must be one of {', '.join(RULE_SCOPES)}, got {rule_scope!r}")
        self.rule_scope = rule_scope
        self.state_facts = state_facts or facts_only
        self.facts_only = facts_only
        self.grammar = dict(grammar) if grammar is not None else prompts.load("coach")
        if isinstance(intended, Mapping):
            self._per_family = {name: as_behaviour(b) for name, b in intended.items()}
            self._default = ReferenceBehaviour()
        else:
            self._per_family = {}
            self._default = as_behaviour(intended)
        self.stats: Counter = Counter()
        self.voice = CoachVoice(self.grammar, self.rng, self.rule_scope, self.stats)
        self._mem = _EpisodeMemory()

    # ------------------------------------------------------------------ public API

    def reset(self) -> None:
        """Forget the episode (the loop calls this on every env reset)."""
        self._mem = _EpisodeMemory()

    def behaviour_for(self, family: str | None) -> IntendedBehaviour:
        return self._per_family.get(family or "", self._default)

    def observe(self, obs: Any, info: dict, plan: Plan | None, step: int) -> CoachUtterance | None:
        """Look at one control step; return what the coach says now, or None."""
        world = info.get("privileged") if isinstance(info, dict) else None
        if world is None:
            world = getattr(obs, "privileged", None)
        if world is None:
            raise ValueError("the scripted coach needs privileged state: info['privileged'] or obs.privileged")
        self._task = getattr(obs, "task", None) or info.get("task", "")
        said = self._observe(world, info, plan, step)
        if said is not None:
            self._count(said)
            self._mem.quiet_until = step + self.cooldown_steps
        return said

    # ------------------------------------------------------------------ one step

    def _observe(self, world: Any, info: dict, plan: Plan | None, step: int) -> CoachUtterance | None:
        mem = self._mem
        behaviour = self.behaviour_for(info.get("family"))
        rules = list(behaviour.rules(info, world)) + mem.spoken_rules
        allowed = behaviour.allowed_next(info, world)
        compliant = [s for s in allowed if not any(r.forbids(s) for r in rules)]
        allowed = compliant or allowed
        ctx = self._context(world, info, plan)
        plan_sub = plan.subtask if plan is not None else None

        self._track_progress(info, plan_sub, step)
        self._track_release(world, plan_sub, step)
        done_subtasks = [s for s, d in zip(info.get("subtasks", []), info.get("subtasks_done", [])) if d]
        done_subtasks = [s for s in done_subtasks if s not in ctx.pending_subtasks]
        findings = self._findings(world, plan_sub, allowed, rules, ctx.pending_subtasks, done_subtasks, step)
        if self.facts_only:
            findings = []
        if self.state_facts:
            findings = self._belief_findings(world, plan, step) + findings  # a wrong belief is the root of a wrong plan

        # transient findings only ripen if they persist for the reaction time
        present = {f.key for f in findings}
        for key in list(mem.first_seen):
            if key not in present:
                del mem.first_seen[key]
        for f in findings:
            mem.first_seen.setdefault(f.key, step)

        if mem.followup is not None and step >= mem.followup.due:
            follow, mem.followup = mem.followup, None
            still = next((f for f in findings if f.key == follow.finding.key), None)
            if still is None:
                return self.voice.say_simple(K.RESUME, ctx, step)
            return self._correct(still, follow.first_seen, world, info, plan_sub, allowed, rules, ctx, step,
                                 allow_interrupt=False)
        if step < mem.quiet_until or mem.followup is not None:
            return None

        if self.announce_rules and not mem.announced and rules:
            mem.announced = True
            rule = rules[int(self.rng.integers(len(rules)))]
            mem.spoken_rules.append(rule)
            return self.voice.render("constraint", rule.template_key, rule.fills(), K.CONSTRAINT, None, ctx, step)

        for f in findings:
            first = mem.first_seen[f.key]
            wait = self.stale_steps if f.kind_hint == "stale" else max(self.delay_steps, 1 if f.kind_hint != "plan" else 2)
            if step - first < wait:
                continue
            last = mem.handled.get(f.key)
            if last is not None and step - last < self.repeat_after:
                continue
            mem.handled[f.key] = step
            return self._correct(f, first, world, info, plan_sub, allowed, rules, ctx, step, allow_interrupt=True)

        if mem.confirm_due is not None and step >= mem.confirm_due:
            mem.confirm_due = None
            if all(f.kind_hint == "stale" for f in findings):  # a just-finished subtask is still in force
                return self.voice.say_simple(K.CONFIRM, ctx, step)

        if not findings and plan_sub and plan_sub in allowed and self.error_rate > 0:
            if self.rng.random() < self.error_rate * self.false_alarm_rate:
                return self.voice.render_subtask(K.NEGATION, plan_sub, ctx, step, mistake=None, suspect=None,
                                                 intended_subtask=plan_sub, erroneous=True)
        return None

    # ------------------------------------------------------------------ trackers

    def _track_progress(self, info: dict, plan_sub: str | None, step: int) -> None:
        mem = self._mem
        n_done = int(sum(bool(d) for d in info.get("subtasks_done", [])))
        if n_done > mem.best_done:
            mem.best_done = n_done
            mem.last_progress = step
            finished = mem.prev_plan is not None and mem.prev_plan in info.get("subtasks", [])
            if finished and self.rng.random() < self.confirm_rate:
                mem.confirm_due = step + self.delay_steps
        if plan_sub != mem.prev_plan:
            mem.prev_plan = plan_sub

    def _track_release(self, world: Any, plan_sub: str | None, step: int) -> None:
        mem = self._mem
        held = getattr(world, "held", None)
        if mem.prev_held is not None and held is None:
            mem.release = (step, mem.prev_held, plan_sub)
        mem.prev_held = held
        if mem.release is not None and step - mem.release[0] >= self.settle_steps:
            release_step, block, release_plan = mem.release
            mem.release = None
            if is_drop(world, block, release_plan):
                mem.drop = (release_step, block)
        if mem.drop is not None and getattr(world, "held", None) == mem.drop[1]:
            mem.drop = None  # picked up again

    def _belief_findings(self, world: Any, plan: Plan | None, step: int) -> list[_Finding]:
        """What the plan's scene line says against the simulator's scene at the frame the plan was read
        from, and still holds now."""
        mem = self._mem
        line = split_scene(plan.thought)[0] if plan is not None and plan.source != "human" else None
        if line is None and mem.belief_thought is None:
            return []  # no scene line yet this episode: nothing to look at (an oracle's plans have none)
        now = scene_from_facts(scene_facts(world), self._task)
        last, mem.last_scene = mem.last_scene, (step, now)
        if line is None:
            return []
        if plan.thought != mem.belief_thought:  # a new plan, read from the frame of the coach's last look
            mem.belief_thought = plan.thought
            mem.true_at_plan = last[1] if last is not None and last[0] == step - 1 else now
        try:
            believed = parse_scene(line)
        except SceneParseError:
            return []
        return [_Finding("wrong_belief", ("fact", fact.subject, fact.place, fact.where, fact.side), "fact",
                         plan.subtask, fact=fact, must_name=_differs(fact, believed))
                for fact in contradictions(believed, mem.true_at_plan) if fact.holds_in(now)]

    def _findings(self, world: Any, plan_sub: str | None, allowed: list[str], rules: list[Rule],
                  pending: Sequence[str], done_subtasks: Sequence[str], step: int) -> list[_Finding]:
        mem = self._mem
        findings: list[_Finding] = []
        # a plan whose subtask is already done is stale, not wrong: re-planning is the loop's job
        # (if it never happens, "stuck" catches it)
        stale = set(done_subtasks)
        if mem.drop is not None:
            findings.append(_Finding("drop", ("drop", mem.drop[1], mem.drop[0]), "drop", plan_sub, block=mem.drop[1]))
        settling = mem.release is not None or mem.drop is not None  # a fall explains a plan mismatch better
        if plan_sub and allowed and plan_sub not in allowed and plan_sub not in stale and not settling:
            broken = next((r for r in rules if r.forbids(plan_sub)), None)
            if broken is not None:
                findings.append(_Finding("broken_constraint", ("plan", plan_sub), "plan", plan_sub, rule=broken))
            else:
                mistake = "wrong_order" if plan_sub in pending else "wrong_object"
                findings.append(_Finding(mistake, ("plan", plan_sub), "plan", plan_sub))
        if plan_sub in stale and allowed and not settling:
            # a finished subtask nobody replaced: after a while a person says what comes next
            findings.append(_Finding("stuck", ("stale", plan_sub), "stale", plan_sub))
        if allowed and step - mem.last_progress >= self.stuck_steps and not findings:
            findings.append(_Finding("stuck", ("stuck", mem.last_progress), "stuck", plan_sub))
        return findings

    # ------------------------------------------------------------------ answering a finding

    def _correct(self, f: _Finding, first_seen: int, world: Any, info: dict, plan_sub: str | None,
                 allowed: list[str], rules: list[Rule], ctx: ReferenceContext, step: int,
                 *, allow_interrupt: bool) -> CoachUtterance | None:
        mem = self._mem
        suspect = first_seen if f.mistake != "drop" else mem.drop[0] if mem.drop else first_seen
        if f.mistake == "stuck":
            suspect = first_seen if f.kind_hint == "stale" else mem.last_progress
            mem.last_progress = step  # give the robot a fresh budget after speaking
        # imperfect coach: sometimes misses, sometimes says something wrong
        if self.error_rate and self.rng.random() < self.error_rate:
            if self.rng.random() < 0.5 or f.mistake == "wrong_belief":  # a fact is missed, never said wrong
                self.stats["missed"] += 1
                return None
            return self._wrong_thing(world, allowed, plan_sub, ctx, step, f.mistake, suspect)

        if f.mistake == "wrong_belief" and f.fact is not None:
            return self.voice.say_fact(f.fact, ctx, step, suspect=suspect, must_name=f.must_name)

        insist = self._insists(f)  # a mistake named before: say what to do instead, with no pause first
        if f.kind_hint == "plan" and allow_interrupt and not insist and self.rng.random() < self.interrupt_rate:
            kind = K.STOP if self.rng.random() < 0.5 else K.PAUSE
            mem.followup = _FollowUp(step + max(2, self.delay_steps // 2), f, first_seen)
            return self.voice.say_simple(kind, ctx, step, mistake=f.mistake, suspect=suspect)

        if f.mistake == "broken_constraint" and f.rule is not None:
            if f.rule not in mem.spoken_rules or self.rng.random() < 0.4:
                if f.rule not in mem.spoken_rules:
                    mem.spoken_rules.append(f.rule)
                return self.voice.render("constraint", f.rule.template_key, f.rule.fills(), K.CONSTRAINT, None, ctx, step,
                                         mistake=f.mistake, suspect=suspect)
            return self.voice.render_subtask(K.NEGATION, f.plan_subtask, ctx, step, mistake=f.mistake, suspect=suspect)

        if f.mistake in ("wrong_object", "wrong_order"):
            if insist or self.rng.random() < self.override_share or not f.plan_subtask:
                return self.voice.render_subtask(K.OVERRIDE, allowed[0], ctx, step, mistake=f.mistake, suspect=suspect)
            return self.voice.render_subtask(K.NEGATION, f.plan_subtask, ctx, step, mistake=f.mistake, suspect=suspect)

        if f.mistake == "drop" and f.block is not None:
            mem.drop = None
            again = vocab.pick_up(f.block)
            want = again if again in allowed or not allowed else allowed[0]
            group = "pick_again" if want == again else None
            return self.voice.render_subtask(K.OVERRIDE, want, ctx, step, mistake="drop", suspect=suspect, group=group)

        if f.mistake == "stuck":
            target = allowed[0] if allowed else plan_sub
            # a nudge helps a right plan that is badly executed; a stale or wrong plan needs a new subtask
            words = nudge_words(world, target) if target and plan_sub == target else None
            if words is not None and self.rng.random() < self.nudge_share:
                return self.voice.render("nudge", words, {}, K.NUDGE, None, ctx, step, mistake="stuck", suspect=suspect)
            if target:
                return self.voice.render_subtask(K.OVERRIDE, target, ctx, step, mistake="stuck", suspect=suspect)
        return None

    def _insists(self, f: _Finding) -> bool:
        """Whether a plan mistake is answered with the subtask to do instead (an override) rather than
        a drawn kind; this coach never insists (agent/coaching/intended.py's does)."""
        return False

    def _wrong_thing(self, world: Any, allowed: list[str], plan_sub: str | None, ctx: ReferenceContext, step: int,
                     mistake: str, suspect: int) -> CoachUtterance | None:
        """An unhelpful correction: a subtask the task does not need now, or a 'no' to the right one."""
        options = [vocab.pick_up(b) for b in getattr(world, "blocks", {}) if vocab.pick_up(b) not in allowed]
        options += [vocab.place_in_bowl(bowl.split()[0]) for bowl in getattr(world, "bowls", {})
                    if vocab.place_in_bowl(bowl.split()[0]) not in allowed]
        options = [o for o in options if o != plan_sub]
        if options and self.rng.random() < 0.6:
            wrong = options[int(self.rng.integers(len(options)))]
            return self.voice.render_subtask(K.OVERRIDE, wrong, ctx, step, mistake=mistake, suspect=suspect, erroneous=True)
        if allowed:
            return self.voice.render_subtask(K.NEGATION, allowed[0], ctx, step, mistake=mistake, suspect=suspect,
                                             erroneous=True, intended_subtask=allowed[0])
        return None

    # ------------------------------------------------------------------ what the classifier is told

    def _context(self, world: Any, info: dict, plan: Plan | None) -> ReferenceContext:
        subtasks = list(info.get("subtasks", []))
        done = list(info.get("subtasks_done", [])) + [False] * len(subtasks)
        pending = tuple(s for s, d in zip(subtasks, done) if not d)
        drawer = getattr(world, "drawer", None)
        return ReferenceContext(
            current_subtask=plan.subtask if plan is not None else None,
            holding=getattr(world, "held", None),
            drawer_open=bool(drawer.is_open) if drawer is not None else None,
            pending_subtasks=pending,
            scene_blocks=tuple(getattr(world, "blocks", {}) or ()),
        )

    def _count(self, said: CoachUtterance) -> None:
        self.stats["utterances"] += 1
        self.stats["agreed"] += int(said.agrees)
        self.stats[f"kind:{said.intended_kind.value if said.intended_kind else None}"] += 1
        if said.mistake:
            self.stats[f"mistake:{said.mistake}"] += 1
        if said.erroneous:
            self.stats["erroneous"] += 1
