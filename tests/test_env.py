"""The gymnasium environment: API shape, determinism, input validation, truncation."""

from __future__ import annotations

import numpy as np
import pytest

from agent.envs import FAMILIES, SUITES, make_env
from agent.envs.tabletop import ACTION_NAMES, MAX_TRANSLATION, STATE_NAMES
from policies.types import Observation


@pytest.fixture(scope="module")
def env():
    e = make_env(image_size=32)
    yield e
    e.close()


def _zero():
    return np.zeros(5, dtype=np.float32)


def test_reset_returns_documented_observation_and_info(env):
    obs, info = env.reset(seed=0, options={"family": "stack_three"})
    assert set(obs) == {"images", "state", "task"}
    assert obs["images"]["front"].shape == (32, 32, 3) and obs["images"]["front"].dtype == np.uint8
    assert obs["images"]["wrist"].shape == (32, 32, 3)
    assert obs["images"]["front"].std() > 5, "the front camera should see a lit, textured scene"
    assert obs["state"].shape == (len(STATE_NAMES),) and obs["state"].dtype == np.float32
    assert len(ACTION_NAMES) == 5
    for key in ("privileged", "family", "subtasks", "subtasks_done", "subtask_index", "task_success"):
        assert key in info
    assert info["family"] == "stack_three"
    assert 2 <= len(info["subtasks"]) <= 8
    assert info["subtasks_done"] == [False] * len(info["subtasks"])
    assert info["subtask_index"] == 0 and info["task_success"] is False
    assert env.observation_space.contains(obs)


def test_same_seed_gives_identical_episode(env):
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(15, 5)).astype(np.float32) * np.array([0.02, 0.02, 0.02, 0.2, 1], np.float32)
    runs = []
    for _ in range(2):
        obs, info = env.reset(seed=123)
        frames = [obs["images"]["front"].copy()]
        states = [obs["state"].copy()]
        for a in actions:
            obs, *_ = env.step(a)
            frames.append(obs["images"]["wrist"].copy())
            states.append(obs["state"].copy())
        runs.append((info["family"], obs["task"], np.stack(frames), np.stack(states)))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    np.testing.assert_array_equal(runs[0][2], runs[1][2])
    np.testing.assert_array_equal(runs[0][3], runs[1][3])


def test_different_seeds_give_different_scenes(env):
    tasks = set()
    positions = []
    for seed in range(4):
        obs, info = env.reset(seed=seed, options={"family": "sort_into_bowls"})
        positions.append(sorted(tuple(np.round(b.pos, 3)) for b in info["privileged"].blocks.values()))
        tasks.add(obs["task"])
    assert len({tuple(p) for p in positions}) == 4


def test_action_moves_end_effector_by_the_commanded_delta(env):
    obs, _ = env.reset(seed=1, options={"family": "push_to_side"})
    start = obs["state"][:3].copy()
    for _ in range(3):
        obs, *_ = env.step(np.array([MAX_TRANSLATION, 0, 0, 0, -1], dtype=np.float32))
    for _ in range(3):
        obs, *_ = env.step(_zero())
    np.testing.assert_allclose(obs["state"][0] - start[0], 3 * MAX_TRANSLATION, atol=0.002)
    # beyond the per-step limit the action is clipped, not an error
    obs, *_ = env.step(np.array([1.0, 0, 0, 0, -1], dtype=np.float32))
    obs2, *_ = env.step(_zero())
    assert obs2["state"][0] - obs["state"][0] < MAX_TRANSLATION


@pytest.mark.parametrize(
    "action, message",
    [
        (np.zeros(4, dtype=np.float32), "shape"),
        (np.zeros((1, 5), dtype=np.float32), "shape"),
        (np.zeros(5, dtype=np.int64), "float"),
        (np.array([0, 0, np.nan, 0, 0], dtype=np.float32), "NaN"),
        (np.array([0, 0, 0, np.inf, 0], dtype=np.float32), "NaN or inf"),
    ],
)
def test_bad_actions_raise_clear_errors(env, action, message):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


@pytest.mark.parametrize("seed", [-1, 1.5, "3", True])
def test_bad_seed_is_rejected(env, seed):
    with pytest.raises(ValueError, match="seed"):
        env.reset(seed=seed)


def test_unknown_family_suite_and_options_list_valid_choices(env):
    with pytest.raises(ValueError, match="stack_three"):
        env.reset(seed=0, options={"family": "juggle"})
    with pytest.raises(ValueError, match="base"):
        make_env(suite="nope")
    with pytest.raises(ValueError, match="valid families"):
        make_env(family="juggle")
    with pytest.raises(ValueError, match="valid: 'family', 'task'"):
        env.reset(seed=0, options={"colour": "red"})
    with pytest.raises(ValueError, match="image_size"):
        make_env(image_size=3)


def test_free_text_task_builds_a_matching_scene(env):
    obs, info = env.reset(seed=5, options={"task": "Put the red block in the drawer and close it"})
    assert info["family"] == "block_in_drawer_and_close"
    assert obs["task"] == "Put the red block in the drawer and close it"
    assert "pick up the red block" in info["subtasks"]
    with pytest.raises(ValueError, match="cannot understand the task"):
        env.reset(seed=5, options={"task": "make me a sandwich"})


def test_truncates_at_the_step_budget(env):
    env.reset(seed=2, options={"family": "push_to_side"})
    env.task.max_steps = 3
    results = [env.step(_zero()) for _ in range(3)]
    assert [r[3] for r in results] == [False, False, True]
    assert not any(r[2] for r in results)


def test_observation_wraps_privileged_state(env):
    obs, info = env.reset(seed=0)
    o = env.observation(obs, info)
    assert isinstance(o, Observation)
    assert o.privileged is info["privileged"] and o.task == obs["task"]


def test_suite_registry_has_at_least_eight_families():
    assert len(SUITES["base"]) >= 8
    assert set(SUITES["base"]) <= set(FAMILIES)


def test_unrendered_env_is_fast_and_blank():
    e = make_env(image_size=16, render_images=False)
    obs, _ = e.reset(seed=0)
    assert obs["images"]["front"].shape == (16, 16, 3) and not obs["images"]["front"].any()
    e.close()
