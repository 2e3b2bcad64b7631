"""Scene layouts: what a task puts on the table (`Layout`) and the rejection sampler that places it.

A `LayoutBuilder` takes requests for blocks and bowls, places them as non-overlapping discs clear of
the cabinet (and of the open drawer's sweep for drawer tasks), and picks a body for each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agent.envs import scene as S
from policies.grammar import COLORS as COLOR_NAMES


@dataclass(frozen=True)
class BlockSpec:
    body: str
    color: str
    size: str
    name: str
    xy: tuple[float, float]
    yaw: float
    z_base: float = 0.0  # height of the surface it starts on (bowl base for blocks in bowls)


@dataclass(frozen=True)
class BowlSpec:
    body: str
    color: str
    xy: tuple[float, float]

    @property
    def name(self) -> str:
        return f"{self.color} bowl"


@dataclass(frozen=True)
class Layout:
    blocks: tuple[BlockSpec, ...]
    bowls: tuple[BowlSpec, ...]
    drawer_opening: float = 0.0


# --- placing --------------------------------------------------------------------------------------
OBJECT_REGION = ((-0.27, 0.27), (-0.23, 0.14))
BLOCK_CLEARANCE = 0.05  # radius kept free around a block (the open jaws reach 5 cm out)
BOWL_CLEARANCE = 0.085
BLOCK_BOWL_GAP = 0.135  # centre distance block-bowl so an open jaw clears the rim


def excluded(x: float, y: float, r: float, uses_drawer: bool) -> bool:
    """Keep objects off the cabinet and, for drawer tasks, out of the open drawer's sweep."""
    if uses_drawer:
        return x + r > 0.08 and y + r > -0.14
    return x + r > 0.09 and y + r > 0.04


class Placer:
    """Rejection sampler for non-overlapping discs on the table."""

    def __init__(self, rng: np.random.Generator, uses_drawer: bool):
        self.rng = rng
        self.uses_drawer = uses_drawer
        self.discs: list[tuple[float, float, float, str]] = []  # x, y, radius, kind

    def _free(self, x: float, y: float, r: float, kind: str) -> bool:
        if excluded(x, y, r, self.uses_drawer):
            return False
        for ox, oy, orad, okind in self.discs:
            need = r + orad
            if {kind, okind} == {"block", "bowl"}:
                need = BLOCK_BOWL_GAP
            if math.hypot(x - ox, y - oy) < need:
                return False
        return True

    def place(self, kind: str, region=OBJECT_REGION, tries: int = 400) -> tuple[float, float]:
        r = BLOCK_CLEARANCE if kind == "block" else BOWL_CLEARANCE
        (x0, x1), (y0, y1) = region
        for _ in range(tries):
            x = float(self.rng.uniform(x0 + r * 0.6, x1 - r * 0.6))
            y = float(self.rng.uniform(y0 + r * 0.6, y1 - r * 0.6))
            if self._free(x, y, r, kind):
                self.discs.append((x, y, r, kind))
                return x, y
        raise NoRoom(kind)

    def reserve(self, x: float, y: float, r: float, kind: str) -> None:
        self.discs.append((x, y, r, kind))


class NoRoom(RuntimeError):
    """No free spot left for an object: the family samples the scene again."""


def block_names(specs: list[tuple[str, str]]) -> list[str]:
    """Display names for (colour, size) pairs: the size is said only when a colour repeats."""
    colors = [c for c, _ in specs]
    return [f"{s} {c} block" if colors.count(c) > 1 else f"{c} block" for c, s in specs]


class LayoutBuilder:
    """Chooses bodies for requested blocks/bowls and places them."""

    def __init__(self, rng: np.random.Generator, uses_drawer: bool = False):
        self.rng = rng
        self.placer = Placer(rng, uses_drawer)
        self.block_requests: list[tuple[str, str, tuple[float, float] | None, float]] = []
        self.bowls: list[BowlSpec] = []

    def bowl(self, color: str) -> BowlSpec:
        x, y = self.placer.place("bowl")
        spec = BowlSpec(S.BOWL_BODIES[len(self.bowls)], color, (x, y))
        self.bowls.append(spec)
        return spec

    def block(self, color: str, size: str | None = None, xy=None, z_base: float = 0.0) -> int:
        size = size or ("small" if self.rng.random() < 0.5 else "large")
        if xy is None:
            xy = self.placer.place("block")
        self.block_requests.append((color, size, xy, z_base))
        return len(self.block_requests) - 1

    def distractors(self, exclude: list[str], k: int) -> None:
        """k blocks of colours the task does not name, placed anywhere free."""
        for c in other_colors(self.rng, exclude, k):
            self.block(c)

    def build(self, drawer_opening: float = 0.0) -> tuple[Layout, list[str]]:
        small = [b for b in S.BLOCK_BODIES if S.BLOCK_HALF[b] == S.SMALL_HALF]
        large = [b for b in S.BLOCK_BODIES if S.BLOCK_HALF[b] == S.LARGE_HALF]
        names = block_names([(c, s) for c, s, _, _ in self.block_requests])
        specs = []
        for (color, size, xy, z_base), name in zip(self.block_requests, names):
            pool = small if size == "small" else large
            if not pool:
                raise NoRoom(f"{size} block")
            body = pool.pop(0)
            yaw = float(self.rng.uniform(-math.pi / 4, math.pi / 4))
            specs.append(BlockSpec(body, color, size, name, (float(xy[0]), float(xy[1])), yaw, z_base))
        return Layout(tuple(specs), tuple(self.bowls), drawer_opening), names


def other_colors(rng, exclude, k) -> list[str]:
    """k distinct colours, none of them in `exclude`."""
    pool = [c for c in COLOR_NAMES if c not in exclude]
    return [str(c) for c in rng.choice(pool, size=k, replace=False)]
