"""Episode rules: parsed from what people say, and which subtasks they forbid."""

from __future__ import annotations

import pytest

from agent.coaching.classify import classify
from agent.coaching.rules import parse_rule, rules_from_corrections
from policies.rules import Rule
from policies.types import Correction, CorrectionKind as K

SCENE = ("large red block", "green block", "blue block")


@pytest.mark.parametrize("text,rule", [
    ("never use the drawer", Rule("avoid_drawer")),
    ("the drawer is off limits", Rule("avoid_drawer")),
    ("from now on keep the drawer shut", Rule("avoid_drawer")),
    ("from now on leave the green block alone", Rule("avoid_block", "green block")),
    ("stay away from the blue block", Rule("avoid_block", "blue block")),
    ("the red block is off limits", Rule("avoid_block", "large red block")),  # the scene's only red block
    ("never use the purple bowl", Rule("avoid_bowl", "purple bowl")),
    ("always use the yellow bowl", Rule("only_bowl", "yellow bowl")),
    ("the green one is off limits", Rule("avoid_block", "green block")),  # colour + "one" names a block
])
def test_parse_rule(text, rule):
    assert classify(text).kind is K.CONSTRAINT
    assert parse_rule(text, SCENE) == rule


def test_rules_forbid_the_right_subtasks():
    green = Rule("avoid_block", "green block")
    assert green.forbids("pick up the green block") and green.forbids("stack it on the green block")
    assert green.forbids("push the green block to the left") and not green.forbids("pick up the red block")
    red = Rule("avoid_block", "red block")  # said without the size: covers the sized name
    assert red.forbids("pick up the large red block")
    drawer = Rule("avoid_drawer")
    assert all(drawer.forbids(s) for s in ("open the drawer", "close the drawer", "put it in the drawer"))
    assert not drawer.forbids("place it in the blue bowl")
    only_blue = Rule("only_bowl", "blue bowl")
    assert only_blue.forbids("place it in the red bowl") and not only_blue.forbids("place it in the blue bowl")
    assert not Rule("avoid_bowl", "red bowl").forbids("free text, not a subtask")


def test_rules_from_corrections_keeps_constraints_only():
    corrections = [Correction(K.NEGATION, "not the green block", subtask="pick up the green block"),
                   Correction(K.CONSTRAINT, "never use the drawer"),
                   Correction(K.CONSTRAINT, "the drawer is off limits"),
                   Correction(K.CONSTRAINT, "hands off the blue block"),
                   Correction(K.CONSTRAINT, "be careful")]
    assert rules_from_corrections(corrections, SCENE) == [Rule("avoid_drawer"), Rule("avoid_block", "blue block")]


def test_bad_rules_are_rejected():
    with pytest.raises(ValueError, match="unknown rule kind"):
        Rule("avoid_everything")
    with pytest.raises(ValueError, match="needs an object"):
        Rule("avoid_block")
