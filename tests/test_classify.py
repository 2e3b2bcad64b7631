"""The console-text classifier: kinds, commands, subtask extraction and robustness."""

from __future__ import annotations

import pytest

from agent.coaching.classify import MAX_CHARS, ClassifiedCorrection, ReferenceContext, classify
from agent.inputs import Command, CommandName, Reply
from policies.types import CorrectionKind as K


def kind_of(text: str, context: ReferenceContext | None = None):
    result = classify(text, context)
    assert isinstance(result, ClassifiedCorrection), f"{text!r} -> {result!r}"
    return result.kind


PHRASINGS = {
    K.OVERRIDE: [
        "pick up the blue block", "no, the blue one first", "do the drawer now", "put it in the green bowl instead",
        "grab the red cube", "the yellow one", "start with the green block", "open the drawer",
        "push the yellow block to the left", "stack it on the red block", "go for the small blue block",
        "wait, the blue one first",
    ],
    K.NEGATION: [
        "not that one", "don't touch the red block", "wrong block", "no, not that", "that's wrong",
        "not the blue bowl", "nope", "stop, wrong block", "don't put it in the drawer", "the other one",
        "stop picking up the red block", "incorrect",
    ],
    K.CONSTRAINT: [
        "never use the drawer", "always stack the small ones on top", "from now on leave the green block alone",
        "stay away from the red bowl", "avoid the yellow block", "don't ever open the drawer",
        "the blue block is off limits", "for the rest of the episode only use the green bowl",
        "don't touch the red block anymore",
    ],
    K.NUDGE: [
        "a bit left", "lower", "move forward a little", "open the gripper", "rotate clockwise", "higher",
        "a little more to the right", "let go", "go down slightly", "turn anticlockwise a bit", "close your hand",
        "further back",
    ],
    K.STOP: ["stop!", "STOP", "stop stop stop", "halt", "freeze!", "whoa", "stop right there", "emergency stop"],
    K.PAUSE: ["wait", "hold on", "hang on", "one second", "wait a moment", "just a sec", "hold it", "pause"],
    K.RESUME: ["go on", "continue", "carry on", "keep going", "go ahead", "resume", "ok, you can continue", "proceed"],
    K.CONFIRM: ["yes good", "that's right", "nice", "good job", "well done", "perfect", "exactly", "yes, that one",
                "👍"],
}


@pytest.mark.parametrize("kind,text", [(k, t) for k, texts in PHRASINGS.items() for t in texts])
def test_each_kind_is_recognised_in_varied_phrasings(kind, text):
    assert kind_of(text) is kind


def test_every_kind_has_at_least_eight_phrasings():
    assert all(len(texts) >= 8 for texts in PHRASINGS.values())


@pytest.mark.parametrize("text,kind,subtask", [
    # an override names the subtask to do instead
    ("pick up the blue block", K.OVERRIDE, "pick up the blue block"),
    ("no, the blue one first", K.OVERRIDE, "pick up the blue block"),
    ("put it in the green bowl instead", K.OVERRIDE, "place it in the green bowl"),
    ("do the drawer now", K.OVERRIDE, "open the drawer"),
    ("close the drawer", K.OVERRIDE, "close the drawer"),
    ("stack it on the green block", K.OVERRIDE, "stack it on the green block"),
    ("push the yellow block to the left", K.OVERRIDE, "push the yellow block to the left"),
    ("push the red block forward", K.OVERRIDE, "push the red block to the front"),
    ("grab the big red cube", K.OVERRIDE, "pick up the large red block"),
    ("the small blue one", K.OVERRIDE, "pick up the small blue block"),
    ("put it down", K.OVERRIDE, "put it down on the table"),
    ("the blue one, not the red one", K.OVERRIDE, "pick up the blue block"),
    ("put it in the drawer", K.OVERRIDE, "put it in the drawer"),
    # a negation names the subtask it forbids
    ("don't touch the red block", K.NEGATION, "pick up the red block"),
    ("not the blue bowl", K.NEGATION, "place it in the blue bowl"),
    ("don't open the drawer", K.NEGATION, "open the drawer"),
    ("not on the green block", K.NEGATION, "stack it on the green block"),
])
def test_overrides_and_negations_extract_the_canonical_subtask(text, kind, subtask):
    result = classify(text)
    assert result.kind is kind and result.subtask == subtask


def test_context_resolves_the_one_and_that_one():
    placing = ReferenceContext(current_subtask="place it in the red bowl", holding="red block")
    assert classify("no, the blue one", placing).subtask == "place it in the blue bowl"
    assert classify("not that one", placing).subtask == "place it in the red bowl"
    assert classify("wrong bowl", placing).subtask == "place it in the red bowl"
    stacking = ReferenceContext(current_subtask="stack it on the red block", holding="blue block")
    assert classify("the green one", stacking).subtask == "stack it on the green block"
    # with the held block known, "put the red block in the blue bowl" is the place step
    holding_red = ReferenceContext(holding="red block")
    assert classify("put the red block in the blue bowl", holding_red).subtask == "place it in the blue bowl"
    assert classify("put the red block in the blue bowl").subtask == "pick up the red block"


def test_scene_names_resolve_sizes():
    ctx = ReferenceContext(scene_blocks=("large red block", "blue block"))
    assert classify("the red one first", ctx).subtask == "pick up the large red block"
    two_reds = ReferenceContext(scene_blocks=("small red block", "large red block"))
    assert classify("the small red one", two_reds).subtask == "pick up the small red block"


def test_do_the_drawer_follows_the_pending_subtasks():
    ctx = ReferenceContext(pending_subtasks=("put it in the drawer", "close the drawer"), holding="red block")
    assert classify("do the drawer now", ctx).subtask == "put it in the drawer"


def test_unknown_colour_is_noted_and_gives_no_subtask():
    result = classify("pick up the pink block")
    assert result.kind is K.OVERRIDE and result.subtask is None
    assert "no pink block" in result.reply


@pytest.mark.parametrize("text,name,argument", [
    ("/pause", CommandName.PAUSE, ""), ("/resume", CommandName.RESUME, ""), ("/reset", CommandName.RESET, ""),
    ("/task stack the red block on the blue block", CommandName.TASK, "stack the red block on the blue block"),
    ("/undo", CommandName.UNDO, ""), ("/good", CommandName.GOOD, ""), ("/save", CommandName.SAVE, ""),
    ("/help", CommandName.HELP, ""), ("/quit", CommandName.QUIT, ""), ("/QUIT", CommandName.QUIT, ""),
    ("  /exit  ", CommandName.QUIT, ""),
])
def test_console_commands(text, name, argument):
    result = classify(text)
    assert isinstance(result, Command) and result.name is name and result.argument == argument
    assert result.reply


@pytest.mark.parametrize("text,kind,subtask", [
    ("/override pick the blue one", K.OVERRIDE, "pick up the blue block"),
    ("/not the red block", K.NEGATION, "pick up the red block"),
    ("/rule the drawer stays shut", K.CONSTRAINT, None),
    ("/nudge left", K.NUDGE, None),
    ("/stop", K.STOP, None),
    ("override: the blue one", K.OVERRIDE, "pick up the blue block"),
    ("rule: blue block first", K.CONSTRAINT, None),  # the prefix wins over the words
    ("nudge: the red block", K.NUDGE, None),
])
def test_forcing_prefixes_choose_the_kind(text, kind, subtask):
    result = classify(text)
    assert isinstance(result, ClassifiedCorrection) and result.forced
    assert result.kind is kind and result.subtask == subtask


def test_help_lists_the_commands():
    reply = classify("/help").reply
    for word in ("/pause", "/task", "/override", "/rule", "/nudge"):
        assert word in reply


@pytest.mark.parametrize("text,expected", [
    ("/foo", "unknown command /foo — try /help"),
    ("/task", "/task needs"),
    ("/override", "/override needs"),
    ("/", "not a command"),
])
def test_bad_commands_get_a_clear_reply(text, expected):
    result = classify(text)
    assert isinstance(result, Reply) and expected in result.reply


@pytest.mark.parametrize("text", ["", "   ", "\t\n", None, "\x00\x01\x02"])
def test_empty_input_is_a_reply(text):
    result = classify(text)
    assert isinstance(result, Reply) and "empty" in result.reply


def test_control_characters_are_stripped_and_noted():
    result = classify("st\x00op\x1b!\x07")
    assert isinstance(result, ClassifiedCorrection) and result.kind is K.STOP
    assert result.text == "stop!" and "control character" in result.reply


def test_very_long_lines_are_cut_with_a_note():
    result = classify("a bit left " + "and more " * 200)
    assert isinstance(result, ClassifiedCorrection) and result.kind is K.NUDGE
    assert len(result.text) <= MAX_CHARS and f"cut to {MAX_CHARS}" in result.reply


def test_non_ascii_is_kept_and_classified_where_possible():
    assert kind_of("stop 🛑") is K.STOP
    assert kind_of("don’t touch the red block") is K.NEGATION  # curly apostrophe
    assert classify("pick up the blue block ✨").subtask == "pick up the blue block"
    unknown = classify("¡para, por favor!")
    assert isinstance(unknown, Reply) and "¡para" in unknown.reply


@pytest.mark.parametrize("junk", ["hmm", "asdf qwer", "12345", "???", "the", b"\xff\xfe bytes", 42, "x" * 5000])
def test_unclassifiable_input_never_raises(junk):
    result = classify(junk)
    assert isinstance(result, (Reply, ClassifiedCorrection, Command))
    assert isinstance(result.reply, str) and result.reply


def test_priorities_between_clauses():
    assert kind_of("stop! wrong block") is K.NEGATION
    assert kind_of("no, stop") is K.STOP  # a bare "no" only counts when nothing else does
    assert kind_of("good, now the blue one") is K.OVERRIDE
    assert kind_of("good, keep going") is K.RESUME
    assert kind_of("wait, a bit left") is K.NUDGE
    assert kind_of("never mind, carry on") is K.RESUME  # "never mind" is not a rule
