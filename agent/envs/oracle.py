"""OraclePlanner: a privileged high level that reads the world state and the task's reference
decomposition, picks the next subtask and writes a short chain of thought for it.

Rules, in order:
 1. Holding a block: place it where its group says (or put it down if a correction rules it out and
    something else can be done first, or if the task does not need it).
 2. Otherwise the first group that is not done and whose dependencies are done (ties: the leftmost
    block in the front camera first), with groups that a
    correction mentions positively ("the blue one first") moved to the front and groups whose block
    a negation or constraint names ("not the red block", "leave the green block alone") moved to the
    back - skipped while any alternative exists. Rules remembered for the session (context.memory)
    count as constraints of every episode. Whatever a negation or rule in force rules out
    (policies/obey.py: a rule's subtasks, a negated subtask) also goes to the back: first a group
    whose next step is ruled out, then one with a ruled-out step later on (a place in a bowl said
    to be avoided), so the plan obeys by obey.py's definition whenever the task allows it.
 3. A block that slipped out of the gripper after its pick is picked again.
 4. With everything done, the plan names no subtask (`TASK_DONE`): the robot holds still.
The thought says what the oracle sees first, in the scene line's one fixed grammar
(policies/scene_line.py: every block left to right with its place, the drawer where the task names
it), then why it decides: phrasings from prompts/oracle.toml, drawn from a generator seeded by `seed`.
"""

from __future__ import annotations

import re

import numpy as np

import prompts
from agent.envs.tasks import Group, TaskInstance, left_to_right
from agent.envs.scene_facts import scene_facts
from agent.envs.world import WorldState
from policies.grammar import Subtask, normalize, parse_subtask, put_down
from policies.obey import Forbid, forbidden, forbids_in_force
from policies.scene_line import format_scene, scene_from_facts
from policies.types import TASK_DONE, CorrectionKind, Observation, Plan, PlanContext

_NEGATIVE = re.compile(r"\b(?:not|don ?t|do not|never|leave|avoid|skip|stop|ignore|instead of|wrong)\b")
_POSITIVE = re.compile(r"\b(?:first|instead|next|now|start with|begin with)\b")


class OraclePlanner:
    """HighLevelPolicy with privileged access: plan(obs, context) -> Plan(source="oracle")."""

    def __init__(self, seed: int = 0, prompt_name: str = "oracle"):
        self.seed = seed
        self.templates = prompts.load(prompt_name)["thoughts"]
        self.reset()

    def reset(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._carrying: str | None = None  # the block last planned to be placed (to spot a drop)

    # --- HighLevelPolicy ------------------------------------------------------------------------
    def plan(self, obs: Observation, context: PlanContext) -> Plan:
        world: WorldState = obs.privileged
        if world is None or world.task is None:
            raise ValueError("OraclePlanner needs obs.privileged (a WorldState with its task) from the bundled env")
        task: TaskInstance = world.task
        flags = task.group_flags(world)
        avoid, prefer = self._correction_mentions(world, context)
        forbids = forbids_in_force(context.corrections, context.memory)
        if world.held is not None:
            return self._plan_holding(world, task, flags, avoid, forbids)
        if all(all(f) for f in flags):
            # Nothing is left: say so and name no subtask, so the loop holds still instead of
            # re-running (and re-recording) the last subtask at every step.
            return Plan(thought=self._grounded(world, self._say("done", total=len(task.subtasks))), subtask=TASK_DONE,
                        source="oracle")
        group_index = self._choose_group(world, task, flags, avoid, prefer, forbids)
        group = task.groups[group_index]
        sub = group.subtasks[flags[group_index].index(False)]
        prefix = ""
        skipped = [g.obj for i, g in enumerate(task.groups) if g.obj in avoid and not all(flags[i])]
        if skipped and group.obj not in avoid:
            prefix = self._say("avoid", avoid=skipped[0])
        return self._plan(world, prefix + self._thought(world, task, flags, group, sub), sub)

    # --- choosing -------------------------------------------------------------------------------
    def _choose_group(self, world: WorldState, task: TaskInstance, flags, avoid: set[str], prefer: set[str],
                      forbids: list[Forbid]) -> int:
        ready = [
            i for i, g in enumerate(task.groups)
            if not all(flags[i]) and all(all(flags[d]) for d in g.deps)
        ]
        if not ready:  # dependencies undone by an accident: fall back on reference order
            return next(i for i, f in enumerate(flags) if not all(f))
        # Among groups equally right, the leftmost block in the front camera goes first: a rule the
        # images show, so a learned planner can be right rather than guess the reference order.
        # What the corrections rule out goes last: a ruled-out next step, then a ruled-out later one.
        ready.sort(key=lambda i: (task.groups[i].obj in avoid or _ruled_out(task, flags, i, forbids)[0],
                                  _ruled_out(task, flags, i, forbids)[1], task.groups[i].obj not in prefer,
                                  left_to_right(world, task.groups[i].obj), i))
        return ready[0]

    def _plan_holding(self, world: WorldState, task: TaskInstance, flags, avoid: set[str],
                      forbids: list[Forbid]) -> Plan:
        held = world.held
        # the latest ready group moving this block (a swap moves the same block twice)
        for i in reversed(range(len(task.groups))):
            g = task.groups[i]
            if g.kind != "move" or g.obj != held or flags[i][1]:
                continue
            if not all(all(flags[d]) for d in g.deps):
                continue
            alternatives = [
                j for j, h in enumerate(task.groups)
                if j != i and not all(flags[j]) and h.obj != held and h.obj not in avoid
                and all(all(flags[d]) for d in h.deps)
            ]
            if held in avoid and alternatives:
                return self._plan(world, self._say("put_down", held=held), put_down())
            # its place is ruled out ("not the red bowl") and something else is wholly allowed: do that first
            if forbidden(g.subtasks[1].text, forbids) and any(not _ruled_out(task, flags, j, forbids)[1]
                                                              for j in alternatives):
                return self._plan(world, self._say("put_down", held=held), put_down())
            self._carrying = held
            return self._plan(world, self._thought(world, task, flags, g, g.subtasks[1]), g.subtasks[1])
        return self._plan(world, self._say("put_down_stray", held=held), put_down())

    def _correction_mentions(self, world: WorldState, context: PlanContext) -> tuple[set[str], set[str]]:
        """Blocks the corrections rule out (negations, constraints) or ask for first."""
        avoid: set[str] = set()
        prefer: set[str] = set()
        names = sorted(world.blocks, key=len, reverse=True)
        for c in [*context.memory, *context.corrections]:  # rules remembered from earlier episodes too
            mentioned = set()
            if c.subtask:
                try:
                    sub = parse_subtask(c.subtask)
                    if sub.obj:
                        mentioned |= {n for n in names if n.endswith(sub.obj)}
                except ValueError:
                    pass
            text = normalize(c.text)
            for n in names:
                colour_phrase = n.split()[-2]  # "red" in "(large) red block"
                if n in text or re.search(rf"\b{colour_phrase}\b(?! bowl)", text):
                    mentioned.add(n)
            rule = c.rule if c.kind is CorrectionKind.CONSTRAINT else None
            if rule is not None and rule.kind == "avoid_block" and not _POSITIVE.search(text):
                # The classifier read the rule from the many ways to say it ("off limits", "stay away").
                avoid |= {n for n in names if n == rule.obj or n.endswith(" " + rule.obj)} or mentioned
                continue
            if not mentioned:
                continue
            if c.kind in (CorrectionKind.NEGATION, CorrectionKind.CONSTRAINT) and (
                c.kind is CorrectionKind.NEGATION or _NEGATIVE.search(text)
            ):
                avoid |= mentioned
            elif c.kind in (CorrectionKind.OVERRIDE, CorrectionKind.CONSTRAINT) or _POSITIVE.search(text):
                prefer |= mentioned
        return avoid - prefer, prefer

    # --- phrasing -------------------------------------------------------------------------------
    def _plan(self, world: WorldState, reason: str, sub: Subtask) -> Plan:
        return Plan(thought=self._grounded(world, reason), subtask=sub.text, source="oracle")

    @staticmethod
    def _grounded(world: WorldState, reason: str) -> str:
        """What it sees (the scene line), then why it decides."""
        return f"{format_scene(scene_from_facts(scene_facts(world), world.task.text))} {reason}"

    def _say(self, situation: str, **fields) -> str:
        options = self.templates[situation]
        text = options[int(self._rng.integers(len(options)))]
        return text.format(**fields)

    def _thought(self, world: WorldState, task: TaskInstance, flags, group: Group, sub: Subtask) -> str:
        done = sum(sum(f) for f in flags)
        total = len(task.subtasks)
        common = {"done": done, "total": total, "next": done + 1}
        if sub.kind in ("open", "close"):
            user = next((g.obj for g in task.groups if g.kind == "move" and g.obj), "block")
            return self._say(sub.kind, obj=user, **common)
        if sub.kind == "push":
            return self._say("push", obj=sub.obj, dir=sub.target, **common)
        obj = group.obj
        place = group.subtasks[1] if len(group.subtasks) > 1 else sub
        target, target_state = _describe_target(world, place, obj)
        where = _where(world, obj)
        where_short = where.replace("in the ", "the ").replace("on the ", "the ")
        target_prep = f"on {target}" if place.kind == "stack" else f"in {target}"
        fields = dict(obj=obj, Obj=_cap(obj), where=where, where_short=where_short, target_prep=target_prep,
                      target=target, target_state=target_state, Target_state_cap=_cap(target_state), **common)
        if sub.kind == "pick":
            dropped = self._carrying == obj
            self._carrying = None
            return self._say("regrasp" if dropped else "pick", **fields)
        situation = {"place": "place", "stack": "stack", "drawer_put": "drawer_put"}.get(sub.kind, "place")
        return self._say(situation, **fields)


def _ruled_out(task: TaskInstance, flags, i: int, forbids: list[Forbid]) -> tuple[bool, bool]:
    """(the group's next step is ruled out, any of its steps left is) by the corrections in force."""
    left = [sub.text for sub, ok in zip(task.groups[i].subtasks, flags[i]) if not ok]
    ruled = [forbidden(s, forbids) for s in left]
    return bool(ruled) and ruled[0], any(ruled)


def _cap(text: str) -> str:
    if text.startswith("the "):
        text = "The " + text[4:]
    return text[:1].upper() + text[1:]


def _where(world: WorldState, name: str) -> str:
    bowl = world.bowl_of(name)
    if bowl:
        return f"in the {bowl}"
    if world.in_drawer(name):
        return "in the drawer"
    for other in world.blocks:
        if other != name and world.on_block(name, other):
            return f"on the {other}"
    return "on the table"


def _describe_target(world: WorldState, place: Subtask, obj: str) -> tuple[str, str]:
    if place.kind == "place":
        bowl = world.bowl(place.target)
        inside = [n for n in world.blocks if n != obj and world.in_bowl(n, place.target)]
        state = f"the {bowl.name} is empty" if not inside else f"the {bowl.name} already holds the {inside[0]}"
        return f"the {bowl.name}", state
    if place.kind == "stack":
        on_top = world.blocks_on(place.target) if place.target in world.blocks else []
        state = f"the {place.target} is clear" if not on_top else f"the {place.target} has the {on_top[0]} on it"
        return f"the {place.target}", state
    if place.kind == "drawer_put":
        return "the drawer", "the drawer is open" if world.drawer.is_open else "the drawer is closed"
    return "the table", "there is free space on the table"
