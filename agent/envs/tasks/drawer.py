"""Task families that use the drawer: one block in and close it, and the whole table cleared into it."""

from __future__ import annotations

import re
from agent.envs.tasks.family import COLOR_PATTERN as _C, Group, TaskFamily, TaskInstance, move, pick_colors
from agent.envs.tasks.layout import LayoutBuilder, other_colors
from policies.grammar import close_drawer, normalize, open_drawer, put_in_drawer


class BlockInDrawerAndClose(TaskFamily):
    name = "block_in_drawer_and_close"
    description = "open the drawer, put a block inside, close it"
    max_subtasks = 4
    uses_drawer = True
    templates = (
        "put the {color} block in the drawer and close it",
        "open the drawer, put the {color} block inside and close it",
        "store the {color} block in the drawer",
        "put away the {color} block in the drawer and shut it",
    )
    _re = re.compile(rf"^(?:open drawer,? )?(?:put|store|place)(?: away)? (?P<color>{_C}) block (?:in|into|inside)(?: drawer)?(?:,? and (?:close|shut) it)?$")

    def parse(self, text):
        norm = normalize(text)
        if "drawer" not in norm:
            return None
        m = self._re.match(norm.replace(" in drawer", " in").replace(" into drawer", " into"))
        return m.groupdict() if m else None

    def _sample(self, rng, params):
        params = pick_colors(rng, params, ("color",))
        lb = LayoutBuilder(rng, uses_drawer=True)
        if rng.random() < 0.5:
            lb.bowl(other_colors(rng, [], 1)[0])
        target = lb.block(params["color"])
        lb.distractors([params["color"]], int(rng.integers(1, 3)))
        layout, names = lb.build()
        groups = [Group("open", (open_drawer(),)), move(names[target], put_in_drawer(), deps=(0,)),
                  Group("close", (close_drawer(),), deps=(1,))]
        return TaskInstance(self.name, self.phrase(rng, **params), layout, groups, params)


class ClearTableIntoDrawer(TaskFamily):
    name = "clear_table_into_drawer"
    description = "put every block into the drawer and close it"
    max_subtasks = 6
    uses_drawer = True
    templates = (
        "put all the blocks in the drawer and close it",
        "clear the table: every block goes into the drawer, then shut it",
        "tidy all the blocks away into the drawer and close it",
    )
    _re = re.compile(r"^(?:(?:put|tidy) all blocks (?:away )?in(?:to)? drawer.*|clear table.*drawer.*)$")

    def _sample(self, rng, params):
        lb = LayoutBuilder(rng, uses_drawer=True)
        colors = other_colors(rng, [], 2)
        ids = [lb.block(c) for c in colors]
        if rng.random() < 0.5:
            lb.bowl(other_colors(rng, [], 1)[0])
        layout, names = lb.build()
        groups = [Group("open", (open_drawer(),))]
        groups += [move(names[i], put_in_drawer(), deps=(0,)) for i in ids]
        groups.append(Group("close", (close_drawer(),), deps=tuple(range(1, len(groups)))))
        return TaskInstance(self.name, self.phrase(rng), layout, groups, {})
