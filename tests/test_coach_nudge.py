"""Nudges: motion words -> an end-effector action offset in the env's units and frame."""

from __future__ import annotations

import numpy as np
import pytest

from agent.coaching.classify import classify
from agent.coaching.nudge import (
    GRIP_CLOSE,
    GRIP_OPEN,
    MAX_ROTATION,
    MAX_TRANSLATION,
    NUDGE_BURST_STEPS,
    NUDGE_TOTAL_M,
    describe_direction,
    nudge_to_action_offset,
)
from policies.types import CorrectionKind


@pytest.mark.parametrize("text,axis,sign", [
    ("a bit left", 0, -1), ("more to the right", 0, 1), ("move forward a little", 1, -1), ("towards me", 1, -1),
    ("a bit back", 1, 1), ("further away", 1, 1), ("higher", 2, 1), ("raise it", 2, 1), ("lower", 2, -1),
    ("go down a little", 2, -1), ("rotate clockwise", 3, -1), ("turn it anticlockwise", 3, 1),
    ("twist counter-clockwise", 3, 1), ("turn left", 3, 1), ("open the gripper", 4, -1), ("let go", 4, -1),
    ("close the gripper", 4, 1), ("squeeze", 4, 1),
])
def test_each_motion_word_moves_one_axis_the_right_way(text, axis, sign):
    correction = classify(text)
    assert correction.kind is CorrectionKind.NUDGE
    offset = nudge_to_action_offset(correction)
    assert offset.shape == (5,) and offset.dtype == np.float32
    assert [i for i in range(5) if offset[i] != 0] == [axis]
    assert np.sign(offset[axis]) == sign


def test_size_words_scale_the_motion_within_the_action_limits():
    small = nudge_to_action_offset("a bit left")[0]
    normal = nudge_to_action_offset("left")[0]
    large = nudge_to_action_offset("a lot more to the left")[0]
    assert abs(small) < abs(normal) < abs(large) <= MAX_TRANSLATION
    assert abs(normal) * NUDGE_BURST_STEPS == pytest.approx(NUDGE_TOTAL_M["normal"])
    assert abs(nudge_to_action_offset("rotate a lot clockwise")[3]) <= MAX_ROTATION


def test_directions_add_up():
    offset = nudge_to_action_offset("left and down a bit")
    assert offset[0] < 0 and offset[2] < 0 and offset[0] == pytest.approx(offset[2])


def test_grip_channel_keeps_the_current_grip_unless_the_nudge_is_about_the_gripper():
    # in this env grip <= 0 opens the jaws, so a motion nudge must repeat the current grip
    assert nudge_to_action_offset("a bit left")[4] == 0.0
    assert nudge_to_action_offset("a bit left", grip_closed=True)[4] == GRIP_CLOSE
    assert nudge_to_action_offset("a bit left", grip_closed=False)[4] == GRIP_OPEN
    assert nudge_to_action_offset("open the gripper", grip_closed=True)[4] == GRIP_OPEN


def test_text_without_a_motion_is_a_zero_motion():
    assert not nudge_to_action_offset("hmm").any()
    assert not nudge_to_action_offset("").any()


def test_describe_direction_inverts_the_mapping():
    for delta in ([-0.05, 0.01, 0], [0.05, 0, 0], [0, -0.05, 0], [0, 0.05, 0], [0, 0, 0.05], [0.01, 0, -0.05]):
        word = describe_direction(np.array(delta))
        offset = nudge_to_action_offset(word)
        axis = int(np.argmax(np.abs(delta)))
        assert np.sign(offset[axis]) == np.sign(delta[axis]), word
