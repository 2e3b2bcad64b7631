"""TabletopEnv: the gymnasium environment around the bundled scene.

Action float32[5] = [dx, dy, dz, dyaw, grip] at 10 Hz: end-effector deltas in metres and radians per
step, clipped per axis to MAX_TRANSLATION / MAX_ROTATION; grip in [-1, 1], > 0 closes the jaws.
The deltas move a commanded TCP pose that stiff servos follow (as an operational-space controller
would), so a zero action holds the gripper still.

State float32[8], see STATE_NAMES. info keys: see `TabletopEnv.step`.
"""

from __future__ import annotations

import math
import string

from agent.envs.render import choose_gl_backend, make_renderer  # imports no GL

choose_gl_backend()

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from agent.envs import scene as S  # noqa: E402
from policies.grammar import PLACE_KINDS  # noqa: E402
from agent.envs.tasks import FAMILIES, TaskInstance, get_family, get_suite, parse_task  # noqa: E402
from agent.envs.world import (  # noqa: E402
    BlockState,
    BowlState,
    DrawerState,
    GripperState,
    WorldState,
    block_yaw_and_upright,
)

ACTION_NAMES = ("dx", "dy", "dz", "dyaw", "grip")
STATE_NAMES = ("ee_x", "ee_y", "ee_z", "ee_yaw_sin", "ee_yaw_cos", "gripper_width", "grip_closed", "ee_speed")
CAMERAS = ("front", "wrist")
MAX_TRANSLATION = 0.02  # metres per control step, per axis
MAX_ROTATION = 0.2  # radians per control step
ACTION_LOW = np.array([-MAX_TRANSLATION] * 3 + [-MAX_ROTATION, -1.0], dtype=np.float32)
ACTION_HIGH = -ACTION_LOW
_INTERPOLATION_SEGMENTS = 5  # servo targets move in this many ramps per control step (smooth motion)
# The jaw gap (both fingers' travel) below which two jaws touching one block are pushing it, not
# gripping it: half the smallest block's width (a gripped small block holds them 4 cm apart).
MIN_GRIP_GAP = S.SMALL_HALF
_SETTLE_STEPS = 60  # physics steps after a reset so blocks come to rest


class TabletopEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        family: str | None = None,
        suite: str = "base",
        image_size: int = 128,
        seed: int | None = None,
        render_images: bool = True,
        scene_config: S.SceneConfig | None = None,
    ):
        super().__init__()
        self.suite = suite
        self.families = list(get_suite(suite))
        if family is not None:
            get_family(family)  # clear error for an unknown name
        self.family = family
        if not isinstance(image_size, int) or isinstance(image_size, bool) or not 16 <= image_size <= 1024:
            raise ValueError(f"image_size must be an int in [16, 1024], got {image_size!r}")
        self.image_size = image_size
        self.render_images = render_images
        self.config = scene_config or S.SceneConfig()
        self.model = mujoco.MjModel.from_xml_string(S.build_mjcf(self.config))
        self.data = mujoco.MjData(self.model)
        self._renderer: mujoco.Renderer | None = None
        self._ids()
        self._scene_flags_off()

        self.action_space = gym.spaces.Box(ACTION_LOW, ACTION_HIGH, dtype=np.float32)
        img = gym.spaces.Box(0, 255, (image_size, image_size, 3), dtype=np.uint8)
        self.observation_space = gym.spaces.Dict(
            {
                "images": gym.spaces.Dict({c: img for c in CAMERAS}),
                "state": gym.spaces.Box(-np.inf, np.inf, (len(STATE_NAMES),), dtype=np.float32),
                "task": gym.spaces.Text(max_length=512, min_length=0, charset=string.printable),
            }
        )
        self._seed_rng = np.random.default_rng(_check_seed(seed) if seed is not None else None)
        self.task: TaskInstance | None = None
        self.task_text = ""
        self._target_pos = np.array(S.EE_HOME, dtype=np.float64)
        self._target_yaw = 0.0
        self._grip_closed = False
        self._steps = 0
        self._world: WorldState | None = None
        self._last_held: str | None = None  # "it" for place-type subtasks
        self._prev_held: str | None = None

    # --- set-up ---------------------------------------------------------------------------------
    def _ids(self) -> None:
        m = self.model
        name2id = lambda kind, n: mujoco.mj_name2id(m, kind, n)  # noqa: E731
        J = mujoco.mjtObj.mjOBJ_JOINT
        self._ee_qpos = [m.jnt_qposadr[name2id(J, n)] for n in ("ee_x", "ee_y", "ee_z", "ee_yaw")]
        self._ee_dof = [m.jnt_dofadr[name2id(J, n)] for n in ("ee_x", "ee_y", "ee_z", "ee_yaw")]
        self._finger_qpos = [m.jnt_qposadr[name2id(J, n)] for n in ("finger_left", "finger_right")]
        self._drawer_qpos = m.jnt_qposadr[name2id(J, "drawer_slide")]
        self._drawer_body = name2id(mujoco.mjtObj.mjOBJ_BODY, "drawer")
        self._block_qpos = {b: m.jnt_qposadr[name2id(J, f"{b}_joint")] for b in S.BLOCK_BODIES}
        self._block_body = {b: name2id(mujoco.mjtObj.mjOBJ_BODY, b) for b in S.BLOCK_BODIES}
        G = mujoco.mjtObj.mjOBJ_GEOM
        self._block_geom = {b: name2id(G, f"{b}_geom") for b in S.BLOCK_BODIES}
        self._geom_to_block = {g: b for b, g in self._block_geom.items()}
        self._finger_geoms = (name2id(G, "finger_left_geom"), name2id(G, "finger_right_geom"))
        self._gripper_geoms = {name2id(G, "palm"), *self._finger_geoms}
        self._bowl_body = {b: name2id(mujoco.mjtObj.mjOBJ_BODY, b) for b in S.BOWL_BODIES}
        self._bowl_geoms = {
            b: [g for g in range(m.ngeom) if m.geom_bodyid[g] == self._bowl_body[b]] for b in S.BOWL_BODIES
        }
        self._tcp_site = name2id(mujoco.mjtObj.mjOBJ_SITE, "tcp")
        self._handle_geom = name2id(G, "drawer_handle")
        self._tray_geom = name2id(G, "drawer_floor")

    def _scene_flags_off(self) -> None:
        self._scene_option = mujoco.MjvOption()

    def _get_renderer(self) -> mujoco.Renderer:
        if self._renderer is None:
            self._renderer = make_renderer(self.model, self.image_size, owner=self)
        return self._renderer

    # --- gymnasium API --------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._seed_rng = np.random.default_rng(_check_seed(seed))
        super().reset(seed=None)
        rng = np.random.default_rng(self._seed_rng.integers(2**63))
        options = dict(options or {})
        unknown = set(options) - {"family", "task"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; valid: 'family', 'task'")
        if "task" in options and options["task"] is not None:
            family_name, params = parse_task(options["task"])
            task = get_family(family_name).sample(rng, params)
            task.text = options["task"].strip()
        else:
            family_name = options.get("family") or self.family
            if family_name is None:
                family_name = self.families[int(rng.integers(len(self.families)))]
            task = get_family(family_name).sample(rng, None)
        self.task = task
        self.task_text = task.text
        self._apply_layout(task)
        self._steps = 0
        self._prev_held = None
        self._world = self._world_state()
        self._last_held = self._world.held
        obs = self._obs()
        return obs, self._info()

    def step(self, action):
        if self.task is None:
            raise RuntimeError("call reset() before step()")
        action = _check_action(action)
        delta = np.clip(action, ACTION_LOW, ACTION_HIGH).astype(np.float64)
        tcp = self.data.site_xpos[self._tcp_site]
        # a target far ahead of a blocked gripper would wind up; keep it within reach
        lag = np.clip(self._target_pos - tcp, -0.03, 0.03)
        start = self._target_pos.copy()
        new = tcp + lag + delta[:3]
        for i, (lo, hi) in enumerate(S.EE_LIMITS):
            new[i] = min(max(new[i], lo), hi)
        yaw_start = self._target_yaw
        yaw_new = float(np.clip(self._target_yaw + delta[3], -S.YAW_LIMIT, S.YAW_LIMIT))
        self._grip_closed = bool(delta[4] > 0)
        finger = 0.0 if self._grip_closed else S.FINGER_MAX_OPENING
        d = self.data
        d.ctrl[4] = d.ctrl[5] = finger
        per_segment = max(1, self.config.substeps // _INTERPOLATION_SEGMENTS)
        for k in range(1, _INTERPOLATION_SEGMENTS + 1):
            a = k / _INTERPOLATION_SEGMENTS
            d.ctrl[:3] = start + a * (new - start)
            d.ctrl[3] = yaw_start + a * (yaw_new - yaw_start)
            mujoco.mj_step(self.model, d, nstep=per_segment)
        self._target_pos = new
        self._target_yaw = yaw_new
        self._steps += 1
        self._world = self._world_state()
        if self._world.held is not None:
            self._last_held = self._world.held
        info = self._info()
        terminated = bool(info["task_success"])
        truncated = bool(not terminated and self._steps >= self.task.max_steps)
        return self._obs(), float(terminated), terminated, truncated, info

    def subtask_done(self, subtask: str, info: dict | None = None) -> bool | None:
        """Whether `subtask` (canonical text) has been achieved in the current world; None if the
        text does not parse. "it" in a place-type subtask is the block held most recently."""
        from agent.envs.primitives import is_satisfied
        from policies.grammar import SubtaskParseError, parse_subtask

        try:
            sub = parse_subtask(subtask)
        except SubtaskParseError:
            return None
        world = self._world if info is None else info["privileged"]
        try:
            if sub.kind in PLACE_KINDS:
                if self._last_held is None:
                    return False
                return is_satisfied(world, sub, it=self._last_held)
            return is_satisfied(world, sub)
        except KeyError:  # names a block or bowl that is not in this scene
            return False

    # --- scene editing (tests, scripted scenarios) -----------------------------------------------
    def place_block(self, name: str, pos, yaw: float = 0.0, settle_steps: int = 100) -> tuple[dict, dict]:
        """Teleport the block called `name` (display name) to `pos` and let physics settle.
        Returns a fresh (obs, info)."""
        body = next((b for b, spec in self._names.items() if spec.name == name), None)
        if body is None:
            raise KeyError(f"no block {name!r} in this episode; blocks: {sorted(s.name for s in self._names.values())}")
        adr = self._block_qpos[body]
        self.data.qpos[adr : adr + 3] = pos
        self.data.qpos[adr + 3 : adr + 7] = (math.cos(yaw / 2), 0, 0, math.sin(yaw / 2))
        dof = self.model.jnt_dofadr[mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, f"{body}_joint")]
        self.data.qvel[dof : dof + 6] = 0
        return self._settle(settle_steps)

    def set_drawer_opening(self, opening: float, settle_steps: int = 20) -> tuple[dict, dict]:
        """Set the drawer's opening (metres, 0 = closed). Returns a fresh (obs, info)."""
        if not 0.0 <= opening <= S.DRAWER_MAX_OPENING:
            raise ValueError(f"drawer opening must be in [0, {S.DRAWER_MAX_OPENING}], got {opening}")
        self.data.qpos[self._drawer_qpos] = opening
        return self._settle(settle_steps)

    def _settle(self, steps: int) -> tuple[dict, dict]:
        mujoco.mj_forward(self.model, self.data)
        if steps:
            mujoco.mj_step(self.model, self.data, nstep=steps)
        self._world = self._world_state()
        return self._obs(), self._info()

    def observation(self, obs: dict, info: dict):
        """The policies' view of an env observation (privileged state filled in)."""
        from policies.types import Observation

        return Observation(
            images=obs["images"], state=obs["state"], task=obs["task"], time=float(info["time"]),
            privileged=info["privileged"],
        )

    def render(self):
        return self._render_camera("front")

    def render_cameras(self) -> dict[str, np.ndarray]:
        """Both cameras at this instant, even when built with render_images=False: a data recorder
        that steps the physics unrendered renders only the frames a model learns from."""
        return {c: self._render_camera(c) for c in CAMERAS}

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # --- internals ------------------------------------------------------------------------------
    def _apply_layout(self, task: TaskInstance) -> None:
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        self._names = {}
        active = {spec.body: spec for spec in task.layout.blocks}
        for i, body in enumerate(S.BLOCK_BODIES):
            adr = self._block_qpos[body]
            half = S.BLOCK_HALF[body]
            spec = active.get(body)
            if spec is None:
                d.qpos[adr : adr + 3] = S.parked_position(i, half)
                d.qpos[adr + 3 : adr + 7] = (1, 0, 0, 0)
                continue
            d.qpos[adr : adr + 3] = (spec.xy[0], spec.xy[1], spec.z_base + half + 0.0005)
            d.qpos[adr + 3 : adr + 7] = (math.cos(spec.yaw / 2), 0, 0, math.sin(spec.yaw / 2))
            m.geom_rgba[self._block_geom[body]] = (*S.COLORS[spec.color], 1.0)
            self._names[body] = spec
        bowls = {spec.body: spec for spec in task.layout.bowls}
        self._bowl_specs = bowls
        for i, body in enumerate(S.BOWL_BODIES):
            spec = bowls.get(body)
            bid = self._bowl_body[body]
            if spec is None:
                m.body_pos[bid] = (*S.parked_position(i + 10, 0.0)[:2], S.FLOOR_Z)
                continue
            m.body_pos[bid] = (spec.xy[0], spec.xy[1], 0.0)
            rgb = np.array(S.COLORS[spec.color])
            for g in self._bowl_geoms[body]:
                # the base a pale tint, the rim the full colour: easy to tell apart, easy to see into
                m.geom_rgba[g] = (*(0.55 * rgb + 0.45), 1.0) if g == self._bowl_geoms[body][0] else (*rgb, 1.0)
        d.qpos[self._drawer_qpos] = task.layout.drawer_opening
        home = np.array(S.EE_HOME)
        d.qpos[self._ee_qpos[:3]] = home
        d.qpos[self._ee_qpos[3]] = 0.0
        d.qpos[self._finger_qpos] = S.FINGER_MAX_OPENING
        d.ctrl[:3] = home
        d.ctrl[3] = 0.0
        d.ctrl[4:6] = S.FINGER_MAX_OPENING
        self._target_pos = home.copy()
        self._target_yaw = 0.0
        self._grip_closed = False
        mujoco.mj_forward(m, d)
        mujoco.mj_step(m, d, nstep=_SETTLE_STEPS)
        d.time = 0.0

    def _world_state(self) -> WorldState:
        m, d = self.model, self.data
        blocks: dict[str, BlockState] = {}
        for body, spec in self._names.items():
            bid = self._block_body[body]
            pos = d.xpos[bid].copy()
            yaw, upright = block_yaw_and_upright(d.xquat[bid])
            blocks[spec.name] = BlockState(spec.name, body, spec.color, spec.size, S.BLOCK_HALF[body], pos, yaw, upright)
        bowls = {
            spec.name: BowlState(spec.name, spec.body, spec.color, np.array([spec.xy[0], spec.xy[1], 0.0]))
            for spec in self._bowl_specs.values()
        }
        opening = float(d.qpos[self._drawer_qpos])
        tray = d.geom_xpos[self._tray_geom].copy()
        tray[2] = S.TRAY_FLOOR_TOP
        drawer = DrawerState(opening, d.geom_xpos[self._handle_geom].copy(), tray)
        tcp = d.site_xpos[self._tcp_site].copy()
        fl, fr = (d.qpos[a] for a in self._finger_qpos)
        gripper = GripperState(
            pos=tcp, yaw=float(d.qpos[self._ee_qpos[3]]), width=float(fl + fr), closed=self._grip_closed,
            target_pos=self._target_pos.copy(), target_yaw=self._target_yaw,
        )
        held, supported, contacts = self._contacts()
        world = WorldState(blocks, bowls, drawer, gripper, held, supported, float(d.time), self._steps, contacts)
        world.task = self.task  # the reference decomposition, for privileged planners
        return world

    def _contacts(self) -> tuple[str | None, frozenset[str], dict[str, frozenset[str]]]:
        d = self.data
        n = d.ncon
        touching: dict[str, set[str]] = {}
        jaw_touch: dict[str, set[int]] = {}
        g1s, g2s = d.contact.geom1[:n], d.contact.geom2[:n]
        for g1, g2 in zip(g1s.tolist(), g2s.tolist()):
            for a, b in ((g1, g2), (g2, g1)):
                body = self._geom_to_block.get(a)
                if body is None or body not in self._names:
                    continue
                name = self._names[body].name
                if b in self._finger_geoms:
                    jaw_touch.setdefault(name, set()).add(b)
                elif b not in self._gripper_geoms:
                    other = self._geom_to_block.get(b)
                    label = self._names[other].name if other in self._names else mujoco.mj_id2name(
                        self.model, mujoco.mjtObj.mjOBJ_GEOM, b) or "world"
                    touching.setdefault(name, set()).add(label)
        # held: both jaws touch it *from either side*. Closed jaws pushing a block touch its face with
        # both fingertips at once; that block is pushed, not held (it was read as held, and the oracle
        # then said "put it down" at every re-plan mid-push).
        fl, fr = (d.qpos[a] for a in self._finger_qpos)
        apart = fl + fr >= MIN_GRIP_GAP
        held = next((name for name, jaws in jaw_touch.items() if len(jaws) == 2 and apart), None)
        if held is None and self._grip_closed and self._prev_held in jaw_touch:
            # one jaw slipping for a moment inside a closed grip is not a release
            held = self._prev_held
        self._prev_held = held
        contacts = {k: frozenset(v) for k, v in touching.items()}
        return held, frozenset(touching), contacts

    def _state(self) -> np.ndarray:
        w = self._world.gripper
        dof = self._ee_dof[:3]
        speed = float(np.linalg.norm(self.data.qvel[dof]))
        return np.array(
            [*w.pos, math.sin(w.yaw), math.cos(w.yaw), w.width, float(w.closed), speed], dtype=np.float32
        )

    def _render_camera(self, camera: str) -> np.ndarray:
        r = self._get_renderer()
        r.update_scene(self.data, camera=camera, scene_option=self._scene_option)
        return r.render()

    def _obs(self) -> dict:
        if self.render_images:
            images = {c: self._render_camera(c) for c in CAMERAS}
        else:
            blank = np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8)
            images = {c: blank for c in CAMERAS}
        return {"images": images, "state": self._state(), "task": self.task_text}

    def _info(self) -> dict:
        world = self._world
        done = self.task.progress(world)
        world.subtasks_done = done
        index = next((i for i, f in enumerate(done) if not f), len(done))
        return {
            "privileged": world,
            "family": self.task.family,
            "task": self.task_text,
            "subtasks": self.task.subtask_texts,
            "subtasks_done": done,
            "subtask_index": index,
            "subtasks_completed": int(sum(done)),
            "progress": float(sum(done)) / max(1, len(done)),
            "task_success": self.task.success(world),
            "time": float(self.data.time),
            "step": self._steps,
            "max_steps": self.task.max_steps,
        }


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _check_action(action) -> np.ndarray:
    a = np.asarray(action)
    if a.shape != (len(ACTION_NAMES),):
        raise ValueError(f"action must have shape (5,) = {ACTION_NAMES}, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"action must be a float array (float32), got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"action contains NaN or inf: {a.tolist()}")
    return a.astype(np.float32)


def make_env(family: str | None = None, suite: str = "base", image_size: int = 128, seed: int | None = None,
             **kwargs) -> TabletopEnv:
    """The bundled tabletop environment. `family=None` samples a family of `suite` each reset."""
    return TabletopEnv(family=family, suite=suite, image_size=image_size, seed=seed, **kwargs)


__all__ = ["TabletopEnv", "make_env", "ACTION_NAMES", "STATE_NAMES", "CAMERAS", "FAMILIES"]
