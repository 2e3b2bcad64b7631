"""Nudges: a motion said in words ("a bit left", "lower", "open the gripper") -> an action offset.

The loop applies the returned float32[5] action for NUDGE_BURST_STEPS control steps, then resumes
the low level from wherever the arm ended up.

Action units (agent.envs.tabletop): [dx, dy, dz, dyaw, grip], metres and radians per 10 Hz step,
clipped to MAX_TRANSLATION = 0.02 m and MAX_ROTATION = 0.2 rad; grip > 0 closes the jaws and
anything else opens them (there is no "keep" value).

Frame convention: what the person sees in the FRONT camera, which sits at -y looking towards +y
(agent.envs.scene). World axes, as the env names them:

    left  = -x      right = +x                  (image left / right)
    back  = +y      ("back", "away", "further", "to the back": the far side of the table)
    forward = -y    ("forward", "closer", "towards me", "to the front": the camera side)
    up    = +z      ("up", "higher", "raise")   down = -z ("down", "lower")
    clockwise = -yaw, seen from above           counterclockwise / "turn left" = +yaw

Size words scale the motion: "a bit"/"slightly"/"a touch" -> SMALL, plain -> NORMAL,
"more"/"a lot"/"much" -> LARGE (total displacement over the burst, see NUDGE_TOTAL_M).
Several directions add up ("left and down a bit").
"""

from __future__ import annotations

import re

import numpy as np

from policies.types import Correction

NUDGE_BURST_STEPS = 4  # control steps a nudge lasts (0.4 s at 10 Hz)
# total motion over the burst, metres (translation) and radians (rotation), per size word
NUDGE_TOTAL_M = {"small": 0.02, "normal": 0.04, "large": 0.08}
NUDGE_TOTAL_RAD = {"small": 0.2, "normal": 0.4, "large": 0.8}
MAX_TRANSLATION = 0.02  # mirrors agent.envs.tabletop.MAX_TRANSLATION (per step)
MAX_ROTATION = 0.2

GRIP_OPEN, GRIP_CLOSE = -1.0, 1.0

# word -> unit vector in (x, y, z)
_DIRECTIONS: dict[str, tuple[float, float, float]] = {
    "left": (-1, 0, 0), "right": (1, 0, 0),
    "back": (0, 1, 0), "backward": (0, 1, 0), "backwards": (0, 1, 0), "away": (0, 1, 0),
    "forward": (0, -1, 0), "forwards": (0, -1, 0), "front": (0, -1, 0), "closer": (0, -1, 0), "nearer": (0, -1, 0),
    "up": (0, 0, 1), "upward": (0, 0, 1), "upwards": (0, 0, 1), "higher": (0, 0, 1), "raise": (0, 0, 1),
    "ascend": (0, 0, 1),
    "down": (0, 0, -1), "downward": (0, 0, -1), "downwards": (0, 0, -1), "lower": (0, 0, -1), "descend": (0, 0, -1),
}
_FAR_WORDS = ("further", "farther")  # a direction only when no other direction is given ("further left")
_SMALL = re.compile(r"\b(a (little )?bit|bit|a little|little|slightly|slight|a touch|a tad|tad|a smidge|smidge|tiny|"
                    r"just a hair|a hair|a few (mm|millimetres|millimeters|cm|centimetres|centimeters)|gently)\b")
_LARGE = re.compile(r"\b(a lot|lots|much|way|far|more|a good bit|quite a bit|significantly|a lot more)\b")
_CW = re.compile(r"\b(clockwise|cw|turn right|rotate right|twist right|to the right)\b")
_CCW = re.compile(r"\b(counterclockwise|anticlockwise|counter clockwise|ccw|turn left|rotate left|twist left|to the left)\b")
_ROTATE = re.compile(r"\b(rotate|rotating|turn|twist|spin|yaw)\b")
_OPEN = re.compile(r"\b(open|release|let go|let it go|loosen|looser|wider|drop it|ungrip)\b")
_CLOSE = re.compile(r"\b(close|grip|grab it|squeeze|tighten|tighter|clamp|grasp)\b")
_TOWARDS_ME = re.compile(r"\b(towards?|to) (me|you|the camera|the front|us)\b")
_TOWARDS_BACK = re.compile(r"\b(towards?|to) the back\b")


def nudge_size(text: str) -> str:
    """'small' | 'normal' | 'large' from the size words in `text`."""
    lowered = text.lower()
    if re.search(r"\b(a lot|much|way|far|a good bit|quite a bit|significantly)\b", lowered):
        return "large"
    if _SMALL.search(lowered):
        return "small"
    if _LARGE.search(lowered):
        return "large"
    return "normal"


def nudge_direction(text: str) -> np.ndarray:
    """Unit-ish direction float[3] in world axes (sum of the directions named), zeros if none."""
    lowered = " " + text.lower().replace("-", " ") + " "
    lowered = re.sub(r"\b(pick|lift|open|stack) (it |them )?up\b", " ", lowered)
    lowered = re.sub(r"\b(right (now|there|away|here)|all right|that's right)\b", " ", lowered)
    if _ROTATE.search(lowered):  # "turn left" is a rotation, not a translation
        lowered = re.sub(r"\b(turn|rotate|twist|spin) (to the )?(left|right)\b", " ", lowered)
    vec = np.zeros(3)
    lowered = _TOWARDS_ME.sub(" forward ", lowered)
    lowered = _TOWARDS_BACK.sub(" back ", lowered)
    words = re.findall(r"[a-z]+", lowered)
    for w in words:
        if w in _DIRECTIONS:
            vec += np.asarray(_DIRECTIONS[w], dtype=np.float64)
    if not vec.any() and any(w in _FAR_WORDS for w in words):
        vec += np.asarray(_DIRECTIONS["away"], dtype=np.float64)
    norm = np.linalg.norm(vec)
    return vec / norm if norm > 0 else vec


def nudge_rotation(text: str) -> float:
    """+1 counterclockwise, -1 clockwise (seen from above), 0 none."""
    lowered = text.lower().replace("-", " ")
    if _CCW.search(lowered) and (_ROTATE.search(lowered) or re.search(r"clockwise|ccw", lowered)):
        return 1.0
    if _CW.search(lowered) and (_ROTATE.search(lowered) or re.search(r"clockwise|\bcw\b", lowered)):
        return -1.0
    if _ROTATE.search(lowered):
        return 1.0  # "rotate a bit": counterclockwise by convention
    return 0.0


def nudge_grip(text: str) -> float:
    """GRIP_OPEN / GRIP_CLOSE if the nudge is about the gripper, else 0 (no change asked)."""
    lowered = text.lower()
    if re.search(r"\b(close|shut) the drawer\b|\bopen the drawer\b", lowered):
        return 0.0
    if _OPEN.search(lowered):
        return GRIP_OPEN
    if _CLOSE.search(lowered):
        return GRIP_CLOSE
    return 0.0


def nudge_to_action_offset(correction: Correction | str, grip_closed: bool | None = None) -> np.ndarray:
    """The float32[5] action to apply for NUDGE_BURST_STEPS steps for a nudge correction.

    Translation and yaw are per-step deltas. The grip channel: GRIP_OPEN/GRIP_CLOSE when the nudge
    is about the gripper. Otherwise, since this env has no "keep" grip value (anything <= 0 opens),
    pass `grip_closed` (the robot's current grip, STATE index 6) and the offset keeps it; without
    it the grip channel is 0 and the caller must fill it, or a held block would be dropped.
    Text naming no motion gives a zero motion (and the grip rule above).
    """
    text = correction if isinstance(correction, str) else correction.text
    text = text or ""
    size = nudge_size(text)
    offset = np.zeros(5, dtype=np.float32)
    rotation = nudge_rotation(text)
    direction = nudge_direction(text)
    step_m = min(NUDGE_TOTAL_M[size] / NUDGE_BURST_STEPS, MAX_TRANSLATION)
    offset[:3] = direction * step_m
    if rotation:
        offset[3] = rotation * min(NUDGE_TOTAL_RAD[size] / NUDGE_BURST_STEPS, MAX_ROTATION)
    grip = nudge_grip(text)
    if grip:
        offset[4] = grip
    elif grip_closed is not None:
        offset[4] = GRIP_CLOSE if grip_closed else GRIP_OPEN
    return offset


def describe_direction(delta_xyz: np.ndarray, size: str = "normal") -> str:
    """Words for a world-frame displacement, in this module's convention (used by the scripted coach).

    Names the dominant axis only: [-0.03, 0.005, 0] -> 'left'.
    """
    delta = np.asarray(delta_xyz, dtype=np.float64)
    axis = int(np.argmax(np.abs(delta)))
    sign = delta[axis] >= 0
    return [("left", "right"), ("forward", "back"), ("down", "up")][axis][int(sign)]
