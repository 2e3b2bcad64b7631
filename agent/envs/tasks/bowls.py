"""Task families about bowls: one colour into a bowl, sorting by colour, swapping two bowls' blocks,
a small stack inside a bowl."""

from __future__ import annotations

import math
import re

from agent.envs import scene as S
from agent.envs.tasks.family import COLOR_PATTERN as _C, TaskFamily, TaskInstance, bowl_and_maybe_another, move, pick_colors
from agent.envs.tasks.layout import BowlSpec, LayoutBuilder, other_colors
from policies.grammar import place_in_bowl, stack_on


class PutColorInBowl(TaskFamily):
    name = "put_color_in_bowl"
    description = "put every block of one colour into a bowl"
    max_subtasks = 4
    templates = (
        "put all the {color} blocks in the {bowl} bowl",
        "move every {color} block into the {bowl} bowl",
        "place the {color} blocks inside the {bowl} bowl",
        "gather all {color} blocks in the {bowl} bowl",
    )
    _re = re.compile(rf"^(?:put|move|place|gather) (?:all |every )?(?P<color>{_C}) blocks? (?:in|into|inside) (?P<bowl>{_C}) bowl$")

    def _sample(self, rng, params):
        params = pick_colors(rng, params, ("color", "bowl"))
        color, bowl = params["color"], params["bowl"]
        lb = LayoutBuilder(rng)
        lb.bowl(bowl)
        lb.bowl(other_colors(rng, [bowl], 1)[0])
        n = int(rng.integers(1, 3))
        targets = [lb.block(color, size) for size in (["small", "large"] if n == 2 else [None])]
        lb.distractors([color], int(rng.integers(1, 3)))
        layout, names = lb.build()
        order = [int(i) for i in rng.permutation(targets)]
        groups = [move(names[i], place_in_bowl(bowl)) for i in order]
        return TaskInstance(self.name, self.phrase(rng, **params), layout, groups, params)


class SortIntoBowls(TaskFamily):
    name = "sort_into_bowls"
    description = "put each block into the bowl of its colour"
    max_subtasks = 6
    templates = (
        "sort the blocks into the bowls of the same colour",
        "put each block in the bowl that matches its colour",
        "match the blocks to the bowls by colour",
        "sort the blocks by colour into the bowls",
    )
    _re = re.compile(r"^(?:sort .*bowls?.*|(?:put|place) each block in(?:to)? bowl .*colou?r.*|match blocks to bowls.*)$")

    def _sample(self, rng, params):
        k = int(rng.integers(2, 4))
        colors = other_colors(rng, [], k)
        lb = LayoutBuilder(rng)
        for c in colors:
            lb.bowl(c)
        blocks = [lb.block(c) for c in colors]
        if rng.random() < 0.5:
            lb.block(other_colors(rng, colors, 1)[0])  # a distractor with no bowl of its colour
        layout, names = lb.build()
        order = [int(i) for i in rng.permutation(len(blocks))]
        groups = [move(names[blocks[i]], place_in_bowl(colors[i])) for i in order]
        return TaskInstance(self.name, self.phrase(rng), layout, groups, {"colors": colors})


class SwapBowls(TaskFamily):
    name = "swap_bowls"
    description = "swap the blocks in two bowls, using the third bowl as a spare"
    max_subtasks = 6
    templates = (
        "swap the blocks in the {a} and {b} bowls",
        "exchange the blocks between the {a} bowl and the {b} bowl",
        "switch the blocks in the {a} bowl and the {b} bowl",
    )
    _re = re.compile(rf"^(?:swap|exchange|switch) blocks (?:in|between) (?P<a>{_C})(?: bowl)? and (?P<b>{_C}) bowls?$")

    def _sample(self, rng, params):
        params = pick_colors(rng, params, ("a", "b", "spare"))
        lb = LayoutBuilder(rng)
        bowl_a, bowl_b, _ = (lb.bowl(params[k]) for k in ("a", "b", "spare"))
        # the blocks' colours differ from every bowl so the task stays about position
        cx, cy = other_colors(rng, [params[k] for k in ("a", "b", "spare")], 2)
        x = lb.block(cx, xy=self._in_bowl(rng, bowl_a), z_base=S.BOWL_BASE_TOP)
        y = lb.block(cy, xy=self._in_bowl(rng, bowl_b), z_base=S.BOWL_BASE_TOP)
        layout, names = lb.build()
        X, Y = names[x], names[y]
        groups = [
            move(X, place_in_bowl(params["spare"]), superseded_by=2),
            move(Y, place_in_bowl(params["a"]), deps=(0,)),
            move(X, place_in_bowl(params["b"]), deps=(1,)),
        ]
        return TaskInstance(self.name, self.phrase(rng, **params), layout, groups, params)

    @staticmethod
    def _in_bowl(rng, bowl: BowlSpec) -> tuple[float, float]:
        r, a = rng.uniform(0, 0.015), rng.uniform(0, 2 * math.pi)
        return bowl.xy[0] + r * math.cos(a), bowl.xy[1] + r * math.sin(a)


class StackInBowl(TaskFamily):
    name = "stack_in_bowl"
    description = "put a block in a bowl and stack another on it"
    max_subtasks = 4
    templates = (
        "put the {a} block in the {bowl} bowl and stack the {b} block on it",
        "place the {a} block into the {bowl} bowl, then put the {b} block on top of it",
        "put the {a} block in the {bowl} bowl with the {b} block stacked on top",
    )
    _re = re.compile(
        rf"^(?:put|place) (?P<a>{_C}) block in(?:to)? (?P<bowl>{_C}) bowl,? (?:and |then )?(?:stack|put|with) (?P<b>{_C}) block(?: stacked)? on(?: top)?(?: of)?(?: it)?$"
    )

    def _sample(self, rng, params):
        params = pick_colors(rng, params, ("a", "b", "bowl"))
        lb = LayoutBuilder(rng)
        bowl_and_maybe_another(lb, rng, params["bowl"])
        a = lb.block(params["a"], "large")
        b = lb.block(params["b"], "small" if rng.random() < 0.6 else "large")
        lb.distractors([params["a"], params["b"]], int(rng.integers(0, 2)))
        layout, names = lb.build()
        groups = [move(names[a], place_in_bowl(params["bowl"])), move(names[b], stack_on(names[a]), deps=(0,))]
        return TaskInstance(self.name, self.phrase(rng, **params), layout, groups, params)
