"""What the simulator knows about a scene, as plain facts: the labels of the planner's scene questions.

    facts = scene_facts(world)      # a JSON-able dict, stored beside each rendered planner frame
    facts["blocks"]["red block"]    # {"place": "bowl", "where": "blue bowl", "x": -0.12}

Places: "table" (resting on the table top), "held" (in the gripper), "bowl" (where = the bowl),
"drawer", "block" (where = the block it rests on), "moving" (none of these: falling, tipping, pushed
against another). Blocks are listed left to right as the front camera sees them (world x), the same
order the oracle breaks ties in. These are privileged: training labels only, never a model input.
"""

from __future__ import annotations

from agent.envs.world import WorldState


def block_place(world: WorldState, name: str) -> tuple[str, str | None]:
    """(place, where) of one block; see the module doc."""
    if world.is_held(name):
        return "held", None
    bowl = world.bowl_of(name)
    if bowl is not None:
        return "bowl", bowl
    if world.in_drawer(name):
        return "drawer", None
    for other in world.blocks:
        if other != name and world.on_block(name, other):
            return "block", other
    if world.on_table(name):
        return "table", None
    return "moving", None


def scene_facts(world: WorldState) -> dict:
    """Every block's place, the bowls, the drawer and the gripper, as JSON-able facts."""
    blocks = {}
    for name in sorted(world.blocks, key=lambda n: float(world.blocks[n].pos[0])):
        place, where = block_place(world, name)
        blocks[name] = {"place": place, "where": where, "x": round(float(world.blocks[name].pos[0]), 4)}
    return {
        "blocks": blocks,
        "bowls": sorted(world.bowls, key=lambda n: float(world.bowls[n].pos[0])),
        "drawer_open": bool(world.drawer.is_open),
        "held": world.held,
    }
