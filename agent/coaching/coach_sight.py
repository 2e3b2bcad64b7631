"""What the scripted coach reads off the simulator's privileged state: whether a released block
was dropped, and which way a nudge should move the gripper towards the next subtask."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from agent.coaching.nudge import describe_direction
from agent.envs.primitives import is_satisfied, resolve_block
from policies.grammar import PLACE_KINDS, SubtaskParseError, parse_subtask


def is_drop(world: Any, block: str, plan_sub: str | None) -> bool:
    """A released block that did not end up where the plan in force at release wanted it."""
    try:
        sub = parse_subtask(plan_sub) if plan_sub else None
    except SubtaskParseError:
        sub = None
    if sub is not None and sub.kind == "put_down":
        return False
    if sub is not None and sub.kind in PLACE_KINDS:
        try:
            return not is_satisfied(world, sub, it=block)
        except (KeyError, ValueError):
            return True
    # released while picking (a failed grasp) or under free text: a drop only if it is lying loose
    try:
        return bool(world.on_table(block)) and sub is None
    except (KeyError, AttributeError):
        return False


def nudge_words(world: Any, subtask: str) -> str | None:
    """The [nudge] grammar key that moves the gripper towards where `subtask` needs it, if clear."""
    try:
        sub = parse_subtask(subtask)
    except SubtaskParseError:
        return None
    gripper = getattr(world, "gripper", None)
    if gripper is None:
        return None
    target = _target_point(world, sub)
    if target is None:
        return None
    if sub.kind == "pick" and world.held is None and bool(getattr(gripper, "closed", False)):
        return "open"  # jaws shut on nothing above the block
    delta = np.asarray(target, dtype=np.float64) - np.asarray(gripper.pos, dtype=np.float64)
    horizontal = math.hypot(delta[0], delta[1])
    if horizontal > 0.02:
        return describe_direction(np.array([delta[0], delta[1], 0.0]))
    if sub.kind == "pick":
        block = world.blocks[resolve_block(world, sub.obj)]
        yaw_err = (block.yaw - float(gripper.yaw) + math.pi / 4) % (math.pi / 2) - math.pi / 4
        if abs(yaw_err) > 0.25:
            return "rotate_ccw" if yaw_err > 0 else "rotate_cw"
    if abs(delta[2]) > 0.02:
        return "up" if delta[2] > 0 else "down"
    return None


def _target_point(world: Any, sub: Any) -> np.ndarray | None:
    try:
        if sub.kind in ("pick", "push"):
            return np.asarray(world.blocks[resolve_block(world, sub.obj)].pos, dtype=np.float64)
        if sub.kind == "place":
            return np.asarray(world.bowl(sub.target).pos, dtype=np.float64) + np.array([0.0, 0.0, 0.08])
        if sub.kind == "stack":
            block = world.blocks[resolve_block(world, sub.target)]
            return np.asarray(block.pos, dtype=np.float64) + np.array([0.0, 0.0, 0.06])
        if sub.kind == "drawer_put":
            return np.asarray(world.drawer.tray_center, dtype=np.float64) + np.array([0.0, 0.0, 0.08])
        if sub.kind in ("open", "close"):
            return np.asarray(world.drawer.handle_pos, dtype=np.float64)
    except (KeyError, AttributeError):
        return None
    return None
