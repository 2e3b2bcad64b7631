"""What a plan must obey (policies/obey.py) and the oracle obeying each kind of correction: negations,
rules said this episode or remembered for the session, and overrides that lift them."""

from __future__ import annotations

import json

import pytest

from agent.envs import make_env
from agent.envs.expert import ScriptedExpert
from agent.envs.oracle import OraclePlanner
from policies.grammar import parse_subtask
from policies.obey import Forbid, forbids_in_force, obeys
from policies.rules import Rule
from policies.types import Correction, CorrectionKind, PlanContext

K = CorrectionKind


def test_the_obey_check_on_a_negation_a_rule_and_an_override():
    negation = Correction(K.NEGATION, "not the red block", subtask="pick up the red block")
    forbids = forbids_in_force([negation])
    both = ["pick up the red block", "pick up the blue block"]
    assert not obeys("pick up the red block", forbids, both)
    assert not obeys("push the red block to the left", forbids, both + ["push the red block to the left"])
    assert obeys("pick up the blue block", forbids, both)
    assert obeys("pick up the red block", forbids, ["pick up the red block"])  # nothing else is left: red goes last
    assert obeys("", forbids, both)  # no subtask breaks nothing (decision accuracy is measured elsewhere)
    # a negation of a place rules out that place only
    place = forbids_in_force([Correction(K.NEGATION, "not the red bowl", subtask="place it in the red bowl")])
    assert not obeys("place it in the red bowl", place, ["place it in the red bowl", "put it down on the table"])
    assert obeys("place it in the blue bowl", place, ["place it in the red bowl", "place it in the blue bowl"])
    # a rule: "leave the red block alone" covers both sizes and stacking onto it
    rule = Correction(K.CONSTRAINT, "leave the red block alone", rule=Rule("avoid_block", "red block"))
    forbids = forbids_in_force([rule])
    assert not obeys("pick up the small red block", forbids, ["pick up the small red block", "pick up the blue block"])
    assert not obeys("stack it on the red block", forbids, ["stack it on the red block", "stack it on the blue block"])
    # a rule remembered and said again is one rule; a later override lifts what it asks for
    assert len(forbids_in_force([rule], memory=[rule])) == 1
    override = Correction(K.OVERRIDE, "pick up the red block", subtask="pick up the red block")
    assert forbids_in_force([negation, override]) == []
    assert forbids_in_force([negation, Correction(K.NEGATION, "no")]) == forbids_in_force([negation])
    again = Forbid.from_dict(json.loads(json.dumps(forbids_in_force([rule])[0].to_dict())))
    assert again == forbids_in_force([rule])[0]


# --- the oracle obeys each kind ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def env():
    e = make_env(image_size=16, render_images=False)
    yield e
    e.close()


def _sorted_scene(env, seed=2):
    """A sort_into_bowls scene and its three picks in the order the oracle takes them (left to right)."""
    obs, info = env.reset(seed=seed, options={"family": "sort_into_bowls"})
    world = info["privileged"]
    picks = sorted((s for s in info["subtasks"] if s.startswith("pick")),
                   key=lambda s: world.blocks[parse_subtask(s).obj].pos[0])
    assert _plan(env, obs, info) == picks[0] and len(picks) == 3
    return obs, info, picks


def _plan(env, obs, info, corrections=(), memory=()):
    context = PlanContext(task=obs["task"], corrections=list(corrections), memory=list(memory))
    return OraclePlanner().plan(env.observation(obs, info), context).subtask


def _bowl_of(info, pick):
    i = info["subtasks"].index(pick)
    return parse_subtask(info["subtasks"][i + 1]).target


def test_the_oracle_keeps_bowl_rules_while_another_block_can_go_first(env):
    obs, info, picks = _sorted_scene(env)
    bowl = _bowl_of(info, picks[0])
    avoid = Correction(K.CONSTRAINT, f"never use the {bowl}", rule=Rule("avoid_bowl", bowl))
    assert _plan(env, obs, info, [avoid]) == picks[1]
    last_bowl = _bowl_of(info, picks[2])
    only = Correction(K.CONSTRAINT, f"only use the {last_bowl}", rule=Rule("only_bowl", last_bowl))
    assert _plan(env, obs, info, [only]) == picks[2]


def test_the_oracle_keeps_a_remembered_rule(env):
    obs, info, picks = _sorted_scene(env)
    block = parse_subtask(picks[0]).obj
    rule = Correction(K.CONSTRAINT, f"from now on leave the {block} alone", rule=Rule("avoid_block", block),
                      lasting=True)
    assert _plan(env, obs, info, memory=[rule]) == picks[1]
    # an override of the same block later in the episode wins
    override = Correction(K.OVERRIDE, f"pick up the {block}", subtask=picks[0])
    assert _plan(env, obs, info, [override], memory=[rule]) == picks[0]


def _holding(env, seed, family):
    obs, info = env.reset(seed=seed, options={"family": family})
    pick = info["subtasks"][0]
    expert = ScriptedExpert()
    for _ in range(8):
        for a in expert.act(env.observation(obs, info), pick):
            obs, _, _, _, info = env.step(a)
        if info["privileged"].is_lifted(parse_subtask(pick).obj):
            return obs, info
    raise AssertionError("the expert did not lift the block")


def test_the_oracle_puts_down_a_block_whose_place_was_negated_if_another_can_go_first(env):
    obs, info = _holding(env, 5, "sort_into_bowls")
    place = info["subtasks"][1]
    assert _plan(env, obs, info) == place
    negation = Correction(K.NEGATION, f"not the {parse_subtask(place).target}", subtask=place)
    assert _plan(env, obs, info, [negation]) == "put it down on the table"
    # every block of put_color_in_bowl goes to the one bowl: nothing is wholly allowed, so it places
    obs, info = _holding(env, 4, "put_color_in_bowl")
    place = info["subtasks"][1]
    negation = Correction(K.NEGATION, "not that bowl", subtask=place)
    assert _plan(env, obs, info, [negation]) == place
