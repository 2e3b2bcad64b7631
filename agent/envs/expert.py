"""ScriptedExpert: a privileged low-level policy that executes canonical subtasks.

Each call reads the world state (obs.privileged), picks the phase of the primitive's waypoint
machine from it (approach high, align, descend, close, lift; carry, lower, release, retreat; hook
and pull; ...) and rolls the machine forward on a predicted end-effector target to fill an action
chunk of H steps. Because the phase is re-derived from the world every call, recovery comes for
free: a grasp that closed on nothing opens and re-approaches, and a block dropped on the way is
picked again before the place continues (`recovery=True`). `noise_std` (metres) perturbs the
executed path (not the plan): each step is displaced from the planned one by Gaussian noise of that
size, fading out near each waypoint and off during contact moves, so the data shows perturbed
approaches and their corrections while grasps and releases stay precise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agent.envs import scene as S
from agent.envs.primitives import is_satisfied, resolve_block
from agent.envs.tasks.layout import OBJECT_REGION
from agent.envs.tabletop import ACTION_HIGH, ACTION_LOW, MAX_ROTATION, MAX_TRANSLATION
from agent.envs.world import WorldState
from policies.grammar import Subtask, parse_subtask

CLOSE = 1.0
OPEN = -1.0
OPEN_REACH = S.FINGER_MAX_OPENING + 2 * S.FINGER_HALF[1]  # how far an open jaw reaches from the TCP
XY_TOL = 0.004
Z_TOL = 0.003
YAW_TOL = 0.04
CLOSE_STEPS = 3  # steps the jaws need to close on a block
RELEASE_STEPS = 2
BOWL_SLOTS = ((-0.032, 0.0), (0.032, 0.0), (0.0, 0.0))  # along x, so open jaws (along y) miss the rim
DRAWER_SLOTS = ((-0.04, -0.005), (0.04, -0.005), (0.0, -0.005))
DRAWER_YAW = math.pi / 2  # jaws across the handle gap: the palm then clears the cabinet top
HOOK_GAP_CENTER = (S.DRAWER_FRONT_Y - S.HANDLE_Y + S.HANDLE_HALF[1]) / 2  # bar face .. drawer front
FINGERS_HALF_DEPTH = S.FINGER_HALF[0]  # closed jaws are a column this half-thick
PUSH_TARGET_X = 0.20
CABINET_FRONT_Y = S.DRAWER_CLOSED_Y + S.DRAWER_FRONT_Y
PUSH_SPEED = 0.015
NOISE_FADE_DISTANCE = 0.06  # action noise fades out over the last 6 cm to a waypoint


@dataclass
class _Virtual:
    """The predicted commanded state while rolling a chunk out."""

    pos: np.ndarray
    yaw: float
    closed: bool
    close_count: int = 0
    settle: int = 0
    assume_held: bool = False
    released: bool = False
    release_count: int = 0
    phase: str = ""  # "pull" / "push" once hooked on the drawer or pushing a block
    done: bool = False


class ScriptedExpert:
    """LowLevelPolicy that reads privileged state. `act(obs, subtask) -> float32[H, 5]`."""

    def __init__(self, horizon: int = 10, noise_std: float = 0.0, recovery: bool = True, seed: int = 0,
                 strict: bool = True):
        """`strict=False` makes a subtask the expert cannot carry out (unparseable text, a block that
        is not in the scene) hold the gripper still and set `last_error`, instead of raising: useful
        under a learned high level that may decode nonsense. It also reads a block name that fits
        several blocks ("the blue block" with a small and a large one) as the one nearest the gripper."""
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {noise_std}")
        self.horizon = horizon
        self.noise_std = float(noise_std)
        self.recovery = recovery
        self.seed = seed
        self.strict = strict
        self.last_error: str | None = None
        self.reset()

    def reset(self) -> None:
        self._rng = np.random.default_rng(self.seed)
        self._it: str | None = None  # the block "it" refers to
        self._subtask_text: str | None = None
        self._subtask: Subtask | None = None

    # --- LowLevelPolicy -------------------------------------------------------------------------
    def act(self, obs, subtask: str) -> np.ndarray:
        world: WorldState = obs.privileged
        if world is None:
            raise ValueError("ScriptedExpert needs obs.privileged (a WorldState) - use it with the bundled env")
        try:
            chunk = self._act(world, subtask)
        except (ValueError, KeyError) as err:  # SubtaskParseError is a ValueError
            if self.strict:
                raise
            self.last_error = f"cannot do {subtask!r}: {err}"
            hold = np.zeros((self.horizon, 5), dtype=np.float32)
            hold[:, 4] = CLOSE if world.gripper.closed else OPEN  # keep the jaws as they are
            return hold
        self.last_error = None
        return chunk

    def _act(self, world: WorldState, subtask: str) -> np.ndarray:
        if subtask != self._subtask_text:
            self._subtask = parse_subtask(subtask)
            self._subtask_text = subtask
        sub = self._subtask
        if world.held is not None:
            self._it = world.held
        if sub.kind == "pick":
            self._it = self._block(world, sub.obj)
        g = world.gripper
        v = _Virtual(pos=g.target_pos.copy(), yaw=g.target_yaw, closed=g.closed)
        chunk = np.zeros((self.horizon, 5), dtype=np.float32)
        noise_scale = np.zeros(self.horizon)
        for k in range(self.horizon):
            goal, yaw_goal, grip = self._next(world, sub, v)
            # noise only in free motion: full far from the waypoint, fading to none at it, so
            # fine alignment, grasping and releasing stay precise (chunks run open loop)
            noise_scale[k] = min(1.0, float(np.linalg.norm(goal - v.pos)) / NOISE_FADE_DISTANCE)
            if v.phase in ("pull", "push"):  # dragging the drawer or a block: contact, keep it clean
                noise_scale[k] = 0.0
            delta = np.clip(goal - v.pos, -MAX_TRANSLATION, MAX_TRANSLATION)
            dyaw = float(np.clip(yaw_goal - v.yaw, -MAX_ROTATION, MAX_ROTATION))
            v.pos = v.pos + delta
            v.yaw += dyaw
            v.closed = grip > 0
            chunk[k] = (*delta, dyaw, grip)
        if self.noise_std > 0:
            # a bounded deviation from the planned path (not a random walk): step k is displaced by
            # offset[k], so the action noise is offset[k] - offset[k-1]
            offset = self._rng.normal(0.0, self.noise_std, size=(self.horizon, 4)) * noise_scale[:, None]
            offset[:, 3] *= MAX_ROTATION / MAX_TRANSLATION
            noise = offset - np.vstack([np.zeros((1, 4)), offset[:-1]])
            chunk[:, :4] += noise.astype(np.float32)
            chunk = np.clip(chunk, ACTION_LOW, ACTION_HIGH).astype(np.float32)
        return chunk

    def _block(self, world: WorldState, name: str) -> str:
        return resolve_block(world, name, near=None if self.strict else world.gripper.pos)

    # --- the waypoint machines ------------------------------------------------------------------
    def _next(self, world: WorldState, sub: Subtask, v: _Virtual) -> tuple[np.ndarray, float, float]:
        """(goal TCP position, goal yaw, grip) for the next step; updates v's phase counters."""
        if sub.kind == "pick":
            return self._pick(world, self._block(world, sub.obj), v)
        if sub.kind in ("place", "stack", "drawer_put", "put_down"):
            return self._place(world, sub, v)
        if sub.kind == "open":
            return self._open_drawer(world, v)
        if sub.kind == "close":
            return self._close_drawer(world, v)
        if sub.kind == "push":
            return self._push(world, self._block(world, sub.obj), sub.target, v)
        raise ValueError(f"the expert cannot do {sub.text!r}")

    def _hold(self, v: _Virtual, grip: float) -> tuple[np.ndarray, float, float]:
        return v.pos.copy(), v.yaw, grip

    def _retreat(self, world: WorldState, v: _Virtual, grip: float) -> tuple[np.ndarray, float, float]:
        z = max(v.pos[2], min(_travel_z(world), 0.16))
        return np.array([v.pos[0], v.pos[1], z]), v.yaw, grip

    def _goto(self, v: _Virtual, goal: np.ndarray, yaw: float, travel_z: float, grip: float):
        """Rise, cross at travel height, then descend onto `goal` (never sweep low across the table)."""
        xy_err = float(np.hypot(*(goal[:2] - v.pos[:2])))
        yaw_err = abs(yaw - v.yaw)
        if xy_err > XY_TOL or yaw_err > YAW_TOL:
            if v.pos[2] < travel_z - 0.01 and xy_err > 0.01:
                return np.array([v.pos[0], v.pos[1], travel_z]), v.yaw, grip
            return np.array([goal[0], goal[1], max(travel_z, goal[2]) if xy_err > 0.01 else v.pos[2]]), yaw, grip
        return goal.copy(), yaw, grip

    def _at(self, v: _Virtual, goal: np.ndarray, yaw: float) -> bool:
        return (
            float(np.hypot(*(goal[:2] - v.pos[:2]))) <= XY_TOL
            and abs(goal[2] - v.pos[2]) <= Z_TOL
            and abs(yaw - v.yaw) <= YAW_TOL
        )

    def _pick(self, world: WorldState, name: str, v: _Virtual):
        blk = world.block(name)
        if world.held == name or v.assume_held:
            # lift straight up to carrying height, ready for the place that follows
            v.assume_held = True
            lift_z = _travel_z(world, exclude=(name,), carrying=blk.half)
            return np.array([v.pos[0], v.pos[1], max(v.pos[2], lift_z)]), v.yaw, CLOSE
        yaw = _grasp_yaw(world, name, v.yaw)
        grasp = blk.pos.copy()
        if v.closed:
            near = float(np.hypot(*(grasp[:2] - v.pos[:2]))) <= 0.008 and abs(grasp[2] - v.pos[2]) <= 0.008
            jaws_on_block = world.gripper.width > 1.2 * blk.half  # not closed through empty air
            if near and v.close_count < CLOSE_STEPS and (jaws_on_block or v.close_count > 0 or not world.gripper.closed):
                v.close_count += 1
                if v.close_count >= CLOSE_STEPS:
                    v.assume_held = True
                return self._hold(v, CLOSE)
            # closed on nothing (or away from the block): open, back off upwards, try again
            v.close_count = 0
            return np.array([v.pos[0], v.pos[1], v.pos[2] + 0.01]), v.yaw, OPEN
        travel = _travel_z(world, exclude=(name,), above=blk.top + 0.03)
        if self._at(v, grasp, yaw):
            if v.settle < 1:  # one still step so the servos catch up with the target
                v.settle += 1
                return self._hold(v, OPEN)
            v.close_count = 1
            return self._hold(v, CLOSE)
        return self._goto(v, grasp, yaw, travel, OPEN)

    def _place(self, world: WorldState, sub: Subtask, v: _Virtual):
        it = self._it
        if it is None:
            return self._retreat(world, v, OPEN)
        blk = world.block(it)
        if v.released:
            v.release_count += 1
            if v.release_count <= RELEASE_STEPS:
                return self._hold(v, OPEN)
            return self._retreat(world, v, OPEN)
        holding = world.held == it or v.assume_held
        if not holding:
            if is_satisfied(world, sub, it=it):
                return self._retreat(world, v, OPEN)
            if self.recovery and world.held is None:
                return self._pick(world, it, v)  # dropped on the way: pick it up again
            return self._retreat(world, v, OPEN)
        # where the block sits relative to the TCP (measured if it is in the jaws now)
        if world.held == it:
            offset = blk.pos - world.gripper.pos
            rel_yaw = _fold(blk.yaw - world.gripper.yaw)
        else:
            offset, rel_yaw = np.zeros(3), 0.0
        dest, gripper_yaw = self._destination(world, sub, it, blk, rel_yaw, v.yaw)
        goal = dest - offset
        travel = _travel_z(world, exclude=(it,), carrying=blk.half - offset[2], above=goal[2])
        if self._at(v, goal, gripper_yaw):
            if v.settle < 1:
                v.settle += 1
                return self._hold(v, CLOSE)
            v.released = True
            v.release_count = 0
            return self._hold(v, OPEN)
        return self._goto(v, goal, gripper_yaw, travel, CLOSE)

    def _destination(self, world, sub, it, blk, rel_yaw, current_yaw) -> tuple[np.ndarray, float]:
        """Block-centre release point and gripper yaw for a place-type subtask."""
        if sub.kind == "place":
            bowl = world.bowl(sub.target)
            slot = _free_slot(world, it, bowl.pos[:2], BOWL_SLOTS, 0.04)
            return np.array([*slot, S.BOWL_BASE_TOP + blk.half + 0.01]), 0.0
        if sub.kind == "stack":
            base = world.block(self._block(world, sub.target))
            yaw = _nearest_equivalent(base.yaw - rel_yaw, current_yaw, math.pi / 2)
            return np.array([base.pos[0], base.pos[1], base.top + blk.half + 0.008]), yaw
        if sub.kind == "drawer_put":
            tray = world.drawer.tray_center
            # keep the palm (5.8 cm either side of the TCP along y) clear of the cabinet top
            centre = np.array([tray[0], min(tray[1], CABINET_FRONT_Y - 0.065)])
            slot = _free_slot(world, it, centre, DRAWER_SLOTS, 0.045)
            return np.array([*slot, S.TRAY_FLOOR_TOP + blk.half + 0.01]), 0.0
        if sub.kind == "put_down":
            # re-chosen from the state at every call (no memory of an earlier choice): straight
            # down where the block hangs if that is free, else the nearest free spot. A spot fixed
            # at the subtask's start is invisible to a policy that drifted since, so its labels
            # pointed somewhere the images do not show
            here = blk.pos[:2] if world.held == it else world.gripper.pos[:2]
            free_here = _is_free_table_spot(world, it, here, bounds=OBJECT_REGION)
            spot = here if free_here else _free_table_spot(world, it, here)
            return np.array([*spot, blk.half + 0.006]), current_yaw
        raise ValueError(sub.kind)

    def _open_drawer(self, world: WorldState, v: _Virtual):
        d = world.drawer
        yaw = _nearest_equivalent(DRAWER_YAW, v.yaw, math.pi)
        hook = np.array([d.handle_pos[0], d.handle_pos[1] + HOOK_GAP_CENTER, S.HANDLE_Z - 0.005])
        final_y = S.DRAWER_CLOSED_Y + S.HANDLE_Y - (S.DRAWER_MAX_OPENING - 0.008) + S.HANDLE_HALF[1] + FINGERS_HALF_DEPTH
        if v.phase == "done" or (d.opening >= S.DRAWER_MAX_OPENING - 0.02 and v.phase != "pull"):
            v.phase = "done"
            return np.array([v.pos[0], v.pos[1], 0.14]), v.yaw, CLOSE
        hooked = (
            abs(v.pos[0] - d.handle_pos[0]) < 0.012
            and d.handle_pos[1] + 0.008 < v.pos[1] < d.handle_pos[1] + 0.05
            and v.pos[2] < S.HANDLE_Z + 0.01
        )
        if v.phase == "pull" or hooked:
            v.phase = "pull"
            if v.pos[1] <= final_y + 0.002:
                v.phase = "done"
            return np.array([hook[0], final_y, hook[2]]), yaw, CLOSE
        return self._goto(v, hook, yaw, 0.13, _closing_grip(v))

    def _close_drawer(self, world: WorldState, v: _Virtual):
        d = world.drawer
        yaw = _nearest_equivalent(DRAWER_YAW, v.yaw, math.pi)
        final_y = S.DRAWER_CLOSED_Y + S.HANDLE_Y - S.HANDLE_HALF[1] - FINGERS_HALF_DEPTH + 0.01
        if v.phase == "done" or (d.opening <= 0.004 and v.phase != "push"):
            v.phase = "done"
            return np.array([v.pos[0], v.pos[1], 0.14]), v.yaw, CLOSE
        start = np.array([d.handle_pos[0], d.handle_pos[1] - S.HANDLE_HALF[1] - FINGERS_HALF_DEPTH - 0.006, S.HANDLE_Z])
        pushing = (
            abs(v.pos[0] - d.handle_pos[0]) < 0.012
            and d.handle_pos[1] - 0.03 < v.pos[1] < d.handle_pos[1]
            and v.pos[2] < S.HANDLE_Z + 0.01
        )
        if v.phase == "push" or pushing:
            v.phase = "push"
            if v.pos[1] >= final_y - 0.002:
                v.phase = "done"
            return np.array([start[0], final_y, start[2]]), yaw, CLOSE
        if _in_front_of_handle(v.pos, start):
            # nothing lies between: slide straight to the start point. Climbing to travel height
            # and back from here made the labels near the handle alternate between "push" and
            # "climb" at the states only a learned policy visits, and a regression averages them
            return start, yaw, CLOSE
        return self._goto(v, start, yaw, 0.13, _closing_grip(v))

    def _push(self, world: WorldState, name: str, direction: str, v: _Virtual):
        blk = world.block(name)
        axis, sign = {"left": (0, -1.0), "right": (0, 1.0), "front": (1, -1.0)}[direction]
        goal_coord = sign * PUSH_TARGET_X if axis == 0 else -0.26
        standoff = blk.half + FINGERS_HALF_DEPTH + 0.004
        if v.phase == "done" or (is_satisfied(world, Subtask("push", name, direction)) and v.phase != "push"):
            v.phase = "done"
            return np.array([v.pos[0], v.pos[1], max(v.pos[2], 0.1)]), v.yaw, CLOSE
        behind = blk.pos.copy()
        behind[axis] -= sign * (standoff + 0.006)
        behind[2] = 0.018
        other = 1 - axis
        tcp = world.gripper.pos
        in_contact = (
            tcp[2] < 0.035
            and abs(tcp[other] - blk.pos[other]) < 0.015
            and 0 <= sign * (blk.pos[axis] - tcp[axis]) < standoff + 0.03
        )
        if v.phase == "push" or in_contact and world.gripper.closed:
            v.phase = "push"
            goal = v.pos.copy()
            goal[axis] = v.pos[axis] + sign * PUSH_SPEED
            goal[other] = blk.pos[other]
            end = goal_coord - sign * standoff
            if sign * (goal[axis] - end) >= 0:
                goal[axis] = end
                v.phase = "done"
            return goal, 0.0, CLOSE
        travel = _travel_z(world, exclude=(), above=blk.top + 0.03)
        return self._goto(v, behind, 0.0, travel, _closing_grip(v))


# --- geometry helpers -----------------------------------------------------------------------------
def _closing_grip(v: _Virtual) -> float:
    """Jaws for the drawer and push moves: closed, but only once clear of whatever was just released
    (closing low right after a place would grab the block again)."""
    return CLOSE if v.closed or v.pos[2] >= 0.085 else OPEN


def _fold(yaw: float, period: float = math.pi / 2) -> float:
    return (yaw + period / 2) % period - period / 2


def _nearest_equivalent(yaw: float, current: float, period: float) -> float:
    """The copy of `yaw` (mod `period`) closest to `current` within the wrist's range."""
    candidates = [yaw + k * period for k in range(-4, 5)]
    candidates = [c for c in candidates if abs(c) <= S.YAW_LIMIT - 0.05]
    return min(candidates, key=lambda c: abs(c - current))


def _grasp_yaw(world: WorldState, name: str, current: float) -> float:
    """Jaw yaw for a top grasp: of the block's two face axes, the one whose open jaws land farthest
    from other blocks and bowl rims; ties go to the smaller wrist turn."""
    blk = world.block(name)
    best, best_score = None, -1e9
    for k in range(-3, 4):
        yaw = blk.yaw + k * math.pi / 2
        if abs(yaw) > S.YAW_LIMIT - 0.05:
            continue
        jaw_dir = np.array([-math.sin(yaw), math.cos(yaw)])
        clearance = 1.0
        for tip in (blk.pos[:2] + OPEN_REACH * jaw_dir, blk.pos[:2] - OPEN_REACH * jaw_dir):
            for other in world.blocks.values():
                if other.name != name and other.top > blk.bottom + 0.005:
                    clearance = min(clearance, float(np.hypot(*(tip - other.pos[:2]))) - other.half * 1.42)
            for bowl in world.bowls.values():
                clearance = min(clearance, abs(float(np.hypot(*(tip - bowl.pos[:2]))) - S.BOWL_RADIUS + 0.003))
        score = min(clearance, 0.03) - 0.01 * abs(yaw - current)
        if score > best_score:
            best, best_score = yaw, score
    return best


def _travel_z(world: WorldState, exclude=(), carrying: float = 0.0, above: float = 0.0) -> float:
    """TCP height that clears every block, bowl rim and drawer wall (plus what hangs below the TCP)."""
    tops = [S.BOWL_RIM_TOP]
    tops += [b.top for n, b in world.blocks.items() if n not in exclude and b.top > -0.1]
    if not world.drawer.is_closed:
        tops.append(0.09)
    clearance = 0.03
    hang = max(0.01, carrying)  # fingertips are 1 cm below the TCP; a carried block hangs lower
    return float(np.clip(max(max(tops) + clearance + hang, above, 0.08), 0.08, S.EE_LIMITS[2][1] - 0.02))


def _free_slot(world: WorldState, it: str, center: np.ndarray, slots, radius: float) -> np.ndarray:
    for dx, dy in slots:
        p = np.array([center[0] + dx, center[1] + dy])
        if all(float(np.hypot(*(p - b.pos[:2]))) >= radius for n, b in world.blocks.items() if n != it):
            return p
    return np.array(center[:2], dtype=float)


def _in_front_of_handle(pos: np.ndarray, start: np.ndarray) -> bool:
    """Low in the free space just in front of the drawer handle (not over the bar, not over the
    drawer), where a straight move to the push start point hits nothing."""
    return (
        abs(pos[0] - start[0]) < 0.06
        and start[1] - 0.08 < pos[1] < start[1] + 0.005
        and S.HANDLE_Z - 0.02 < pos[2] < S.HANDLE_Z + 0.06
    )


# where a put-down searches for a spot when the block cannot go straight down: the middle of the table
# (the sides are push_to_side's targets)
PUT_DOWN_REGION = ((-0.13, 0.13), (-0.22, 0.04))


def _is_free_table_spot(world: WorldState, it: str, p: np.ndarray, bounds=PUT_DOWN_REGION) -> bool:
    """Inside `bounds` ((x0, x1), (y0, y1)), out of the drawer's sweep, away from blocks and bowls.
    Straight down where a block hangs may use the whole region tasks place blocks in (OBJECT_REGION):
    a block lifted at the table's edge goes back down there, not across the table to the middle
    (the shipped policy's put-down failures were mostly such carries, never released)."""
    x, y = float(p[0]), float(p[1])
    (x0, x1), (y0, y1) = bounds
    if not (x0 <= x <= x1 and y0 <= y <= y1) or (x > 0.05 and y > -0.14):
        return False
    if any(float(np.hypot(*(p - b.pos[:2]))) < 0.09 for n, b in world.blocks.items() if n != it):
        return False
    return all(float(np.hypot(*(p - w.pos[:2]))) >= S.BOWL_RADIUS + 0.06 for w in world.bowls.values())


def _free_table_spot(world: WorldState, it: str, near: np.ndarray) -> np.ndarray:
    """The free table spot (`_is_free_table_spot`, on a 2 cm grid) nearest `near`."""
    best, best_d = None, 1e9
    (x0, x1), (y0, y1) = PUT_DOWN_REGION
    for x in np.arange(x0, x1 + 0.001, 0.02):
        for y in np.arange(y0, y1 + 0.001, 0.02):
            p = np.array([x, y])
            if not _is_free_table_spot(world, it, p):
                continue
            d = float(np.hypot(*(p - near)))
            if d < best_d:
                best, best_d = p, d
    return best if best is not None else np.array(near[:2], dtype=float)
