"""WorldState: the privileged, symbolic view of the scene that detectors, the oracle, the expert
and the scripted coach read. Built from MuJoCo data once per control step.

Blocks and bowls are keyed by their display name in the episode ("red block", "large red block",
"blue bowl"); `body` gives the MuJoCo body behind each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.envs import scene as S
from policies.scene_line import SIDE_X

TABLE_REST_TOL = 0.006  # a block whose bottom is this close to z=0 rests on the table


@dataclass(frozen=True)
class BlockState:
    name: str  # display name, e.g. "red block" or "small red block"
    body: str
    color: str
    size: str  # "small" | "large"
    half: float  # half edge length (m)
    pos: np.ndarray  # float64[3] centre
    yaw: float  # rotation about z, folded into [-pi/4, pi/4) (a cube looks the same every quarter turn)
    upright: bool  # a face points up (the gripper can grasp it from above)

    @property
    def bottom(self) -> float:
        return float(self.pos[2] - self.half)

    @property
    def top(self) -> float:
        return float(self.pos[2] + self.half)


@dataclass(frozen=True)
class BowlState:
    name: str  # "blue bowl"
    body: str
    color: str
    pos: np.ndarray  # float64[3] centre of the base (z = 0 on the table)
    inner_radius: float = S.BOWL_INNER_RADIUS


@dataclass(frozen=True)
class DrawerState:
    opening: float  # metres pulled out, 0 = closed
    handle_pos: np.ndarray  # world position of the handle bar centre
    tray_center: np.ndarray  # world position of the tray floor centre (z = floor top)
    tray_half: tuple[float, float] = S.TRAY_INNER_HALF

    @property
    def is_open(self) -> bool:
        return self.opening >= S.DRAWER_OPEN_THRESHOLD

    @property
    def is_closed(self) -> bool:
        return self.opening <= S.DRAWER_CLOSED_THRESHOLD


@dataclass(frozen=True)
class GripperState:
    pos: np.ndarray  # TCP world position (measured)
    yaw: float
    width: float  # jaw gap (m)
    closed: bool  # the last grip command was "close"
    target_pos: np.ndarray  # commanded TCP position (integrated actions)
    target_yaw: float


@dataclass
class WorldState:
    blocks: dict[str, BlockState]
    bowls: dict[str, BowlState]
    drawer: DrawerState
    gripper: GripperState
    held: str | None  # display name of the block both jaws touch, if any
    supported: frozenset[str]  # blocks touching something other than the jaws
    time: float = 0.0
    step: int = 0
    contacts: dict[str, frozenset[str]] = field(default_factory=dict)  # block -> names it touches
    task: Any = None  # the TaskInstance (reference decomposition), for privileged planners
    subtasks_done: list[bool] = field(default_factory=list)

    # --- lookups --------------------------------------------------------------------------------
    def block(self, name: str) -> BlockState:
        try:
            return self.blocks[name]
        except KeyError:
            raise KeyError(f"no block {name!r} in this scene; blocks: {sorted(self.blocks)}") from None

    def bowl(self, name: str) -> BowlState:
        key = name if name.endswith("bowl") else f"{name} bowl"
        try:
            return self.bowls[key]
        except KeyError:
            raise KeyError(f"no bowl {name!r} in this scene; bowls: {sorted(self.bowls)}") from None

    # --- spatial predicates (used by the success detectors) ---------------------------------------
    def is_held(self, name: str) -> bool:
        return self.held == name

    def is_lifted(self, name: str) -> bool:
        """Held in the jaws and touching nothing else."""
        return self.held == name and name not in self.supported

    def in_bowl(self, name: str, bowl: str) -> bool:
        b, w = self.block(name), self.bowl(bowl)
        d = math.hypot(b.pos[0] - w.pos[0], b.pos[1] - w.pos[1])
        resting = b.bottom < S.BOWL_BASE_TOP + 0.012  # on the bowl's base, not hovering or on another block
        return bool(self.held != name and d < w.inner_radius - 0.01 and resting)

    def bowl_of(self, name: str) -> str | None:
        for bowl in self.bowls:
            if self.in_bowl(name, bowl):
                return bowl
        return None

    def on_block(self, top: str, bottom: str) -> bool:
        a, b = self.block(top), self.block(bottom)
        dx, dy = a.pos[0] - b.pos[0], a.pos[1] - b.pos[1]
        resting_height = abs(a.bottom - b.top) < 0.008
        return bool(self.held != top and max(abs(dx), abs(dy)) < b.half + 0.004 and resting_height)

    def in_drawer(self, name: str) -> bool:
        b, d = self.block(name), self.drawer
        dx, dy = b.pos[0] - d.tray_center[0], b.pos[1] - d.tray_center[1]
        inside = abs(dx) < d.tray_half[0] and abs(dy) < d.tray_half[1]
        return bool(self.held != name and inside and b.bottom < d.tray_center[2] + 0.012)

    def on_table(self, name: str) -> bool:
        """Resting directly on the table top, not in a bowl or the drawer."""
        b = self.block(name)
        return bool(self.held != name and b.bottom < TABLE_REST_TOL and self.bowl_of(name) is None)

    def side_of(self, name: str) -> str | None:
        x = self.block(name).pos[0]
        y = self.block(name).pos[1]
        if x < -PUSH_SIDE_X:
            return "left"
        if x > PUSH_SIDE_X:
            return "right"
        if y < PUSH_FRONT_Y:
            return "front"
        return None

    def blocks_on(self, name: str) -> list[str]:
        return [other for other in self.blocks if other != name and self.on_block(other, name)]


PUSH_SIDE_X = SIDE_X  # |x| beyond which a block counts as pushed to that side (the scene line's sides too)
PUSH_FRONT_Y = -0.22


def _fold_yaw(yaw: float) -> float:
    quarter = math.pi / 2
    return (yaw + quarter / 2) % quarter - quarter / 2


def _quat_to_mat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def block_yaw_and_upright(quat: np.ndarray) -> tuple[float, bool]:
    """Yaw of a cube about world z, from whichever body axis points (most nearly) up."""
    mat = _quat_to_mat(quat)
    up_axis = int(np.argmax(np.abs(mat[2, :])))
    upright = abs(mat[2, up_axis]) > 0.97
    # any body axis orthogonal to the up one lies (nearly) in the table plane; its heading is the yaw
    other = (up_axis + 1) % 3
    yaw = math.atan2(mat[1, other], mat[0, other])
    return _fold_yaw(yaw), upright
