"""One success detector per primitive of the subtask language (policies.grammar).

"it" is the block picked by the preceding pick (the detector is told which one).
"""

from __future__ import annotations

import numpy as np

from agent.envs.world import WorldState
from policies.grammar import Subtask


def matching_blocks(world: WorldState, name: str) -> list[str]:
    """The scene's blocks a phrase can mean: "red block" fits "red block" and "large red block"."""
    return [b for b in world.blocks if b.endswith(name)]


def resolve_block(world: WorldState, name: str, near=None) -> str:
    """Map a block phrase to the display name used in this scene ("red block" may mean the only red
    block even if the scene calls it "large red block"). A phrase that fits several blocks is an
    error, unless `near` (a position) is given: then it means the one nearest to it, as a person
    told "the blue block" with two in reach would take the closer one."""
    if name in world.blocks:
        return name
    candidates = matching_blocks(world, name)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise KeyError(f"no {name!r} in this scene; blocks: {sorted(world.blocks)}")
    if near is not None:
        xy = np.asarray(near, dtype=np.float64)[:2]
        return min(sorted(candidates), key=lambda b: float(np.linalg.norm(world.blocks[b].pos[:2] - xy)))
    raise KeyError(f"{name!r} is ambiguous here; say one of {sorted(candidates)}")


# --- success detectors ----------------------------------------------------------------------------
def is_satisfied(world: WorldState, subtask: Subtask, it: str | None = None) -> bool:
    """Whether the effect of `subtask` holds now. `it` names the block a place-type subtask moves."""
    kind = subtask.kind
    if kind == "pick":  # a name that fits several blocks ("the blue block") is done when one of them is up
        if subtask.obj in world.blocks:
            return world.is_lifted(subtask.obj)
        fits = matching_blocks(world, subtask.obj) or [resolve_block(world, subtask.obj)]  # none: KeyError
        return any(world.is_lifted(b) for b in fits)
    if kind == "open":
        return world.drawer.is_open
    if kind == "close":
        return world.drawer.is_closed
    if kind == "push":
        name = resolve_block(world, subtask.obj)
        return world.held != name and world.side_of(name) == subtask.target
    if it is None:
        raise ValueError(f"{subtask.text!r} needs to know which block 'it' is")
    it = resolve_block(world, it)
    if kind == "place":
        return world.in_bowl(it, subtask.target)
    if kind == "stack":
        return world.on_block(it, resolve_block(world, subtask.target))
    if kind == "drawer_put":
        return world.in_drawer(it)
    if kind == "put_down":
        return world.on_table(it)
    raise ValueError(f"unknown subtask kind {kind!r}")
