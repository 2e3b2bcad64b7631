"""The scripted coach in the real simulator, driving the real control loop: a deliberately wrong
high level (it goes for a block the task does not need, or does a later step first) gets
corrected, the loop obeys, and the task still succeeds; a dropped block is noticed."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")

from agent.coaching.scripted import ScriptedCoach  # noqa: E402
from agent.envs import make_env  # noqa: E402
from agent.envs.expert import ScriptedExpert  # noqa: E402
from agent.envs.oracle import OraclePlanner  # noqa: E402
from agent.loop import ControlLoop  # noqa: E402
from memory_recorder import MemoryRecorder  # noqa: E402
from policies.types import CorrectionKind as K, Plan  # noqa: E402


class MistakenPlanner:
    """The oracle, except that until the first correction it insists on one wrong subtask."""

    def __init__(self, wrong_subtask):
        self.oracle = OraclePlanner(seed=0)
        self.wrong_subtask = wrong_subtask  # callable(world) -> subtask text or None

    def reset(self):
        self.oracle.reset()

    def plan(self, obs, context):
        wrong = self.wrong_subtask(obs.privileged)
        if not context.corrections and obs.privileged.held is None and wrong:
            return Plan(thought="that one looks right", subtask=wrong, source="model")
        return self.oracle.plan(obs, context)


def distractor_pick(world):
    needed = {g.obj for g in world.task.groups if g.obj}
    spare = sorted(b for b in world.blocks if b not in needed)
    return f"pick up the {spare[0]}" if spare else None


def last_group_first(world):
    return world.task.groups[-1].subtasks[0].text


def run_coached(family, seed, planner, coach, low=None, max_steps=400):
    env = make_env(family=family, image_size=32, render_images=False)
    rec = MemoryRecorder()
    loop = ControlLoop(env, planner, low or ScriptedExpert(), recorder=rec, coach=coach)
    result = loop.run_episode(seed=seed, max_steps=max_steps)
    env.close()
    return result, [e for e in rec.events if e.type == "correction"], loop


def first_seed_with_distractor(family):
    env = make_env(family=family, image_size=32, render_images=False)
    for seed in range(20):
        _, info = env.reset(seed=seed)
        if distractor_pick(info["privileged"]):
            env.close()
            return seed
    env.close()
    pytest.skip(f"no {family} scene with a distractor block in 20 seeds")


def test_wrong_block_is_corrected_and_the_task_succeeds():
    seed = first_seed_with_distractor("put_color_in_bowl")
    coach = ScriptedCoach(seed=0, delay_steps=3, confirm_rate=0.0, interrupt_rate=0.0)
    result, corrections, _ = run_coached("put_color_in_bowl", seed, MistakenPlanner(distractor_pick), coach)
    first = corrections[0]
    assert first.speaker == "scripted" and first.kind in (K.OVERRIDE, K.NEGATION)
    assert first.step <= 6  # reaction time 3 steps, plus the step the mistake became visible
    assert first.replaced_plan.subtask.startswith("pick up the") and first.resulting_plan.subtask != first.replaced_plan.subtask
    assert coach.stats["mistake:wrong_object"] >= 1 and coach.stats["agreed"] == coach.stats["utterances"]
    assert result.success, (result, [(c.step, c.kind, c.text) for c in corrections])


def test_wrong_order_is_corrected_in_a_stacking_task():
    coach = ScriptedCoach(seed=1, delay_steps=3, confirm_rate=0.0, interrupt_rate=0.0)
    result, corrections, _ = run_coached("stack_three", 0, MistakenPlanner(last_group_first), coach)
    assert corrections and coach.stats["mistake:wrong_order"] >= 1
    assert corrections[0].kind in (K.OVERRIDE, K.NEGATION)
    assert result.success, (result, [(c.step, c.kind, c.text) for c in corrections])


class DroppingExpert(ScriptedExpert):
    """Opens the jaws once, mid-carry."""

    def __init__(self):
        super().__init__()
        self.dropped = False

    def act(self, obs, subtask):
        world = obs.privileged
        if not self.dropped and world.held is not None and world.gripper.pos[2] > 0.08:
            self.dropped = True
            return np.tile(np.array([0, 0, 0, 0, -1.0], np.float32), (3, 1))
        return super().act(obs, subtask)


def test_a_drop_is_noticed():
    coach = ScriptedCoach(seed=0, delay_steps=2, settle_steps=3, confirm_rate=0.0, interrupt_rate=0.0)
    low = DroppingExpert()
    result, corrections, _ = run_coached("put_color_in_bowl", 0, OraclePlanner(seed=0), coach, low=low, max_steps=300)
    assert low.dropped and coach.stats["mistake:drop"] == 1
    # the coach's answer to a drop: pick that block up again (the oracle was about to place it)
    again = [c for c in corrections if c.kind is K.OVERRIDE and c.resulting_plan.subtask.startswith("pick up the")]
    assert again and again[0].replaced_plan.subtask.startswith("place it in"), corrections
    assert result.success


@pytest.mark.parametrize("said", ["a bit higher", "wait", "move left a little"])
def test_a_nudge_or_pause_keeps_a_held_block(said):
    # the env has no "keep grip" value: the loop must repeat the last grip while nudging or holding still
    from agent.coaching.classify import classify

    env = make_env(family="put_color_in_bowl", image_size=32, render_images=False)
    loop = ControlLoop(env, OraclePlanner(seed=0), ScriptedExpert())
    loop.reset(seed=0)
    for _ in range(200):
        loop.step()
        world = loop._info["privileged"]
        if world.held and world.gripper.pos[2] > 0.08:
            break
    held, z0 = world.held, float(world.gripper.pos[2])
    assert held is not None
    loop.submit(classify(said))
    for _ in range(4):
        loop.step()
    world = loop._info["privileged"]
    env.close()
    assert world.held == held
    if said == "a bit higher":
        assert world.gripper.pos[2] > z0 + 0.01
