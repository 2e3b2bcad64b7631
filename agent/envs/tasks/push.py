"""Pushing blocks to the left or right side of the table (no grasp)."""

from __future__ import annotations

import re

import numpy as np
from agent.envs.tasks.family import COLOR_PATTERN as _C, Group, TaskFamily, TaskInstance, pick_colors
from agent.envs.tasks.layout import BLOCK_CLEARANCE, LayoutBuilder, other_colors
from policies.grammar import normalize, push


class PushToSide(TaskFamily):
    name = "push_to_side"
    description = "push blocks to the left or right side of the table"
    max_subtasks = 2
    templates = (
        "push the {a} block to the {da} and the {b} block to the {db}",
        "slide the {a} block to the {da} side and the {b} block to the {db} side",
        "move the {a} block to the {da} and the {b} block to the {db} by pushing them",
    )
    _re = re.compile(
        rf"^(?:push|slide|move) (?P<a>{_C}) block to (?P<da>left|right)(?: side)? and (?P<b>{_C}) block to (?P<db>left|right)(?: side)?(?: by pushing them)?$"
    )
    _single = re.compile(rf"^(?:push|slide) (?P<a>{_C}) block to (?P<da>left|right)(?: side)?(?: of table)?$")

    def parse(self, text):
        norm = normalize(text)
        m = self._re.match(norm) or self._single.match(norm)
        return m.groupdict() if m else None

    def _sample(self, rng, params):
        single = "a" in params and "b" not in params
        params = pick_colors(rng, params, ("a",) if single else ("a", "b"))
        for k in ("da", "db"):
            params.setdefault(k, "left" if rng.random() < 0.5 else "right")
        lb = LayoutBuilder(rng)
        keys = ("a",) if single else ("a", "b")
        # the pushed blocks start near the middle, in lanes far enough apart for the gripper
        lanes = sorted(rng.choice(np.arange(-0.20, 0.0, 0.01), size=len(keys), replace=False))
        while len(lanes) == 2 and lanes[1] - lanes[0] < 0.09:
            lanes = sorted(rng.choice(np.arange(-0.20, 0.0, 0.01), size=2, replace=False))
        ids = []
        for k, y in zip(keys, lanes):
            x = float(rng.uniform(-0.05, 0.05))
            lb.placer.reserve(x, float(y), BLOCK_CLEARANCE, "block")
            lb.placer.reserve(-0.2, float(y), 0.04, "lane")
            lb.placer.reserve(0.2, float(y), 0.04, "lane")
            ids.append(lb.block(params[k], xy=(x, float(y))))
        for c in other_colors(rng, [params[k] for k in keys], int(rng.integers(0, 2))):
            x, y = lb.placer.place("block", region=((-0.27, 0.27), (0.04, 0.14)))
            lb.block_requests.append((c, "small" if rng.random() < 0.5 else "large", (x, y), 0.0))
        layout, names = lb.build()
        groups = [Group("push", (push(names[i], params[d]),), obj=names[i]) for i, d in zip(ids, ("da", "db"))]
        text = (f"push the {params['a']} block to the {params['da']}" if single else self.phrase(rng, **params))
        return TaskInstance(self.name, text, layout, groups, params)
