"""Facts (issue 33): a statement about the scene is read as a fact, never acted on as an order, put in
place of the planner's reading, recorded with its frame and exported as a perception label, and the
scripted coach states one when the plan's scene line contradicts the simulator."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from agent.coaching.classify import ClassifiedCorrection, ReferenceContext, classify
from agent.coaching.facts import is_fact_statement, parse_fact
from agent.coaching.understand import understand
from agent.envs import make_env
from agent.envs.oracle import OraclePlanner
from agent.envs.scene_facts import scene_facts
from agent.runtime.state import expire_facts
from oracle_session import recorded_loop
from policies.planning import PlannerContext, build_planner_context, format_plan
from policies.scene_line import (
    NAMED, Fact, Scene, SeenBlock, apply_facts, apply_facts_to_line, contradictions, format_scene, parse_scene,
    scene_from_facts,
)
from policies.types import Correction, CorrectionKind, Plan, PlanContext
from sessions.export import ExportOptions, export_sessions
from sessions.reader import read_session
from sessions.schema import ContextData

K = CorrectionKind
SCENE = Scene((SeenBlock("red block", "table", side="left"), SeenBlock("blue block", "bowl", "green bowl"),
               SeenBlock("yellow block", "held")), drawer_open=False)


# ---------------------------------------------------------------------------------- the scene line


def test_a_fact_takes_the_place_of_the_reading_of_its_object():
    facts = [Fact("red block", "bowl", "green bowl"), Fact("blue block", "table"), Fact("yellow block", "absent"),
             Fact("drawer", "open")]
    scene = apply_facts(SCENE, facts)
    assert format_scene(scene) == ("I see: red block in the green bowl, blue block on the table at the middle; "
                                   "drawer open.")
    assert parse_scene(format_scene(scene)) == scene  # still a line of the grammar the decoder is forced with


def test_what_a_fact_leaves_open_comes_from_the_reading_or_the_task():
    # "already in the bowl": the bowl it was read in; else the one bowl the task names
    assert apply_facts(SCENE, [Fact("blue block", "bowl")]).block("blue block").where == "green bowl"
    put = apply_facts(SCENE, [Fact("red block", "bowl")], task="put the red block in the purple bowl")
    assert put.block("red block") == SeenBlock("red block", "bowl", "purple bowl")
    assert apply_facts(SCENE, [Fact("red block", "bowl")]) == SCENE  # no bowl to name: left out of the line
    # a table block keeps the side it was read at; a block not read is added at the end
    assert apply_facts(SCENE, [Fact("red block", "table")]).block("red block").side == "left"
    assert apply_facts(SCENE, [Fact("orange block", "held")]).blocks[-1] == SeenBlock("orange block", "held")
    # a later fact about the same object wins; the drawer is said only where the line says it
    assert apply_facts(SCENE, [Fact("red block", "held"), Fact("red block", "drawer")]).block("red block").place == "drawer"
    assert apply_facts(Scene(SCENE.blocks), [Fact("drawer", "open")]).drawer_open is None
    # "that's the purple bowl" (in place of the green bowl the planner named)
    renamed = apply_facts(SCENE, [Fact("purple bowl", NAMED, where="green bowl")])
    assert renamed.block("blue block").where == "purple bowl"
    assert apply_facts_to_line(format_scene(SCENE), []) == format_scene(SCENE)


def test_contradictions_are_the_true_scene_against_the_believed_one():
    true = Scene((SeenBlock("red block", "bowl", "green bowl"), SeenBlock("blue block", "bowl", "green bowl"),
                  SeenBlock("yellow block", "held")), drawer_open=True)
    said = contradictions(SCENE, true)
    assert said == [Fact("red block", "bowl", "green bowl"), Fact("drawer", "open")]
    assert apply_facts(SCENE, said) == true
    assert contradictions(true, true) == []
    assert contradictions(Scene((SeenBlock("pink block", "held"),)), Scene(())) == [Fact("pink block", "absent")]


# ---------------------------------------------------------------------------------- the reader


@pytest.mark.parametrize("text, fact", [
    ("the blue block is already in the bowl", Fact("blue block", "bowl")),
    ("the red block is on the table, not in the bowl", Fact("red block", "table")),
    ("no, the red block is on the table at the left", Fact("red block", "table", side="left")),
    ("there is no red block", Fact("red block", "absent")),
    ("the drawer is open", Fact("drawer", "open")),
    ("the drawer isn't open", Fact("drawer", "shut")),
    ("the yellow block is on top of the green block", Fact("yellow block", "block", "green block")),
    ("the green cube's in your gripper", Fact("green block", "held")),
    ("the purple block is in the drawer", Fact("purple block", "drawer")),
    ("that's the green bowl, not the blue one", Fact("green bowl", NAMED, "blue bowl")),
])
def test_the_grammar_reads_the_object_and_its_place(text, fact):
    got = classify(text)
    assert isinstance(got, ClassifiedCorrection) and got.kind is K.FACT and got.fact == fact
    assert got.subtask is None  # a fact names no subtask to do or to forbid
    assert fact.phrase() in got.reply  # the console echoes the belief it will use


def test_the_grammar_uses_what_the_robot_is_doing():
    ctx = ReferenceContext(current_subtask="place it in the blue bowl", holding="red block")
    assert parse_fact("that's the green bowl", ctx) == Fact("green bowl", NAMED, "blue bowl")
    assert parse_fact("it's in the green bowl", ctx) == Fact("red block", "bowl", "green bowl")
    assert parse_fact("it's in the green bowl") is None  # "it" with nothing held: no object


@pytest.mark.parametrize("text, fact", [
    # words of a rule that report the past ("never", "any more") leave a statement a statement
    ("the purple block is on the table, it never got picked up", Fact("purple block", "table")),
    ("the purple block is not in the green bowl any more", Fact("purple block", "table")),
    ("the drawer was never closed", Fact("drawer", "open")),
    # a place denied in general, a side said as a part of the table, a vague place then the real one
    ("the red cube isn't in any bowl now", Fact("red block", "table")),
    ("the orange block is in the middle of the table", Fact("orange block", "table", side="middle")),
    ("the orange block is in the left bowl", Fact("orange block", "bowl")),  # a bowl, not the table's left
    ("the blue block is already in here, in the yellow bowl", Fact("blue block", "bowl", "yellow bowl")),
    ("the yellow block is not anywhere", Fact("yellow block", "absent")),
    # other verbs of where a block came to rest, and "has been"
    ("the green block has already been dropped into the purple bowl", Fact("green block", "bowl", "purple bowl")),
    ("the green block made it into the orange bowl", Fact("green block", "bowl", "orange bowl")),
    ("the blue block: already in the red bowl", Fact("blue block", "bowl", "red bowl")),
    ("the yellow cube, it is in the blue bowl", Fact("yellow block", "bowl", "blue bowl")),
    # the place before the block
    ("there is a green block in the red bowl", Fact("green block", "bowl", "red bowl")),
    ("the orange bowl already has the yellow block in it", Fact("yellow block", "bowl", "orange bowl")),
    ("you are holding the small green block", Fact("small green block", "held")),
    ("the red block is underneath the orange block", Fact("orange block", "block", "red block")),
    ("you already put the purple block in the red bowl", Fact("purple block", "bowl", "red bowl")),
    # bowls named in place of another
    ("that is not the red bowl, it is the blue one", Fact("blue bowl", NAMED, "red bowl")),
    ("the bowl you went to is the yellow one", Fact("yellow bowl", NAMED)),
])
def test_the_grammar_reads_statements_people_make_in_other_words(text, fact):
    got = classify(text)
    assert isinstance(got, ClassifiedCorrection) and got.kind is K.FACT and got.fact == fact
    named = [o for o in (fact.subject, fact.where) if o]
    assert list(got.objects[: len(named)]) == named  # the objects the fact names come first, bowls as bowls


@pytest.mark.parametrize("text", [
    "you put the red block in the blue bowl",  # without "already": it may be an order
    "keep the drawer open", "the red block is away",
])
def test_lines_that_may_be_orders_are_not_read_as_facts(text):
    assert parse_fact(text) is None and not is_fact_statement(text)


@pytest.mark.parametrize("text", [
    "is the red block in the bowl?", "the drawer must stay shut", "pretend the red block isn't there",
    "the blue bowl is the wrong bowl", "it's the red block you need", "that's the block", "keep the drawer shut",
    "no, the blue one first", "not the red block", "the blue bowl is the right one",
])
def test_orders_rules_and_questions_are_not_facts(text):
    assert not is_fact_statement(text)
    got = classify(text)
    assert not (isinstance(got, ClassifiedCorrection) and got.kind is K.FACT)


def _probs(intent: str, p: float = 0.95):
    return lambda text: {intent: p, "override" if intent != "override" else "negation": 1 - p}


def test_a_statement_is_never_acted_on_as_an_order_whatever_the_model_hears():
    for heard in ("override", "negation", "nudge"):
        u = understand("the blue block is already in the red bowl", probs=_probs(heard))
        assert u.intent == "fact" and u.item.kind is K.FACT and u.unsure  # read as a fact, asked back
        assert u.item.fact == Fact("blue block", "bowl", "red bowl")
    sure = understand("the blue block is already in the red bowl", probs=_probs("fact"))
    assert sure.intent == "fact" and not sure.unsure and sure.meaning() == "believe: the blue block is in the red bowl"
    # the model hears a fact the grammar cannot place: asked back, and still no order
    vague = understand("you've got it all wrong about where things are", probs=_probs("fact"))
    assert vague.intent == "fact" and vague.unsure and vague.item.fact is None


def test_an_order_read_from_a_statement_the_grammar_cannot_place_is_asked_back(monkeypatch):
    import agent.coaching.understand as reader

    # "the red block is away": a statement's shape, no place the grammar knows; the model hears an order
    for heard in ("override", "negation"):
        u = understand("the red block is away", probs=_probs(heard))
        assert u.intent == heard and u.unsure and "statement" in u.why_unsure
    assert not understand("pick up the red block", probs=_probs("override")).unsure  # an order stays one
    assert not understand("no, the orange block is wrong", probs=_probs("negation")).unsure  # so does a refusal

    class Loading:
        def is_alive(self):
            return True

    monkeypatch.setattr(reader, "_loader", Loading())  # the grammar alone reads it as a negation: asked back
    u = reader.understand("the red block isn't to the side")
    assert u.item.kind is K.NEGATION and u.unsure and "statement" in u.why_unsure


# ---------------------------------------------------------------------------------- the planner context


def test_facts_in_force_are_part_of_the_planner_context_and_not_of_its_text():
    fact = Correction(K.FACT, "the red block is in the blue bowl", fact=Fact("red block", "bowl", "blue bowl"))
    ctx = PlanContext(task="t", corrections=[fact], facts=[fact])
    read = build_planner_context(ctx)
    assert read.facts == (Fact("red block", "bowl", "blue bowl"),) and read.corrections == ()
    assert PlannerContext.from_dict(read.to_dict()) == read
    assert ContextData.model_validate(read.to_dict()).facts[0].where == "blue bowl"  # the recorder's schema takes it


def test_a_fact_holds_until_its_block_is_moved():
    def said(fact: Fact) -> Correction:
        return Correction(K.FACT, fact.phrase(), fact=fact)

    red, drawer, held = said(Fact("red block", "table")), said(Fact("drawer", "open")), said(Fact("blue block", "held"))
    facts = [red, drawer, held]
    expire_facts(facts, "pick up the green block")
    assert facts == [red, drawer, held]
    expire_facts(facts, "pick up the red block")
    assert facts == [drawer, held]
    expire_facts(facts, "place it in the green bowl")  # the held block was moved
    assert facts == [drawer]
    expire_facts(facts, "close the drawer")
    assert facts == []


# ---------------------------------------------------------------------------------- the loop, recorded, exported


class FactReadingOracle(OraclePlanner):
    """The oracle's plans, noting the facts each plan was asked with."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[tuple] = []

    def plan(self, obs, context):
        self.seen.append(build_planner_context(context).facts)
        return super().plan(obs, context)


@pytest.fixture(scope="module")
def fact_session(tmp_path_factory):
    """An oracle + expert episode with one fact said at step 4 (about a block the task leaves alone, so it
    holds to the end), recorded; what the loop did meanwhile."""
    out = tmp_path_factory.mktemp("fact_session")
    env = make_env(family="put_color_in_bowl", image_size=32)
    high = FactReadingOracle(seed=0)
    with recorded_loop(out / "s", env, high, seed=0) as loop:
        loop.reset(seed=0)
        for _ in range(4):
            loop.step()
        block = sorted(loop.latest_observation().privileged.blocks)[0]
        before = loop.snapshot().plan
        loop.submit(classify(f"the {block} is already in the purple bowl"))
        loop.step()
        seen, after = high.seen[-1], loop.snapshot()
        for _ in range(25):  # past a timer re-plan (every 20 steps): a plan made while the fact holds
            loop.step()
    return {"path": out / "s", "block": block, "before": before, "after": after, "seen": seen, "root": out}


def test_a_fact_replans_from_the_belief_never_as_an_order_and_is_exported_as_a_label(fact_session):
    block, before, after = fact_session["block"], fact_session["before"], fact_session["after"]
    assert fact_session["seen"] == (Fact(block, "bowl", "purple bowl"),)  # the next plan read it
    assert after.plan.source != "human" and after.plan.subtask == before.subtask or after.plan.source == "oracle"
    assert after.last_reply.startswith(f"belief: the {block} is in the purple bowl")
    episode = read_session(fact_session["path"]).episodes[0]
    [c] = episode.corrections
    assert c.kind is K.FACT and c.step == 4 and c.fact.subject == block and c.fact.place == "bowl"
    assert any(p.context is not None and p.context.facts for p in episode.plans)
    out = fact_session["root"] / "ds"
    export_sessions([fact_session["path"]], out, ExportOptions(format="lerobot", video_codec="lossless"))
    rows = pq.read_table(out / "data" / "chunk-000" / "file-000.parquet").to_pylist()
    events = [(r["frame_index"], e) for r in rows for e in r["language_events"]]
    [(frame, event)] = [(f, e) for f, e in events if e["style"] == "fact"]
    assert frame == 4 and event["content"] == c.text and event["role"] == "user"
    call = json.loads(event["tool_calls"][0]) if isinstance(event["tool_calls"][0], str) else event["tool_calls"][0]
    assert call["function"]["arguments"]["subject"] == block
    assert not [e for _, e in events if e["style"] == "interjection"]


def test_a_fact_survives_into_the_sft_export_as_a_turn_and_into_the_finetune_reader(fact_session):
    from agent.training.sft_data import load_sft_export

    block = fact_session["block"]
    stated = Fact(block, "bowl", "purple bowl")
    out = fact_session["root"] / "sft"
    report = export_sessions([fact_session["path"]], out, ExportOptions(format="sft"))
    assert report.by_kind.get("fact") == 1
    rows = pq.read_table(out / "train.parquet").to_pylist()
    [row] = [r for r in rows if r["kind"] == "fact"]
    # the fact's turn: the person's statement as data, the user turn with the belief in force, the
    # assistant turn the plan made after it
    assert row["fact"] == stated.to_dict() and row["step"] == 4 and row["source"] == "human"
    assert row["context"]["facts"] == [stated.to_dict()]
    user, assistant = row["messages"]
    assert user["role"] == "user" and f"Facts: {stated.phrase()}" in user["content"][-1]["text"]
    episode = read_session(fact_session["path"]).episodes[0]
    caused = next(p for p in episode.plans if p.reason == "correction")
    assert assistant["content"][0]["text"] == format_plan(caused.plan.thought, caused.plan.subtask)
    assert row["weight"] > 0 and row["subtask"] == caused.plan.subtask
    # plans made while the fact holds read it too; none before it does
    plans = [r for r in rows if r["kind"] == "plan"]
    assert any(r["step"] > 4 for r in plans) and all(r["context"]["facts"] == ([stated.to_dict()] if r["step"] > 4 else []) for r in plans)
    assert all("Facts:" not in r["messages"][0]["content"][-1]["text"] for r in plans if r["step"] < 4)
    # what `hivla finetune` reads: the planner context with the fact
    [example] = [e for e in load_sft_export([out]) if e.key.endswith("/fact")]
    assert example.context.facts == (stated,) and example.subtask == caused.plan.subtask


# ---------------------------------------------------------------------------------- the scripted coach


def test_the_coach_states_what_is_true_when_the_scene_line_is_wrong():
    from agent.coaching.scripted import ScriptedCoach

    env = make_env(family="put_color_in_bowl", image_size=32)
    obs, info = env.reset(seed=0)
    world = info.get("privileged") or env.unwrapped_world if hasattr(env, "unwrapped_world") else info.get("privileged")
    world = world if world is not None else obs.get("privileged")
    true = scene_from_facts(scene_facts(world), obs["task"] if isinstance(obs, dict) and "task" in obs else "")
    wrong = apply_facts(true, [Fact(true.blocks[0].name, "held")])
    said = []
    for seed in range(6):
        coach = ScriptedCoach(seed=seed, delay_steps=1, facts_only=True)
        plan = Plan(thought=format_scene(wrong) + " I pick it up.", subtask="pick up the red block")
        for step in range(4):
            u = coach.observe(obs, {**info, "privileged": world}, plan, step)
            if u is not None:
                said.append(u)
                break
    assert said and all(u.kind is K.FACT and u.agrees and u.subtask is None for u in said)
    assert all(u.fact.subject == true.blocks[0].name and u.fact.place == true.blocks[0].place for u in said)
    assert len({u.text for u in said}) > 1  # varied words


def test_contradictions_name_the_side_a_table_block_is_at():
    believed = Scene((SeenBlock("red block", "table", side="right"),))
    true = Scene((SeenBlock("red block", "table", side="left"),))
    assert contradictions(believed, true) == [Fact("red block", "table", side="left")]
    assert Fact("red block", "table", side="left").holds_in(true) and Fact("red block", "table").holds_in(true)
    assert not Fact("red block", "table", side="left").holds_in(believed)
    assert Fact("blue block", "absent").holds_in(true) and not Fact("red block", "absent").holds_in(true)


def _scene_facts(red: tuple) -> dict:
    """Simulator facts of a two-block scene, the red block at `red` = (place, where, x)."""
    place, where, x = red
    return {"blocks": {"red block": {"place": place, "where": where, "x": x},
                       "blue block": {"place": "table", "where": None, "x": 0.2}},
            "drawer_open": False, "bowls": ["blue bowl"]}


def _coach_says(monkeypatch, worlds: list[dict], line: str, seed: int = 0, delay: int = 2):
    """What the facts coach says over len(worlds) steps (step 1 on), the simulator's scene at step k being
    worlds[k - 1], with one plan in force from step 2 whose scene line is `line` (read from step 1's
    frame; step 1's plan has step 1's true line): (step, utterance) of the first thing said."""
    import agent.coaching.scripted as scripted

    env = make_env(family="put_color_in_bowl", image_size=32)
    obs, info = env.reset(seed=0)
    now = {}
    monkeypatch.setattr(scripted, "scene_facts", lambda world: now["facts"])
    coach = scripted.ScriptedCoach(seed=seed, delay_steps=delay, facts_only=True)
    for step, facts in enumerate(worlds, start=1):
        now["facts"] = facts
        first = format_scene(scene_from_facts(worlds[0], obs["task"]))
        plan = Plan(thought=(line if step >= 2 else first) + " I pick it up.", subtask="pick up the red block")
        said = coach.observe(obs, info, plan, step)
        if said is not None:
            return step, said
    return None, None


def test_the_coach_judges_a_line_on_the_frame_it_was_read_from_and_says_only_what_still_holds(monkeypatch):
    on_table, moving, held = ("table", None, -0.2), ("moving", None, -0.2), ("held", None, -0.2)
    line = "I see: red block in the gripper, blue block on the table at the right; bowls: blue."
    # the plan was read at step 1 (red on the table); the coach first sees it at step 2, the block being
    # bumped (moving), then still on the table: it says so (before: judged at step 2, moving, said nothing)
    step, said = _coach_says(monkeypatch, [_scene_facts(s) for s in (on_table, moving, on_table, on_table,
                                                                      on_table, on_table)], line)
    assert said is not None and said.kind is K.FACT and said.intended_fact == Fact("red block", "table", side="left")
    # the line's block was on the table at the frame it was read from, but the robot has picked it up
    # since: nothing said (before: "the red block is on the table", false when said)
    step, said = _coach_says(monkeypatch, [_scene_facts(s) for s in (on_table, on_table, held, held, held, held)],
                             line)
    assert said is None


def test_the_coach_names_what_the_line_got_wrong(monkeypatch):
    on_left = _scene_facts(("table", None, -0.2))
    wrong_side = "I see: blue block on the table at the right, red block on the table at the right; bowls: blue."
    missing = "I see: blue block on the table at the right; bowls: blue."
    for line in (wrong_side, missing):
        for seed in range(6):
            step, said = _coach_says(monkeypatch, [on_left] * 6, line, seed=seed)
            assert said is not None and said.agrees, (line, seed)
            # the words say the side, so the corrected line and the fact's label have it
            assert said.fact == Fact("red block", "table", side="left"), (line, seed, said.text)
