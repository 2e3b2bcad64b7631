"""Task families that build towers: three named blocks in a named order, and every block in one
tower (in whatever order the robot builds it)."""

from __future__ import annotations

import re
from agent.envs.tasks.family import COLOR_PATTERN as _C, Group, TaskFamily, TaskInstance, move, pick_colors
from agent.envs.tasks.layout import LayoutBuilder, other_colors
from policies.grammar import normalize, stack_on


class StackThree(TaskFamily):
    name = "stack_three"
    description = "stack three named blocks in a named order"
    max_subtasks = 4
    templates = (
        "stack the {middle} block on the {bottom} block, then the {top} block on the {middle} block",
        "build a tower with the {bottom} block at the bottom, then the {middle} block, then the {top} block on top",
        "put the {middle} block on the {bottom} block and the {top} block on the {middle} block",
    )
    _res = (
        re.compile(rf"^(?:stack|put) (?P<middle>{_C}) block on (?P<bottom>{_C}) block,? (?:and )?(?:then )?(?P<top>{_C}) block on (?P<middle2>{_C}) block$"),
        re.compile(rf"^build tower with (?P<bottom>{_C}) block at bottom,? then (?P<middle>{_C}) block,? then (?P<top>{_C}) block(?: on top)?$"),
    )

    def parse(self, text):
        norm = normalize(text)
        for r in self._res:
            m = r.match(norm)
            if m:
                d = m.groupdict()
                if d.pop("middle2", d["middle"]) != d["middle"]:
                    return None
                return d
        return None

    def _sample(self, rng, params):
        params = pick_colors(rng, params, ("bottom", "middle", "top"))
        lb = LayoutBuilder(rng)
        # sizes never grow upwards, so every tower is stable
        sizes = sorted(["small" if rng.random() < 0.5 else "large" for _ in range(3)], key=lambda s: s != "large")
        ids = [lb.block(params[k], s) for k, s in zip(("bottom", "middle", "top"), sizes)]
        lb.distractors([params[k] for k in ("bottom", "middle", "top")], int(rng.integers(0, 3)))
        if rng.random() < 0.5:
            lb.bowl(other_colors(rng, [], 1)[0])
        layout, names = lb.build()
        b, m, t = (names[i] for i in ids)
        groups = [move(m, stack_on(b)), move(t, stack_on(m), deps=(0,))]
        return TaskInstance(self.name, self.phrase(rng, **params), layout, groups, params)


class TowerOfN(TaskFamily):
    name = "tower_of_n"
    description = "stack all the blocks on the table into one tower"
    max_subtasks = 6
    templates = (
        "stack all the blocks into a single tower",
        "build one tower out of all the blocks",
        "put all the blocks on top of each other",
        "make a tower from every block on the table",
    )
    _re = re.compile(r"^(?:stack all blocks.*|build one tower.*|put all blocks on top of each other|make tower from every block.*)$")

    def _sample(self, rng, params):
        n = int(params.get("n") or rng.integers(3, 5))
        colors = other_colors(rng, [], n)
        lb = LayoutBuilder(rng)
        if rng.random() < 0.4:
            lb.bowl(other_colors(rng, [], 1)[0])
        sizes = ["large", "large"] + ["small"] * (n - 2)  # large ones at the bottom
        for c, s in zip(colors, sizes):
            lb.block(c, s)
        layout, _ = lb.build()
        # The order the cameras show: large blocks before small ones (a stable tower), each size
        # left to right in the front camera. Any tower of all the blocks succeeds (see `follow`).
        specs = sorted(layout.blocks, key=lambda b: (b.size != "large", b.xy[0]))
        order = [b.name for b in specs]
        return TaskInstance(self.name, self.phrase(rng), layout, self._groups(order), {"n": n, "order": order})

    @staticmethod
    def _groups(order: list[str]) -> list[Group]:
        return [move(order[i], stack_on(order[i - 1]), deps=(i - 2,) if i > 1 else ()) for i in range(1, len(order))]

    def follow(self, task, world):
        """Follow the tower being built, whatever its order: the tallest stack of these blocks (ties:
        the base earliest in the visible order) is the tower, the block in the jaws goes on it next,
        then the rest in the visible order."""
        visible = [b for b in task.params["order"] if b in world.blocks]

        def stack_from(base: str) -> list[str]:
            chain = [base]
            while above := [b for b in visible if b not in chain and world.on_block(b, chain[-1])]:
                chain.append(above[0])
            return chain

        bases = [b for b in visible if world.held != b and not any(world.on_block(b, o) for o in visible if o != b)]
        if not bases:
            return None
        tower = max((stack_from(b) for b in bases), key=len)  # max keeps the first of equal lengths
        rest = [b for b in visible if b not in tower]
        rest.sort(key=lambda b: b != world.held)  # stable: the visible order otherwise
        return self._groups(tower + rest)
