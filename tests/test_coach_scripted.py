"""The scripted coach on small hand-built privileged states (no simulator): each mistake type,
reaction delay, interruptions, confirmations, error rate and the intended-behaviour hooks."""

from __future__ import annotations

import numpy as np
import pytest

from agent.coaching.nudge import nudge_to_action_offset
from agent.coaching.rules import parse_rule
from policies.rules import Rule
from agent.coaching.scripted import CoachUtterance, FamilyBehaviour, ScriptedCoach
from agent.envs.world import BlockState, BowlState, DrawerState, GripperState, WorldState
from policies.types import Correction, CorrectionKind as K, Plan

HALF = 0.02
TASK = ["pick up the red block", "place it in the blue bowl", "pick up the green block", "place it in the blue bowl"]


def make_world(blocks=None, bowls=None, held=None, gripper=(0.0, -0.1, 0.2), closed=False) -> WorldState:
    blocks = blocks or {"red block": (0.1, 0.0, HALF), "green block": (-0.1, 0.0, HALF), "yellow block": (0.0, 0.1, HALF)}
    bowls = bowls or {"blue bowl": (0.2, -0.15)}
    return WorldState(
        blocks={n: BlockState(n, f"block{i}", n.split()[-2], "small", HALF, np.array(p, float), 0.0, True)
                for i, (n, p) in enumerate(blocks.items())},
        bowls={n: BowlState(n, f"bowl{i}", n.split()[0], np.array([*p, 0.0])) for i, (n, p) in enumerate(bowls.items())},
        drawer=DrawerState(0.0, np.array([0.21, 0.08, 0.05]), np.array([0.21, 0.22, 0.013])),
        gripper=GripperState(np.array(gripper, float), 0.0, 0.0 if closed else 0.08, closed, np.array(gripper, float), 0.0),
        held=held,
        supported=frozenset(blocks) - ({held} if held else set()),
    )


def make_info(world, done=(False, False, False, False), subtasks=TASK, family="fake"):
    done = list(done)
    index = next((i for i, d in enumerate(done) if not d), len(done))
    return {"privileged": world, "family": family, "subtasks": list(subtasks), "subtasks_done": done,
            "subtask_index": index}


def plan(subtask: str) -> Plan:
    return Plan(thought="", subtask=subtask, source="model")


def run(coach, steps, world=None, the_plan="pick up the red block", done=(False,) * 4, start=0, **info_kw):
    """Observe `steps` identical steps; return [(step, utterance)] of what was said."""
    world = world or make_world()
    said = []
    for step in range(start, start + steps):
        out = coach.observe(None, make_info(world, done, **info_kw), plan(the_plan), step)
        if out is not None:
            said.append((step, out))
    return said


def quiet_coach(**kw) -> ScriptedCoach:
    """A deterministic coach: no interruptions, confirmations or errors unless asked."""
    defaults = dict(seed=0, delay_steps=3, error_rate=0.0, confirm_rate=0.0, interrupt_rate=0.0, override_share=1.0)
    defaults.update(kw)
    return ScriptedCoach(**defaults)


def test_correct_plan_gets_no_correction():
    assert run(quiet_coach(), 30) == []


def test_wrong_object_is_overridden_after_the_reaction_delay():
    said = run(quiet_coach(delay_steps=4), 20, the_plan="pick up the yellow block")
    step, u = said[0]
    assert isinstance(u, CoachUtterance) and isinstance(u, Correction)
    assert step == 4 and u.mistake == "wrong_object" and u.suspect_from_step == 0
    assert u.kind is K.OVERRIDE and u.subtask == "pick up the red block" and u.agrees
    assert u.speaker == "scripted" and u.step == 4 and u.text and u.template


def test_wrong_object_can_be_negated_instead():
    said = run(quiet_coach(override_share=0.0), 10, the_plan="pick up the yellow block")
    u = said[0][1]
    assert u.kind is K.NEGATION and u.subtask == "pick up the yellow block" and u.agrees


def test_wrong_order_is_told_apart_from_wrong_object():
    said = run(quiet_coach(), 10, the_plan="pick up the green block")
    u = said[0][1]
    assert u.mistake == "wrong_order" and u.subtask == "pick up the red block"


def test_broken_family_rule_is_stated_as_a_constraint():
    rule = Rule("avoid_block", "green block")
    # the family wants the red block moved and the green one left where it is
    coach = quiet_coach(intended=FamilyBehaviour(lambda info, world: "pick up the red block", fixed_rules=[rule]))
    tasks = ["pick up the green block", "place it in the blue bowl", "pick up the red block", "place it in the blue bowl"]
    said = run(coach, 10, the_plan="pick up the green block", subtasks=tasks)
    u = said[0][1]
    assert u.mistake == "broken_constraint" and u.kind is K.CONSTRAINT and u.agrees
    assert parse_rule(u.text, ("red block", "green block", "yellow block")) == rule


def test_a_rule_said_earlier_is_enforced():
    coach = quiet_coach(intended=FamilyBehaviour(fixed_rules=[Rule("avoid_drawer")]))
    subtasks = ["open the drawer", "pick up the red block", "put it in the drawer", "close the drawer"]
    said = run(coach, 10, the_plan="open the drawer", subtasks=subtasks)
    assert said == []  # every way to do the task needs the drawer: the rule cannot be kept, so not enforced
    coach = quiet_coach(cooldown_steps=1, repeat_after=5)
    coach._mem.spoken_rules.append(Rule("avoid_block", "yellow block"))
    said = run(coach, 10, the_plan="pick up the yellow block")
    assert said[0][1].mistake == "broken_constraint"


def test_drop_is_caught_and_the_block_picked_again():
    coach = quiet_coach(delay_steps=2, settle_steps=2)
    holding = make_world(held="red block", blocks={"red block": (0.0, -0.05, 0.1), "green block": (-0.1, 0.0, HALF)})
    dropped = make_world(blocks={"red block": (0.0, -0.05, HALF), "green block": (-0.1, 0.0, HALF)})
    done_holding = (True, False, False, False)
    said = run(coach, 3, world=holding, the_plan="place it in the blue bowl", done=done_holding)
    said += run(coach, 10, world=dropped, the_plan="place it in the blue bowl", start=3)
    assert said, "the drop went unnoticed"
    step, u = said[0]
    assert u.mistake == "drop" and u.suspect_from_step == 3
    assert u.kind is K.OVERRIDE and u.subtask == "pick up the red block" and u.agrees
    assert step >= 3 + 2 + 2  # settle, then react


def test_release_into_the_target_is_not_a_drop():
    coach = quiet_coach(delay_steps=1, settle_steps=1)
    holding = make_world(held="red block", blocks={"red block": (0.2, -0.15, 0.1), "green block": (-0.1, 0.0, HALF)})
    placed = make_world(blocks={"red block": (0.2, -0.15, 0.008 + HALF), "green block": (-0.1, 0.0, HALF)})
    run(coach, 3, world=holding, the_plan="place it in the blue bowl", done=(True, False, False, False))
    said = run(coach, 10, world=placed, the_plan="place it in the blue bowl", done=(True, True, False, False), start=3)
    assert all(u.mistake != "drop" for _, u in said)


def test_stuck_gets_a_nudge_towards_the_target():
    coach = quiet_coach(stuck_steps=20, nudge_share=1.0)
    world = make_world(gripper=(-0.2, 0.0, 0.2))  # the red block is at x = +0.1: to the right
    said = run(coach, 30, world=world)
    step, u = said[0]
    assert u.mistake == "stuck" and u.kind is K.NUDGE and step >= 20 and u.suspect_from_step == 0
    assert nudge_to_action_offset(u)[0] > 0


def test_stuck_without_a_clear_motion_restates_the_subtask():
    coach = quiet_coach(stuck_steps=20, nudge_share=0.0)
    u = run(coach, 30)[0][1]
    assert u.mistake == "stuck" and u.kind is K.OVERRIDE and u.subtask == "pick up the red block"


def test_correct_subtask_completion_is_confirmed():
    coach = quiet_coach(confirm_rate=1.0, delay_steps=2)
    run(coach, 3)
    said = run(coach, 6, the_plan="pick up the red block", done=(True, False, False, False), start=3)
    # the plan still names the finished pick (stale, not a mistake) until the loop re-plans
    assert [u.kind for _, u in said] == [K.CONFIRM] and said[0][0] == 5 and said[0][1].mistake is None


def test_a_transient_mismatch_shorter_than_the_delay_is_ignored():
    coach = quiet_coach(delay_steps=5)
    said = run(coach, 3, the_plan="pick up the yellow block")
    said += run(coach, 20, start=3)
    assert said == []


def test_interruption_then_correction_or_resume():
    coach = quiet_coach(interrupt_rate=1.0, delay_steps=2, cooldown_steps=0)
    said = run(coach, 12, the_plan="pick up the yellow block")
    kinds = [u.kind for _, u in said]
    assert kinds[0] in (K.STOP, K.PAUSE) and kinds[1] is K.OVERRIDE
    assert said[0][1].mistake == "wrong_object" and said[1][1].suspect_from_step == 0
    # the mistake goes away before the follow-up: the coach lets it carry on
    coach = quiet_coach(interrupt_rate=1.0, delay_steps=4, cooldown_steps=0)
    first = run(coach, 5, the_plan="pick up the yellow block")
    later = run(coach, 5, start=5)
    assert first[0][1].kind in (K.STOP, K.PAUSE) and [u.kind for _, u in later] == [K.RESUME]


def test_error_rate_one_never_gives_a_helpful_correction():
    coach = quiet_coach(error_rate=1.0, cooldown_steps=1, repeat_after=3)
    said = run(coach, 60, the_plan="pick up the yellow block")
    assert said and all(u.erroneous for _, u in said)
    assert coach.stats["missed"] > 0  # half the time it says nothing
    assert all(u.subtask != "pick up the red block" or u.kind is K.NEGATION for _, u in said)


def test_same_seed_same_utterances():
    texts = [[u.text for _, u in run(ScriptedCoach(seed=s, delay_steps=2, cooldown_steps=1, repeat_after=4), 40,
                                      the_plan="pick up the yellow block")] for s in (3, 3, 4)]
    assert texts[0] == texts[1] and texts[0]


def test_intended_callable_overrides_the_reference():
    coach = quiet_coach(intended=lambda info, world: "pick up the green block")
    u = run(coach, 10)[0][1]  # the reference says red; this family wants green first
    assert u.subtask == "pick up the green block" and u.mistake == "wrong_order"


def test_intended_per_family():
    coach = quiet_coach(intended={"special": lambda info, world: ["pick up the green block", "pick up the red block"]})
    assert run(coach, 10, family="special") == []  # both acceptable
    assert run(coach, 10, the_plan="pick up the yellow block", family="other")[0][1].mistake == "wrong_object"


def test_missing_privileged_state_is_a_clear_error():
    with pytest.raises(ValueError, match="privileged"):
        ScriptedCoach().observe(None, {"subtasks": TASK}, plan("pick up the red block"), 0)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="error_rate"):
        ScriptedCoach(error_rate=1.5)
    with pytest.raises(TypeError, match="intended"):
        ScriptedCoach(intended=42)


def test_reset_forgets_the_episode():
    coach = quiet_coach(delay_steps=3)
    run(coach, 2, the_plan="pick up the yellow block")
    coach.reset()
    said = run(coach, 6, the_plan="pick up the yellow block", start=2)
    assert said[0][0] == 5  # the delay counts from after the reset


def test_a_finished_subtask_left_in_force_gets_the_next_step_said():
    coach = quiet_coach(stale_steps=10)
    said = run(coach, 30, the_plan="pick up the red block", done=(True, False, False, False))
    step, u = said[0]
    assert step == 10 and u.mistake == "stuck" and u.suspect_from_step == 0
    assert u.kind is K.OVERRIDE and u.subtask == "place it in the blue bowl"
