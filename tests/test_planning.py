"""The planner's contracts: the one context builder and the one "thought So: subtask" format."""

import pytest

from policies.planning import (
    CONTEXT_CORRECTIONS, PlannerContext, PlanParseError, build_planner_context, format_plan, parse_plan,
)
from policies.types import Correction, CorrectionKind, Plan, PlanContext

K = CorrectionKind


def _read(text: str) -> tuple[str, str] | None:
    try:
        plan = parse_plan(text)
    except PlanParseError:
        return None
    return plan.thought, plan.subtask


@pytest.mark.parametrize("text, expected", [
    ("The red block is on the table. So: pick up the red block", ("The red block is on the table.", "pick up the red block")),
    ("so: open the drawer.\nand then more text", ("", "open the drawer")),
    ("First so: this. Then So: close the drawer!", ("First so: this. Then", "close the drawer")),
    ("no separator at all", None),
    ("Thinking. So:   \n", None),
])
def test_answers_are_parsed_at_the_last_so(text, expected):
    assert _read(text) == expected


@pytest.mark.parametrize("thought, subtask", [("the drawer is shut", "open the drawer"), ("", "pick up the red block")])
def test_a_formatted_plan_parses_back(thought, subtask):
    text = format_plan(thought, subtask)
    assert "So: " in text
    assert _read(text) == (thought, subtask)


def test_the_context_keeps_the_last_planning_corrections_and_the_subtask_in_force():
    said = [Correction(K.CONSTRAINT, "never use the drawer"), Correction(K.CONFIRM, "good")]
    said += [Correction(K.OVERRIDE, f"pick up the block {i}") for i in range(CONTEXT_CORRECTIONS)]
    context = PlanContext(task="tidy up", plan_history=[Plan("", "pick up the red block")], corrections=said,
                          completed_subtasks=["open the drawer", "pick up the red block"])
    ctx = build_planner_context(context)
    assert ctx.texts == [f"pick up the block {i}" for i in range(CONTEXT_CORRECTIONS)]
    assert ctx.in_force == "pick up the red block" and ctx.last("done") == "pick up the red block"
    assert PlannerContext.from_dict(ctx.to_dict()) == ctx
    first = build_planner_context(PlanContext(task="tidy up"))
    assert first.last("in_force") is None and first.last("done") is None and first.corrections == ()
