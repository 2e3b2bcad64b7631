"""The scripted expert executes every primitive, with noise, and recovers from a drop."""

from __future__ import annotations

import numpy as np
import pytest

from agent.envs import make_env
from agent.envs import scene as S
from agent.envs.expert import ScriptedExpert
from policies.grammar import SubtaskParseError, parse_subtask
from policies.base import LowLevelPolicy
from policies.types import Observation


@pytest.fixture(scope="module")
def env():
    e = make_env(image_size=16, render_images=False)
    yield e
    e.close()


def run_subtask(env, expert, obs, info, subtask: str, budget: int = 120):
    """Execute `subtask` with the expert until its detector fires; returns (ok, obs, info, steps)."""
    steps = 0
    while steps < budget:
        chunk = expert.act(env.observation(obs, info), subtask)
        assert chunk.shape == (expert.horizon, 5) and chunk.dtype == np.float32
        for action in chunk:
            obs, _, _, _, info = env.step(action)
            steps += 1
            if env.subtask_done(subtask, info):
                return True, obs, info, steps
    return False, obs, info, steps


def test_is_a_low_level_policy():
    assert isinstance(ScriptedExpert(), LowLevelPolicy)


def run_every_subtask(env, obs, info) -> dict:
    """The scripted expert through the task's reference subtasks in order, each one done; the last info."""
    expert = ScriptedExpert()
    for subtask in info["subtasks"]:
        ok, obs, info, _ = run_subtask(env, expert, obs, info, subtask)
        assert ok, subtask
    return info


@pytest.mark.parametrize("family, seed", [("stack_three", 0), ("sort_into_bowls", 1), ("tower_of_n", 2)])
def test_pick_then_place_or_stack(env, family, seed):
    obs, info = env.reset(seed=seed, options={"family": family})
    expert = ScriptedExpert()
    pick_text, place_text = info["subtasks"][:2]
    ok, obs, info, _ = run_subtask(env, expert, obs, info, pick_text)
    assert ok and info["privileged"].held is not None
    ok, obs, info, _ = run_subtask(env, expert, obs, info, place_text)
    assert ok and info["subtasks_done"][:2] == [True, True]


def test_drawer_open_put_close(env):
    obs, info = env.reset(seed=3, options={"family": "block_in_drawer_and_close"})
    assert run_every_subtask(env, obs, info)["task_success"]


def test_push_both_ways(env):
    obs, info = env.reset(seed=0, options={"task": "push the red block to the left and the blue block to the right"})
    assert run_every_subtask(env, obs, info)["task_success"]


def test_a_pushed_block_is_not_held(env):
    # closed jaws push with both fingertips on the block's face: that is contact, not a grip (read as
    # held, it made the oracle say "put it down" at every re-plan mid-push)
    obs, info = env.reset(seed=0, options={"task": "push the red block to the left"})
    expert, subtask, steps = ScriptedExpert(), info["subtasks"][0], 0
    start = info["privileged"].block("red block").pos.copy()
    while steps < 200 and not env.subtask_done(subtask, info):
        for action in expert.act(env.observation(obs, info), subtask):
            obs, _, _, _, info = env.step(action)
            steps += 1
            assert info["privileged"].held is None, f"step {steps}: the pushed block read as held"
    moved = np.linalg.norm(info["privileged"].block("red block").pos[:2] - start[:2])
    assert env.subtask_done(subtask, info) and moved > 0.05


def test_put_down_after_pick(env):
    obs, info = env.reset(seed=5, options={"family": "stack_three"})
    expert = ScriptedExpert()
    ok, obs, info, _ = run_subtask(env, expert, obs, info, info["subtasks"][0])
    held = info["privileged"].held
    ok, obs, info, _ = run_subtask(env, expert, obs, info, "put it down on the table")
    assert ok and info["privileged"].on_table(held)


def test_recovers_from_a_drop_by_picking_again(env):
    obs, info = env.reset(seed=6, options={"family": "put_color_in_bowl"})
    expert = ScriptedExpert(recovery=True)
    pick_text, place_text = info["subtasks"][:2]
    ok, obs, info, _ = run_subtask(env, expert, obs, info, pick_text)
    held = info["privileged"].held
    assert ok and held
    # knock the block out of the jaws onto a free spot of the table
    obs, info = env.place_block(held, (-0.2, -0.2, 0.05))
    assert info["privileged"].held is None
    ok, obs, info, _ = run_subtask(env, expert, obs, info, place_text, budget=200)
    assert ok, "the expert should pick the dropped block again and finish the place"


def test_failed_grasp_reopens_and_retries(env):
    obs, info = env.reset(seed=7, options={"family": "stack_three"})
    expert = ScriptedExpert()
    target = info["subtasks"][0]
    # close the jaws on nothing right away: the expert must open, re-approach and grasp
    for _ in range(3):
        obs, _, _, _, info = env.step(np.array([0, 0, 0, 0, 1], dtype=np.float32))
    ok, *_ = run_subtask(env, expert, obs, info, target)
    assert ok


def test_noise_is_seeded_and_still_succeeds(env):
    obs, info = env.reset(seed=8, options={"family": "stack_three"})
    o = env.observation(obs, info)
    a = ScriptedExpert(noise_std=0.004, seed=1).act(o, info["subtasks"][0])
    b = ScriptedExpert(noise_std=0.004, seed=1).act(o, info["subtasks"][0])
    c = ScriptedExpert(noise_std=0.0).act(o, info["subtasks"][0])
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.all(np.abs(a[:, :3]) <= 0.02 + 1e-6)
    expert = ScriptedExpert(noise_std=0.004, seed=2)
    for subtask in info["subtasks"][:2]:
        ok, obs, info, _ = run_subtask(env, expert, obs, info, subtask, budget=200)
        assert ok, subtask


def test_bad_input_is_rejected(env):
    obs, info = env.reset(seed=0, options={"family": "stack_three"})
    expert = ScriptedExpert()
    with pytest.raises(SubtaskParseError):
        expert.act(env.observation(obs, info), "juggle the blocks")
    bare = Observation(images=obs["images"], state=obs["state"], task=obs["task"], time=0.0)
    with pytest.raises(ValueError, match="privileged"):
        expert.act(bare, info["subtasks"][0])
    present = {b.color for b in info["privileged"].blocks.values()}
    absent = next(c for c in S.COLORS if c not in present)
    with pytest.raises(KeyError, match=f"no '{absent} block'"):
        expert.act(env.observation(obs, info), f"pick up the {absent} block")
    with pytest.raises(ValueError, match="horizon"):
        ScriptedExpert(horizon=0)
    # lenient mode (under a learned high level): hold still and say why
    lenient = ScriptedExpert(strict=False)
    chunk = lenient.act(env.observation(obs, info), "juggle the blocks")
    assert chunk.shape == (10, 5) and not chunk[:, :4].any() and "juggle" in lenient.last_error
    chunk = lenient.act(env.observation(obs, info), info["subtasks"][0])
    assert lenient.last_error is None and chunk[:, :3].any()


def test_an_ambiguous_block_name_means_the_nearest_one_unless_strict(env):
    obs, info = env.reset(seed=0, options={"family": "put_color_in_bowl"})
    world = info["privileged"]
    by_color: dict[str, list[str]] = {}
    for name, block in world.blocks.items():
        by_color.setdefault(block.color, []).append(name)
    color, names = next((c, n) for c, n in by_color.items() if len(n) > 1)  # the task's colour has two
    with pytest.raises(KeyError, match="ambiguous"):
        ScriptedExpert().act(env.observation(obs, info), f"pick up the {color} block")
    nearest = min(names, key=lambda n: np.linalg.norm(world.blocks[n].pos[:2] - world.gripper.pos[:2]))
    lenient = ScriptedExpert(strict=False)
    for _ in range(12):
        for action in lenient.act(env.observation(obs, info), f"pick up the {color} block"):
            obs, _, _, _, info = env.step(action)
    assert lenient.last_error is None and info["privileged"].held == nearest
    assert env.subtask_done(f"pick up the {color} block", info)  # one of the blue blocks is up: done


def drive_to(env, obs, info, goal, grip: float = 1.0, budget: int = 60):
    """Move the commanded TCP to `goal` through a point above it (a stand-in for where a learned
    policy may have left the arm)."""
    for waypoint in (np.array([*goal[:2], 0.15]), np.asarray(goal, dtype=float)):
        for _ in range(budget):
            delta = np.clip(waypoint - info["privileged"].gripper.target_pos, -0.02, 0.02)
            if np.abs(delta).max() < 1e-4:
                break
            obs, _, _, _, info = env.step(np.array([*delta, 0.0, grip], dtype=np.float32))
    return obs, info


@pytest.mark.parametrize("offset", [(0.0, -0.05, 0.0), (0.03, -0.02, 0.02), (-0.04, -0.06, -0.01)])
def test_close_continues_from_a_low_point_in_front_of_the_handle(env, offset):
    # what a learned policy leaves: the arm low in front of the open drawer, off the expert's path.
    # The expert's label there heads for the handle at that height; it used to climb to 13 cm and
    # come back down, so labels near the handle alternated between two motions
    obs, info = env.reset(seed=3, options={"family": "block_in_drawer_and_close"})
    obs, info = env.set_drawer_opening(0.12)
    handle = info["privileged"].drawer.handle_pos
    start = np.array([handle[0], handle[1] - S.HANDLE_HALF[1] - 0.018, S.HANDLE_Z])
    obs, info = drive_to(env, obs, info, start + np.array(offset))
    expert = ScriptedExpert()
    chunk = expert.act(env.observation(obs, info), "close the drawer")
    assert chunk[:, 2].sum() <= 0.01 + max(0.0, -offset[2]), "it climbed away from the handle"
    assert chunk[:, 1].sum() > 0.01, "it did not head for the handle"
    ok, obs, info, steps = run_subtask(env, expert, obs, info, "close the drawer", budget=80)
    assert ok and info["privileged"].drawer.opening <= 0.01


def test_put_down_label_reads_the_state_alone(env):
    # a policy that carried the block elsewhere is told to put it down where it now is (if free),
    # exactly what an expert asked afresh there says: no spot remembered from the subtask's start
    obs, info = env.reset(seed=5, options={"family": "stack_three"})
    expert = ScriptedExpert()
    ok, obs, info, _ = run_subtask(env, expert, obs, info, info["subtasks"][0])
    held = info["privileged"].held
    assert ok and held
    expert.act(env.observation(obs, info), "put it down on the table")  # the subtask starts here
    obs, info = drive_to(env, obs, info, np.array([-0.10, -0.18, 0.12]))
    assert info["privileged"].held == held
    o = env.observation(obs, info)
    label = expert.act(o, "put it down on the table")
    np.testing.assert_array_equal(label, ScriptedExpert().act(o, "put it down on the table"))
    assert np.abs(label[:, :2]).sum() < 0.005 and label[:, 2].sum() < -0.05, "not straight down"
    ok, obs, info, _ = run_subtask(env, expert, obs, info, "put it down on the table")
    assert ok and info["privileged"].on_table(held)
    assert np.hypot(*(info["privileged"].block(held).pos[:2] - np.array([-0.10, -0.18]))) < 0.03


def test_a_block_lifted_at_the_table_edge_goes_back_down_there(env):
    # the shipped policy's put-down failures were carries from the edge toward the middle (where the
    # expert's spot search looks), never released: straight down is free there, so that is the label
    obs, info = env.reset(seed=5, options={"family": "stack_three"})
    expert = ScriptedExpert()
    held = info["privileged"].block(parse_subtask(info["subtasks"][0]).obj)
    obs, info = env.place_block(held.name, (-0.24, -0.05, held.half + 0.002))
    ok, obs, info, _ = run_subtask(env, expert, obs, info, info["subtasks"][0])
    assert ok and info["privileged"].held == held.name
    start = info["privileged"].block(held.name).pos.copy()
    label = expert.act(env.observation(obs, info), "put it down on the table")
    assert np.abs(label[:, :2]).sum() < 0.005 and label[0, 2] <= 0, "not straight down"
    ok, obs, info, _ = run_subtask(env, expert, obs, info, "put it down on the table")
    assert ok and np.hypot(*(info["privileged"].block(held.name).pos[:2] - start[:2])) < 0.02
