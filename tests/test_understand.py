"""The console's reading of typed lines (agent.coaching.understand) and the ask-back in the controller.

The utterances the issue quotes, read with the shipped intent model (sentence encoder + head), and
the controller's ask-back and question routing with a stand-in loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from agent.coaching.understand import Understanding, mend_spelling, understand
from agent.console.controller import CoachController
from agent.inputs import Command, CommandName, Reply
from policies.base import SceneQuestionAnswerer
from policies.types import Correction, CorrectionKind as K, Observation


@pytest.mark.parametrize("text,kind,rule", [
    ("leave the green block where it is", K.CONSTRAINT, "leave the green block alone"),
    ("keep the drawer shut", K.CONSTRAINT, "never use the drawer"),
    ("don't you dare open the drawer", K.CONSTRAINT, "never use the drawer"),
    ("hands off the red block", K.CONSTRAINT, "leave the red block alone"),
])
def test_negated_rules_are_rules_never_their_opposite(text, kind, rule):
    u = understand(text)
    assert isinstance(u.item, Correction) and u.item.kind is kind and str(u.rule) == rule
    assert u.item.subtask is None  # a rule, not "pick up the green block" / "close the drawer"


def stub(**p):
    return lambda text: {"unclear": 0.0, **p}


def test_the_grammar_reading_the_opposite_makes_it_unsure():
    # the grammar alone reads "pick up the green block": a rule the model is not quite sure of is asked back
    u = understand("leave the green block where it is", probs=stub(constraint=0.85, override=0.15))
    assert u.unsure and u.meaning() == "never touch the green block for this episode"
    assert not understand("leave the green block where it is", probs=stub(constraint=0.95, override=0.05)).unsure
    # an override where the grammar hears a rule is always asked back, however sure the model is
    u = understand("never touch the blue block", probs=stub(override=0.99, constraint=0.01))
    assert u.unsure and u.meaning() == "pick up the blue block now"
    assert not understand("never touch the blue block", probs=stub(constraint=0.99)).unsure


@pytest.mark.parametrize("text", ["what do you see?", "why did you do that?"])
def test_questions_are_questions(text):
    u = understand(text)
    assert u.intent == "question" and u.item == Command(CommandName.ASK, text, "")


@pytest.mark.parametrize("text,name", [("slower please", CommandName.SLOW), ("faster", CommandName.FAST)])
def test_pace_requests_are_the_pace_commands(text, name):
    u = understand(text)
    assert isinstance(u.item, Command) and u.item.name is name


@pytest.mark.parametrize("text,kind,subtask", [
    ("no, the blue one first", K.OVERRIDE, "pick up the blue block"),
    ("not the yellow one, the orange one", K.OVERRIDE, "pick up the orange block"),
    ("not that one", K.NEGATION, None),
    ("a bit more to the left", K.NUDGE, None),
    ("stop", K.STOP, None),
])
def test_everyday_corrections(text, kind, subtask):
    u = understand(text)
    assert u.item.kind is kind and u.item.subtask == subtask


def test_lines_that_ask_for_nothing_get_a_reply():
    for text in ("hmm", "asdf qwer zxcv", "12345"):
        assert isinstance(understand(text).item, Reply), text


def test_slash_commands_and_prefixes_stay_the_grammars_and_sure():
    u = understand("/rule the drawer stays shut")
    assert u.item.kind is K.CONSTRAINT and u.item.forced and not u.unsure
    assert understand("/ask what is in the red bowl?").item == Command(CommandName.ASK, "what is in the red bowl?",
                                                                       "asking: what is in the red bowl?")


def test_object_words_are_mended():
    assert mend_spelling("pick up the gren blok") == "pick up the green block"
    assert mend_spelling("leave the yelow one") == "leave the yellow one"
    assert mend_spelling("move back, read the bed") == "move back, read the bed"  # real words stay
    assert understand("grab the purpel cube").objects == ("purple block",)


# ---------------------------------------------------------------------- the controller


@dataclass
class StandInLoop:
    high: object = None
    _obs: object = None
    submitted: list = field(default_factory=list)

    recorded: list = field(default_factory=list)

    def submit(self, item):
        self.submitted.append(item)

    def latest_observation(self):
        return self._obs

    def record_question(self, question, answer):
        self.recorded.append((question, answer))

    def snapshot(self):
        return None


def unsure_reading(text, context):
    return Understanding(Correction(kind=K.CONSTRAINT, text=text), "constraint", 0.4, why_unsure="40% sure")


def test_ask_back_n_records_nothing_y_records_the_reading():
    loop = StandInLoop()
    ctl = CoachController(loop, understand=unsure_reading, ask_back=True)
    asked = ctl.handle("leave the green block where it is")
    assert asked.reply.startswith("did you mean: ") and asked.reply.endswith("? (y / n / rephrase)")
    assert asked.submitted is None and loop.submitted == []
    assert "nothing recorded" in ctl.handle("n").reply and loop.submitted == []
    ctl.handle("leave the green block where it is")
    done = ctl.handle("y")
    assert [c.text for c in loop.submitted] == ["leave the green block where it is"] and done.submitted is loop.submitted[0]


def test_ask_back_a_rephrased_line_is_read_afresh():
    loop = StandInLoop()
    ctl = CoachController(loop, ask_back=True)
    ctl.handle("the blue bowl is where it should go")  # the model is about 54% sure it is an override
    assert ctl.pending is not None
    out = ctl.handle("no, the blue one first")  # not y / n: the line stands for itself
    assert ctl.pending is None and out.submitted.kind is K.OVERRIDE and loop.submitted == [out.submitted]


def test_without_ask_back_the_reading_is_acted_on():
    loop = StandInLoop()
    out = CoachController(loop, understand=unsure_reading).handle("leave the green block where it is")
    assert loop.submitted == [out.submitted]


class Answerer:
    def reset(self):
        pass

    def plan(self, obs, context):
        raise AssertionError("a question must not re-plan")

    def answer(self, obs, question):
        return f"I see a red block ({question})"


def _obs():
    img = np.zeros((8, 8, 3), np.uint8)
    return Observation(images={"front": img, "wrist": img}, state=np.zeros(3, np.float32), task="t", time=0.0)


def test_questions_go_to_the_high_level_and_change_nothing():
    assert isinstance(Answerer(), SceneQuestionAnswerer)
    loop = StandInLoop(high=Answerer(), _obs=_obs())
    ctl = CoachController(loop, ask_back=True)
    out = ctl.handle("what do you see?")
    assert out.reply == "Q: what do you see?\nA: I see a red block (what do you see?)"
    assert ctl.handle("/ask why the red one?").reply.startswith("Q: why the red one?")
    assert loop.submitted == [] and out.submitted is None
    assert loop.recorded[0] == ("what do you see?", "I see a red block (what do you see?)")


def test_a_high_level_that_cannot_answer_says_so_in_one_line():
    loop = StandInLoop(high=object(), _obs=_obs())
    reply = CoachController(loop).handle("what do you see?").reply
    assert "does not answer questions" in reply and "\n" not in reply and loop.submitted == []


def test_lines_typed_while_the_model_loads_are_the_grammars_and_unsure(monkeypatch):
    import agent.coaching.understand as reader

    class Loading:
        def is_alive(self):
            return True

    monkeypatch.setattr(reader, "_loader", Loading())
    u = reader.understand("leave the green block where it is")  # the grammar's override: asked back
    assert u.item.kind is K.OVERRIDE and u.item.subtask == "pick up the green block"
    assert u.unsure and "still loading" in u.why_unsure
    u = reader.understand("never touch the blue block")  # its other readings hold, as before the model
    assert u.item.kind is K.CONSTRAINT and not u.unsure
    assert isinstance(reader.understand("asdf qwer").item, Reply)
