"""Which subtasks a grounded plan may decide, given the scene line it opened with.

    subtasks = allowed_subtasks(parse_scene(line))   # every Subtask the line leaves open, in a fixed order
    plan_is_allowed(text)                            # "I see: ... So: <subtask>": parses, and names only what it saw

The grounded planner writes "I see: <scene line> So: <subtask>" (policies/scene_line.py,
policies/planning.py, policies/grammar.py). Its subtask may name only the blocks its own line listed:
"pick up" / "push" any listed block; "stack it on" a listed block other than the one the line says
is held; "place it in" a bowl the line listed (a line without its bowls, from a read-out that
does not read them, leaves every bowl colour of the grammar open); the drawer and put-down subtasks
always. The grammar-
constrained decoder (policies/pi05/constrained.py) tokenises exactly these plans; this module knows
no tokenizer.
"""

from __future__ import annotations

from policies.grammar import COLORS, DIRECTIONS, Subtask, SubtaskParseError, parse_subtask
from policies.planning import PlanParseError, parse_plan
from policies.scene_line import Scene, SceneParseError, parse_scene, split_scene

# the subtasks that name no object: always open
_NAMELESS = (Subtask("drawer_put"), Subtask("open"), Subtask("close"), Subtask("put_down"))


def allowed_subtasks(scene: Scene) -> tuple[Subtask, ...]:
    """Every subtask a plan after this scene line may decide, each once (blocks in the line's order)."""
    names = [b.name for b in scene.blocks]
    held = {b.name for b in scene.blocks if b.place == "held"}
    out: list[Subtask] = [Subtask("pick", obj=n) for n in names]
    out += [Subtask("place", target=bowl) for bowl in (scene.bowls or [f"{c} bowl" for c in COLORS])]
    out += [Subtask("stack", target=n) for n in names if n not in held]
    out += list(_NAMELESS)
    out += [Subtask("push", obj=n, target=d) for n in names for d in DIRECTIONS]
    return tuple(out)


def plan_is_allowed(text: str) -> bool:
    """Does this plan open with a scene line, end with one subtask of the grammar, and name in it only
    what the line allows? (The measure of a constrained decoder: every plan it writes passes.)"""
    try:
        plan = parse_plan(text)
        line, rest = split_scene(plan.thought)
        if line is None or rest:
            return False
        return parse_subtask(plan.subtask) in allowed_subtasks(parse_scene(line))
    except (PlanParseError, SceneParseError, SubtaskParseError):
        return False
