"""The `coaching` suite: its families, their success detectors (true and false cases), the scripted
slip, and a coach that knows the intended behaviour the oracle does not."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from agent.coaching.intended import COACHING_INTENDED, GoalBehaviour, make_coach  # noqa: E402
from agent.coaching.scripted import ScriptedCoach  # noqa: E402
from agent.envs import SUITES, make_env  # noqa: E402
from agent.envs.coaching_tasks import SlipOnce, slip_landing  # noqa: E402
from agent.envs.expert import ScriptedExpert  # noqa: E402
from agent.envs.oracle import OraclePlanner  # noqa: E402
from agent.envs.tasks import TaskInstance, parse_task  # noqa: E402
from agent.loop import ControlLoop  # noqa: E402
from memory_recorder import MemoryRecorder  # noqa: E402


@pytest.fixture(scope="module")
def env():
    e = make_env(suite="coaching", image_size=16, render_images=False)
    yield e
    e.close()


def reset(env, family: str, seed: int = 0):
    _, info = env.reset(seed=seed, options={"family": family})
    return info["privileged"], env.task


# --- building worlds for the detectors ------------------------------------------------------------
def moved(world, name: str, pos) -> object:
    blocks = dict(world.blocks)
    blocks[name] = dataclasses.replace(blocks[name], pos=np.asarray(pos, dtype=float))
    return dataclasses.replace(world, blocks=blocks, held=None)


def in_drawer(world, names: list[str], opening: float):
    """The blocks resting on the drawer's tray floor, the drawer at `opening`."""
    shift = opening - world.drawer.opening
    tray = world.drawer.tray_center + np.array([0.0, -shift, 0.0])
    drawer = dataclasses.replace(world.drawer, opening=opening, tray_center=tray)
    world = dataclasses.replace(world, drawer=drawer)
    for k, name in enumerate(names):
        half = world.blocks[name].half
        world = moved(world, name, tray + np.array([-0.04 + 0.08 * k, 0.0, half]))
    return world


def in_bowl(world, names: list[str], bowl: str):
    centre = world.bowls[bowl].pos
    for k, name in enumerate(names):
        world = moved(world, name, centre + np.array([-0.02 + 0.04 * k, 0.0, 0.006 + world.blocks[name].half]))
    return world


def tower(world, bottom_to_top: list[str]):
    x, y = world.blocks[bottom_to_top[0]].pos[:2]
    z = 0.0
    for name in bottom_to_top:
        half = world.blocks[name].half
        world = moved(world, name, (x, y, z + half))
        z += 2 * half
    return world


def lifted(world, name: str):
    """The block in the jaws, off whatever it rested on."""
    return dataclasses.replace(world, held=name, supported=world.supported - {name})


def literal_success(task, world) -> bool:
    """What the oracle's literal reading counts as done."""
    return TaskInstance(task.family, task.text, task.layout, task.groups, task.params).success(world)


# --- the suite --------------------------------------------------------------------------------------
def test_the_coaching_suite_is_three_families_absent_from_base():
    coaching = SUITES["coaching"]
    assert {"tidy_up", "stack_the_blocks", "recover_from_drop"} <= set(coaching)
    assert not set(coaching) & set(SUITES["base"])
    assert set(COACHING_INTENDED) >= set(coaching)
    assert parse_task("tidy up")[0] == "tidy_up"
    assert parse_task("stack the blocks")[0] == "stack_the_blocks"
    assert parse_task("put the red block and the blue block in the green bowl")[0] == "recover_from_drop"
    # the base suite's own texts still parse to base families
    assert parse_task("stack all the blocks into a single tower")[0] == "tower_of_n"
    assert parse_task("tidy all the blocks away into the drawer and close it")[0] == "clear_table_into_drawer"


def test_tidy_up_succeeds_only_with_every_block_in_the_closed_drawer(env):
    world, task = reset(env, "tidy_up", seed=1)
    blocks = task.params["blocks"]
    assert not task.success(world)
    assert env.task.subtask_texts[0] == "open the drawer" and env.task.subtask_texts[-1] == "close the drawer"
    done = in_drawer(world, blocks, opening=0.0)
    assert task.success(done) and all(task.progress(done))
    assert not task.success(in_drawer(world, blocks, opening=0.16))  # left open
    assert not task.success(in_drawer(world, blocks[:1], opening=0.0))  # one block still out
    assert not task.success(dataclasses.replace(done, held=blocks[0]))  # still in the jaws
    # the literal reading (every block in the bowl) is not tidying up
    gathered = in_bowl(world, blocks, task.params["bowl"] + " bowl")
    assert literal_success(task, gathered) and not task.success(gathered)


def test_stack_the_blocks_needs_the_red_block_at_the_bottom(env):
    world, task = reset(env, "stack_the_blocks", seed=2)
    red, (a, b) = task.params["bottom"], task.params["others"]
    assert "red" in red and not task.success(world)
    assert task.success(tower(world, [red, a, b])) and task.success(tower(world, [red, b, a]))
    assert all(task.progress(tower(world, [red, b, a])))
    assert not task.success(tower(world, [a, red, b]))
    assert not task.success(tower(world, [b, a, red]))
    assert not task.success(tower(world, [red, a]))  # two blocks are not the whole stack
    wrong_order = tower(world, task.params["literal_order"])
    assert literal_success(task, wrong_order)
    assert task.success(wrong_order) == (task.params["literal_order"][0] == red)


def test_recover_from_drop_succeeds_with_both_blocks_in_the_bowl(env):
    world, task = reset(env, "recover_from_drop", seed=3)
    targets, bowl = task.params["targets"], task.params["bowl"] + " bowl"
    assert task.params["slip"] and not task.success(world)
    assert task.success(in_bowl(world, targets, bowl))
    assert not task.success(in_bowl(world, targets[:1], bowl))
    others = [b for b in world.bowls if b != bowl]
    if others:
        assert not task.success(in_bowl(world, targets, others[0]))


def test_make_env_wraps_only_the_coaching_suite():
    base = make_env(suite="base", image_size=16, render_images=False)
    coaching = make_env(suite="coaching", image_size=16, render_images=False)
    fixed = make_env(family="recover_from_drop", image_size=16, render_images=False)
    try:
        assert not isinstance(base, SlipOnce)
        assert isinstance(coaching, SlipOnce) and isinstance(fixed, SlipOnce)
        assert coaching.unwrapped is coaching.env  # attributes come from the wrapped env
        assert coaching.action_space.shape == (5,)
    finally:
        for e in (base, coaching, fixed):
            e.close()


# --- the slip and the oracle ---------------------------------------------------------------------
def run(env, family, seed, coach=None, max_steps=300):
    rec = MemoryRecorder()
    loop = ControlLoop(env, OraclePlanner(seed=seed), ScriptedExpert(seed=seed), recorder=rec, coach=coach,
                       compute_model_plan=False)
    result = loop.run_episode(seed=seed, options={"family": family}, max_steps=max_steps)
    return result, rec


def test_the_carried_block_slips_once_and_is_picked_up_again(env):
    slipped = []
    for seed in range(3):
        result, rec = run(env, "recover_from_drop", seed, coach=make_coach(seed=seed))
        slipped.append(env.slipped)
        assert env.slipped in env.task.params["targets"]
        assert result.success, f"seed {seed}: {result}"
        # the oracle goes back for the block itself: the patient coach has nothing to say about it
        assert not [c for c in rec.corrections() if c.mistake == "drop"]
    assert len(slipped) == 3


def test_slip_landing_refuses_a_spot_next_to_a_bowl(env):
    world, task = reset(env, "recover_from_drop", seed=3)
    block = task.params["targets"][0]
    bowl = world.bowls[task.params["bowl"] + " bowl"]
    gripper = dataclasses.replace(world.gripper, pos=np.array([bowl.pos[0], bowl.pos[1], 0.15]))
    assert slip_landing(dataclasses.replace(world, gripper=gripper), block) is None


# --- the coach knows what the oracle does not ---------------------------------------------------------
def test_goal_behaviour_steps(env):
    behaviour = GoalBehaviour()
    world, task = reset(env, "tidy_up", seed=1)
    info = {"subtasks": task.subtask_texts, "family": "tidy_up"}
    assert behaviour.allowed_next(info, world) == ["open the drawer"]
    world, task = reset(env, "stack_the_blocks", seed=2)
    red, (a, b) = task.params["bottom"], task.params["others"]
    assert sorted(behaviour.allowed_next(info, world)) == sorted([f"pick up the {a}", f"pick up the {b}"])
    assert behaviour.allowed_next(info, lifted(world, a)) == [f"stack it on the {red}"]
    assert behaviour.allowed_next(info, lifted(world, red)) == ["put it down on the table"]
    started = tower(world, [red, b])
    assert behaviour.allowed_next(info, started) == [f"pick up the {a}"]
    assert behaviour.allowed_next(info, lifted(started, a)) == [f"stack it on the {b}"]


def test_the_coach_corrects_the_oracle_on_tidy_up(env):
    knowing, rec = run(env, "tidy_up", seed=1, coach=make_coach(seed=0), max_steps=120)
    said = rec.corrections()
    assert said, "the coach let the oracle gather the blocks in the bowl"
    first = said[0]
    assert first.mistake in ("wrong_order", "wrong_object") and first.kind.value in ("override", "negation", "stop", "pause")
    overrides = [c.resulting_plan.subtask for c in said if c.kind.value == "override"]
    assert "open the drawer" in overrides or any("drawer" in s for s in overrides)
    # a coach without the intended behaviour follows the oracle's own (literal) reading: nothing to say
    _, naive = run(env, "tidy_up", seed=1, coach=ScriptedCoach(seed=0), max_steps=120)
    assert not [c for c in naive.corrections() if c.mistake in ("wrong_order", "wrong_object")]


def test_the_coach_corrects_a_tower_on_the_wrong_block(env):
    for seed in range(6):  # find a scene whose literal order does not start with red
        world, task = reset(env, "stack_the_blocks", seed=seed)
        if task.params["literal_order"][0] != task.params["bottom"]:
            break
    _, rec = run(env, "stack_the_blocks", seed=seed, coach=make_coach(seed=0), max_steps=150)
    said = rec.corrections()
    assert said and said[0].mistake in ("wrong_order", "wrong_object")


class Idle:
    """A learned high level on a bad day: it decodes nothing usable."""

    def reset(self):
        pass

    def plan(self, obs, context):
        from policies.types import Plan

        return Plan(thought="", subtask="", source="model")


def test_an_idle_robot_is_told_what_to_do_at_once(env):
    def first_correction(coach):
        rec = MemoryRecorder()
        loop = ControlLoop(env, Idle(), ScriptedExpert(seed=0, strict=False), recorder=rec, coach=coach,
                           compute_model_plan=False)
        loop.run_episode(seed=1, options={"family": "tidy_up"}, max_steps=60)
        said = rec.corrections()
        return said[0] if said else None

    said = first_correction(make_coach(seed=0, interrupt_rate=0.0))
    assert said is not None and said.step <= 10 and said.kind.value == "override"
    assert said.resulting_plan.subtask == "open the drawer"
    assert first_correction(ScriptedCoach(seed=0)) is None  # the plain coach waits for "stuck" (80 steps)


def test_taking_a_tidied_block_back_out_counts_as_undoing(env):
    from agent.coaching.intended import undoes_finished_work

    world, task = reset(env, "tidy_up", seed=1)
    first, second = task.params["blocks"]
    one_in = in_drawer(world, [first], opening=0.16)
    assert undoes_finished_work(one_in, f"pick up the {first}")
    assert not undoes_finished_work(one_in, f"pick up the {second}")
    assert not undoes_finished_work(world, f"pick up the {first}")  # nothing is finished yet
    assert not undoes_finished_work(in_drawer(world, [first, second], opening=0.0), f"pick up the {first}")  # all done


class Undoer:
    """Puts the first tidied block in the drawer, then keeps taking it out again."""

    def __init__(self):
        self.oracle = OraclePlanner(seed=0)

    def reset(self):
        self.oracle.reset()

    def plan(self, obs, context):
        from agent.coaching.intended import undoes_finished_work
        from policies.types import Plan

        world = obs.privileged
        first = world.task.params["blocks"][0]
        if undoes_finished_work(world, f"pick up the {first}") and world.held is None and not context.corrections[-1:]:
            return Plan(thought="", subtask=f"pick up the {first}", source="model")
        if not world.drawer.is_open and not world.in_drawer(first):
            return Plan(thought="", subtask="open the drawer", source="model")
        if world.held == first:
            return Plan(thought="", subtask="put it in the drawer", source="model")
        return Plan(thought="", subtask=f"pick up the {first}", source="model")


def test_taking_finished_work_apart_is_stopped_before_the_pick_completes(env):
    rec = MemoryRecorder()
    loop = ControlLoop(env, Undoer(), ScriptedExpert(seed=0, strict=False), recorder=rec,
                       coach=make_coach(seed=0, interrupt_rate=0.0), compute_model_plan=False)
    loop.run_episode(seed=1, options={"family": "tidy_up"}, max_steps=200)
    undo = [c for c in rec.corrections() if c.replaced_plan and c.replaced_plan.subtask.startswith("pick up")
            and c.mistake == "wrong_object"]
    assert undo, [(c.step, c.kind.value, c.mistake, c.replaced_plan) for c in rec.corrections()]


@pytest.mark.parametrize("family", ["tidy_up", "stack_the_blocks"])
def test_the_scripted_coach_alone_brings_the_oracle_to_the_intended_behaviour(env, family):
    # Seed 5000 timed out before (tidy_up: 1 of 6 steps, 13 interventions; stack_the_blocks: 2 of 4):
    # the literal oracle redid each corrected mistake within the coach's reaction time (a block put
    # straight back on the wrong block) and the coach, silent about a mistake for 40 steps once named,
    # went round naming the earlier step again. It now names a mistake it has seen the moment it is back.
    result, rec = run(env, family, seed=5000, coach=make_coach(seed=5000), max_steps=None)
    assert result.success, (result, [(c.step, c.kind.value, c.text, c.mistake) for c in rec.corrections()])
    assert result.interventions <= 8
