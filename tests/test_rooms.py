"""Rooms (agent/envs/scene.py ROOMS): how the room looks changes, nothing else does."""

from __future__ import annotations

import numpy as np
import pytest

from agent.envs.scene import SceneConfig
from agent.envs.scene_facts import scene_facts
from agent.envs.tabletop import make_env


def test_a_room_changes_what_the_cameras_see_and_nothing_the_simulator_knows():
    seen, facts, states = {}, {}, {}
    for room in ("training", "dim"):
        env = make_env(suite="base", image_size=32, seed=3, scene_config=SceneConfig(room=room))
        obs, _ = env.reset(seed=3)
        for _ in range(5):
            obs, _, _, _, info = env.step(np.zeros(env.action_space.shape, np.float32))
        seen[room], facts[room], states[room] = obs["images"]["front"], scene_facts(info["privileged"]), obs["state"]
    assert facts["training"] == facts["dim"]
    assert np.array_equal(states["training"], states["dim"])
    assert np.abs(seen["training"].astype(int) - seen["dim"].astype(int)).mean() > 5


def test_an_unknown_room_is_refused_by_name():
    with pytest.raises(ValueError, match="training, dim"):
        SceneConfig(room="kitchen")
