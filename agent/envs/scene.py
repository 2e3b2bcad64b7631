"""The bundled tabletop scene, written as MJCF by the project.

Layout (metres, world frame): the table top is the plane z = 0. The front camera sits at -y looking
towards +y, so image-left is -x ("left") and image-up is +y ("back"). A cabinet with a sliding drawer
stands at the back right; its drawer opens towards the robot (-y).

The robot is a Cartesian gantry: three slide joints and a yaw hinge carry a parallel-jaw gripper,
each driven by a stiff position servo. It is reliable (no IK, no arm self-collision) and the end
effector goes where the action says, which is what a tabletop benchmark needs.

The model is fixed for the life of an environment (so the renderers can be reused); each episode
activates a subset of the blocks and bowls, moves them onto the table and recolours them. Unused
objects are parked on the floor under the table, hidden from both cameras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from policies.grammar import COLORS as COLOR_NAMES

# --- geometry constants read by the world model, the tasks and the expert -------------------------

TABLE_HALF = (0.45, 0.40)  # table top half extents in x, y (centred at TABLE_CENTER)
TABLE_CENTER = (0.0, 0.05)
FLOOR_Z = -0.75

SMALL_HALF = 0.02  # half edge of a small cube
LARGE_HALF = 0.025
N_SMALL_BLOCKS = 4
N_LARGE_BLOCKS = 4
BLOCK_BODIES = [f"block{i}" for i in range(N_SMALL_BLOCKS + N_LARGE_BLOCKS)]
BLOCK_HALF = {name: (SMALL_HALF if i < N_SMALL_BLOCKS else LARGE_HALF) for i, name in enumerate(BLOCK_BODIES)}

N_BOWLS = 3
BOWL_BODIES = [f"bowl{i}" for i in range(N_BOWLS)]
BOWL_RADIUS = 0.075  # outer radius of the rim
BOWL_INNER_RADIUS = 0.069
BOWL_RIM_TOP = 0.03
BOWL_BASE_TOP = 0.008
N_RIM_SEGMENTS = 14

# Cabinet and drawer. The drawer body sits at DRAWER_CLOSED_POS when the slide joint reads 0 and
# moves towards -y as it opens.
CABINET_X = 0.21
DRAWER_CLOSED_Y = 0.22
DRAWER_CLOSED_POS = (CABINET_X, DRAWER_CLOSED_Y, 0.0)
DRAWER_MAX_OPENING = 0.16
DRAWER_OPEN_THRESHOLD = 0.14  # opening at which the drawer counts as open
DRAWER_CLOSED_THRESHOLD = 0.01
TRAY_INNER_HALF = (0.085, 0.075)  # inner half extents of the drawer tray (x, y)
TRAY_FLOOR_TOP = 0.013
DRAWER_FRONT_Y = -0.09  # outer face of the drawer front, in the drawer frame
HANDLE_Y = -0.14  # handle bar centre, drawer frame
HANDLE_Z = 0.05
HANDLE_HALF = (0.035, 0.006, 0.006)
CABINET_TOP_Z = 0.10

# Gripper. The end-effector point (TCP) sits 1 cm above the fingertips, centred between the jaws.
FINGER_HALF = (0.012, 0.006, 0.03)
FINGER_MAX_OPENING = 0.04  # each finger; the jaw gap is twice the joint position
EE_LIMITS = ((-0.35, 0.35), (-0.30, 0.32), (0.0, 0.40))  # reachable TCP box
YAW_LIMIT = 1.7
EE_HOME = (0.0, -0.12, 0.22)

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.15, 0.65, 0.20),
    "blue": (0.12, 0.30, 0.85),
    "yellow": (0.95, 0.82, 0.10),
    "purple": (0.55, 0.20, 0.70),
    "orange": (0.98, 0.50, 0.08),
}
if tuple(COLORS) != COLOR_NAMES:  # the scene paints the grammar's colours, no more, no fewer
    raise ImportError(f"agent.envs.scene.COLORS {tuple(COLORS)} must list policies.grammar.COLORS {COLOR_NAMES}")

# Collision groups: the drawer must touch blocks and the gripper but not the table or cabinet it
# slides in (the slide joint already constrains it).
_STATIC = 'contype="1" conaffinity="1"'
_DRAWER = 'contype="2" conaffinity="2"'
_MOVING = 'contype="3" conaffinity="3"'


# How the room looks, nothing else (physics, cameras and objects are the same in every room): the table's
# colour and the light. "training" is the room every model was trained in; "dim" is a room none was, for
# measuring what people's corrections teach a robot somewhere new (benchmarks/facts_round.py --room).
ROOMS: dict[str, dict[str, str]] = {
    "training": {"table": "0.82 0.76 0.66 1", "ambient": "0.45 0.45 0.45", "diffuse": "0.45 0.45 0.45",
                 "sun": "0.5 0.5 0.5"},
    "dim": {"table": "0.52 0.58 0.64 1", "ambient": "0.32 0.32 0.36", "diffuse": "0.34 0.34 0.38",
            "sun": "0.38 0.38 0.42"},
}


@dataclass(frozen=True)
class SceneConfig:
    timestep: float = 0.002
    control_hz: float = 10.0
    room: str = "training"  # a key of ROOMS

    def __post_init__(self) -> None:
        if self.room not in ROOMS:
            raise ValueError(f"room {self.room!r} is not one of {', '.join(ROOMS)}")

    @property
    def substeps(self) -> int:
        return int(round(1.0 / (self.control_hz * self.timestep)))


def parked_position(index: int, half: float) -> tuple[float, float, float]:
    """Where an unused object waits: on the floor under the table, out of sight of both cameras."""
    return (-0.35 + 0.1 * index, 0.25, FLOOR_Z + half + 0.001)


def _fmt(*values: float) -> str:
    return " ".join(f"{v:.5g}" for v in values)


def _camera_axes(pos, target) -> str:
    """xyaxes for a camera at `pos` looking at `target` with world +z as up."""
    fx, fy, fz = (t - p for t, p in zip(target, pos))
    norm = math.sqrt(fx * fx + fy * fy + fz * fz)
    fx, fy, fz = fx / norm, fy / norm, fz / norm
    # right = forward x up(0,0,1); up' = right x forward
    rx, ry, rz = fy, -fx, 0.0
    rn = math.sqrt(rx * rx + ry * ry)
    rx, ry = rx / rn, ry / rn
    ux, uy, uz = ry * fz - rz * fy, rz * fx - rx * fz, rx * fy - ry * fx
    return _fmt(rx, ry, rz, ux, uy, uz)


def _block_xml(name: str, index: int, half: float) -> str:
    px, py, pz = parked_position(index, half)
    return f"""
    <body name="{name}" pos="{_fmt(px, py, pz)}">
      <freejoint name="{name}_joint"/>
      <geom name="{name}_geom" type="box" size="{_fmt(half, half, half)}" density="500"
            friction="1.0 0.01 0.001" rgba="0.5 0.5 0.5 1" {_MOVING}/>
    </body>"""


def _bowl_xml(name: str, index: int) -> str:
    px, py, _ = parked_position(index + 10, 0.0)
    rim = []
    seg_half = math.pi * BOWL_RADIUS / N_RIM_SEGMENTS + 0.002
    rim_half_thick = (BOWL_RADIUS - BOWL_INNER_RADIUS) / 2
    rim_r = BOWL_INNER_RADIUS + rim_half_thick
    rim_half_h = (BOWL_RIM_TOP - BOWL_BASE_TOP) / 2
    for k in range(N_RIM_SEGMENTS):
        a = 2 * math.pi * k / N_RIM_SEGMENTS
        rim.append(
            f'<geom name="{name}_rim{k}" type="box" size="{_fmt(rim_half_thick, seg_half, rim_half_h)}" '
            f'pos="{_fmt(rim_r * math.cos(a), rim_r * math.sin(a), BOWL_BASE_TOP + rim_half_h)}" '
            f'euler="0 0 {a:.5f}" rgba="0.5 0.5 0.5 1" {_STATIC}/>'
        )
    return f"""
    <body name="{name}" pos="{_fmt(px, py, FLOOR_Z)}">
      <geom name="{name}_base" type="cylinder" size="{_fmt(BOWL_RADIUS, BOWL_BASE_TOP / 2)}"
            pos="0 0 {BOWL_BASE_TOP / 2:.5g}" rgba="0.9 0.9 0.9 1" {_STATIC}/>
      {"".join(rim)}
    </body>"""


def _cabinet_xml() -> str:
    x, y0 = CABINET_X, DRAWER_CLOSED_Y + DRAWER_FRONT_Y  # cabinet front plane
    depth = 0.19
    yc = y0 + depth / 2 + 0.004
    half_w = 0.11
    wood = 'rgba="0.55 0.38 0.22 1"'
    return f"""
    <body name="cabinet" pos="{_fmt(x, yc, 0)}">
      <geom name="cabinet_top" type="box" size="{_fmt(half_w, depth / 2, 0.005)}" pos="0 0 {CABINET_TOP_Z - 0.005:.4g}" {wood} {_STATIC}/>
      <geom name="cabinet_left" type="box" size="{_fmt(0.005, depth / 2, CABINET_TOP_Z / 2)}" pos="{-half_w + 0.005:.4g} 0 {CABINET_TOP_Z / 2:.4g}" {wood} {_STATIC}/>
      <geom name="cabinet_right" type="box" size="{_fmt(0.005, depth / 2, CABINET_TOP_Z / 2)}" pos="{half_w - 0.005:.4g} 0 {CABINET_TOP_Z / 2:.4g}" {wood} {_STATIC}/>
      <geom name="cabinet_back" type="box" size="{_fmt(half_w, 0.005, CABINET_TOP_Z / 2)}" pos="0 {depth / 2 - 0.005:.4g} {CABINET_TOP_Z / 2:.4g}" {wood} {_STATIC}/>
    </body>"""


def _drawer_xml() -> str:
    ix, iy = TRAY_INNER_HALF
    wall = 0.005
    floor_half_z = 0.005
    floor_z = TRAY_FLOOR_TOP - floor_half_z
    side_h = 0.025
    front_h = 0.04
    c = 'rgba="0.75 0.55 0.33 1"'
    hx, hy, hz = HANDLE_HALF
    post_len = (DRAWER_FRONT_Y - (HANDLE_Y + hy)) / 2
    post_y = HANDLE_Y + hy + post_len
    return f"""
    <body name="drawer" pos="{_fmt(*DRAWER_CLOSED_POS)}">
      <joint name="drawer_slide" type="slide" axis="0 -1 0" range="0 {DRAWER_MAX_OPENING}" damping="4"
             frictionloss="0.05" armature="0.05"/>
      <geom name="drawer_floor" type="box" size="{_fmt(ix + wall, iy + wall, floor_half_z)}" pos="0 0 {floor_z:.4g}" mass="0.3" {c} {_DRAWER}/>
      <geom name="drawer_front" type="box" size="{_fmt(ix + 2 * wall + 0.004, wall, front_h)}" pos="{_fmt(0, DRAWER_FRONT_Y + wall, 0.003 + front_h)}" mass="0.1" rgba="0.62 0.42 0.25 1" {_DRAWER}/>
      <geom name="drawer_back" type="box" size="{_fmt(ix + wall, wall, side_h)}" pos="{_fmt(0, iy + wall, 0.003 + side_h)}" mass="0.05" {c} {_DRAWER}/>
      <geom name="drawer_left" type="box" size="{_fmt(wall, iy, side_h)}" pos="{_fmt(-ix - wall, 0, 0.003 + side_h)}" mass="0.05" {c} {_DRAWER}/>
      <geom name="drawer_right" type="box" size="{_fmt(wall, iy, side_h)}" pos="{_fmt(ix + wall, 0, 0.003 + side_h)}" mass="0.05" {c} {_DRAWER}/>
      <geom name="drawer_handle" type="box" size="{_fmt(hx, hy, hz)}" pos="{_fmt(0, HANDLE_Y, HANDLE_Z)}" mass="0.02" rgba="0.2 0.2 0.22 1" {_DRAWER}/>
      <geom name="drawer_post_l" type="box" size="{_fmt(0.005, post_len, 0.005)}" pos="{_fmt(-hx + 0.005, post_y, HANDLE_Z)}" mass="0.01" rgba="0.2 0.2 0.22 1" {_DRAWER}/>
      <geom name="drawer_post_r" type="box" size="{_fmt(0.005, post_len, 0.005)}" pos="{_fmt(hx - 0.005, post_y, HANDLE_Z)}" mass="0.01" rgba="0.2 0.2 0.22 1" {_DRAWER}/>
    </body>"""


def _gripper_xml() -> str:
    fx, fy, fz = FINGER_HALF
    finger_zc = -0.01 + fz  # fingertips 1 cm below the TCP
    palm_half = (0.018, 0.058, 0.012)
    palm_z = finger_zc + fz + palm_half[2]
    grey = 'rgba="0.3 0.3 0.32 1"'
    wrist_pos = (0.045, 0.0, palm_z + 0.01)
    wrist_axes = _camera_axes(wrist_pos, (0.0, 0.0, -0.05))
    (x0, x1), (y0, y1), (z0, z1) = EE_LIMITS
    return f"""
    <body name="gantry_x" pos="0 0 0">
      <joint name="ee_x" type="slide" axis="1 0 0" range="{_fmt(x0, x1)}" damping="5" armature="0.2"/>
      <geom type="sphere" size="0.001" mass="0.5" contype="0" conaffinity="0" rgba="0 0 0 0"/>
      <body name="gantry_y" pos="0 0 0">
        <joint name="ee_y" type="slide" axis="0 1 0" range="{_fmt(y0, y1)}" damping="5" armature="0.2"/>
        <geom type="sphere" size="0.001" mass="0.5" contype="0" conaffinity="0" rgba="0 0 0 0"/>
        <body name="gantry_z" pos="0 0 0" gravcomp="1">
          <joint name="ee_z" type="slide" axis="0 0 1" range="{_fmt(z0, z1)}" damping="5" armature="0.2"/>
          <geom type="sphere" size="0.001" mass="0.5" contype="0" conaffinity="0" rgba="0 0 0 0"/>
          <body name="ee" pos="0 0 0" gravcomp="1">
            <joint name="ee_yaw" type="hinge" axis="0 0 1" range="{_fmt(-YAW_LIMIT, YAW_LIMIT)}" damping="0.5" armature="0.01"/>
            <site name="tcp" pos="0 0 0" size="0.004" rgba="1 0 0 0"/>
            <geom name="palm" type="box" size="{_fmt(*palm_half)}" pos="0 0 {palm_z:.4g}" mass="0.3" {grey} {_MOVING}/>
            <geom name="wrist_link" type="cylinder" size="0.018 0.03" pos="0 0 {palm_z + palm_half[2] + 0.03:.4g}" mass="0.05" rgba="0.8 0.8 0.82 1" contype="0" conaffinity="0"/>
            <geom name="arm_link" type="cylinder" size="0.012 0.35" pos="0 0 {palm_z + 0.41:.4g}" mass="0.01" rgba="0.8 0.8 0.82 1" contype="0" conaffinity="0"/>
            <camera name="wrist" pos="{_fmt(*wrist_pos)}" xyaxes="{wrist_axes}" fovy="75"/>
            <body name="finger_left" pos="0 0 0" gravcomp="1">
              <joint name="finger_left" type="slide" axis="0 1 0" range="0 {FINGER_MAX_OPENING}" damping="2" armature="0.01"/>
              <geom name="finger_left_geom" type="box" size="{_fmt(fx, fy, fz)}" pos="{_fmt(0, fy, finger_zc)}" mass="0.03"
                    friction="1.5 0.02 0.001" condim="4" rgba="0.15 0.15 0.17 1" {_MOVING}/>
            </body>
            <body name="finger_right" pos="0 0 0" gravcomp="1">
              <joint name="finger_right" type="slide" axis="0 -1 0" range="0 {FINGER_MAX_OPENING}" damping="2" armature="0.01"/>
              <geom name="finger_right_geom" type="box" size="{_fmt(fx, fy, fz)}" pos="{_fmt(0, -fy, finger_zc)}" mass="0.03"
                    friction="1.5 0.02 0.001" condim="4" rgba="0.15 0.15 0.17 1" {_MOVING}/>
            </body>
          </body>
        </body>
      </body>
    </body>
    """


def build_mjcf(config: SceneConfig | None = None) -> str:
    """The whole scene as an MJCF string."""
    config = config or SceneConfig()
    front_pos = (0.0, -0.62, 0.52)
    front_axes = _camera_axes(front_pos, (0.0, 0.02, -0.03))
    gripper = _gripper_xml()
    blocks = "".join(_block_xml(name, i, BLOCK_HALF[name]) for i, name in enumerate(BLOCK_BODIES))
    bowls = "".join(_bowl_xml(name, i) for i, name in enumerate(BOWL_BODIES))
    tx, ty = TABLE_CENTER
    thx, thy = TABLE_HALF
    servo = 'kp="4000" kv="160" forcerange="-80 80"'
    room = ROOMS[config.room]
    return f"""
<mujoco model="hivla_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{config.timestep}" integrator="implicitfast" cone="elliptic" impratio="10">
    <flag warmstart="enable"/>
  </option>
  <visual>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="{room['ambient']}" diffuse="{room['diffuse']}" specular="0 0 0"/>
    <global offwidth="640" offheight="640"/>
  </visual>
  <default>
    <geom solref="0.004 1" solimp="0.95 0.99 0.001"/>
  </default>
  <worldbody>
    <light name="sun" directional="true" pos="0 -0.5 2" dir="0.1 0.3 -1" castshadow="false" diffuse="{room['sun']}" specular="0 0 0"/>
    <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 {FLOOR_Z}" rgba="0.35 0.37 0.40 1" {_STATIC}/>
    <geom name="table" type="box" size="{_fmt(thx, thy, 0.02)}" pos="{_fmt(tx, ty, -0.02)}" rgba="{room['table']}" {_STATIC}/>
    <geom name="table_skirt" type="box" size="{_fmt(thx, thy, 0.36)}" pos="{_fmt(tx, ty, -0.40)}" rgba="0.55 0.45 0.35 1" contype="0" conaffinity="0"/>
    <camera name="front" pos="{_fmt(*front_pos)}" xyaxes="{front_axes}" fovy="48"/>
    {_cabinet_xml()}
    {_drawer_xml()}
    {gripper}
    {blocks}
    {bowls}
  </worldbody>
  <actuator>
    <position name="act_x" joint="ee_x" {servo}/>
    <position name="act_y" joint="ee_y" {servo}/>
    <position name="act_z" joint="ee_z" {servo}/>
    <position name="act_yaw" joint="ee_yaw" kp="40" kv="2" forcerange="-5 5"/>
    <position name="act_finger_left" joint="finger_left" kp="300" kv="4" ctrlrange="0 {FINGER_MAX_OPENING}" forcerange="-12 12"/>
    <position name="act_finger_right" joint="finger_right" kp="300" kv="4" ctrlrange="0 {FINGER_MAX_OPENING}" forcerange="-12 12"/>
  </actuator>
</mujoco>
"""
