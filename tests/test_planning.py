"""The planner's contracts: the one context builder and the one "thought So: subtask" format."""

import pytest

from policies.planning import (
    CONTEXT_CORRECTIONS, HISTORY_SUBTASKS, PlannerContext, PlanParseError, build_planner_context, format_plan, parse_plan,
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


def test_a_history_context_lists_the_subtasks_done_and_the_one_still_under_way():
    done = ["pick up the red block", "place it in the green bowl", "pick up the blue block",
            "place it in the red bowl", "pick up the red block"][-HISTORY_SUBTASKS - 1:]
    # a subtask just completed: the history only (the planner decides what comes next)
    ctx = PlannerContext(task="swap", done=tuple(done), in_force=done[-1])
    assert ctx.last("history") == "done: " + "; ".join(done[-HISTORY_SUBTASKS:])
    # the timer mid-subtask: the one in force is named apart, so the planner can keep it
    mid = PlannerContext(task="swap", done=tuple(done), in_force="place it in the blue bowl")
    assert mid.last("history").endswith(" | doing: place it in the blue bowl")
    # a swap's first move and its last differ here, where the subtask done last is the same
    first = PlannerContext(task="swap", done=("pick up the red block",), in_force="pick up the red block")
    assert first.last("done") == ctx.last("done") and first.last("history") != ctx.last("history")
    assert PlannerContext(task="swap", in_force="pick up the red block").last("history") == "doing: pick up the red block"
    assert PlannerContext(task="swap").last("history") is None
