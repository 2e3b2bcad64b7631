"""Memory within a session: a rule said for good is kept for every later episode (planner context,
oracle, recorded events, LeRobot `memory` rows), listed by /rules and dropped by /forget N."""

from __future__ import annotations

import pyarrow.parquet as pq

from agent.coaching.classify import classify
from agent.console.controller import CoachController
from agent.envs import make_env
from agent.envs.expert import ScriptedExpert
from agent.envs.oracle import OraclePlanner
from agent.inputs import Command, CommandName
from agent.loop import ControlLoop
from agent.memory import SessionMemory
import dataclasses

import numpy as np

from oracle_session import recorded_loop
from policies.pi05.configuration import make_config
from policies.pi05.processor import NormStats, Pi05Processor, train_tokenizer
from policies.planning import PlannerContext, build_planner_context
from policies.rules import Rule
from policies.types import CorrectionKind
from sessions.export import ExportOptions, export_sessions
from sessions.reader import read_session

RULE = "from now on leave the red block alone"


class SeeingOracle(OraclePlanner):
    """The oracle, noting the context of every plan (what build_planner_context gives any high level)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen: list[tuple[str, PlannerContext]] = []

    def plan(self, obs, context):
        self.seen.append((obs.task, build_planner_context(context)))
        return super().plan(obs, context)


def _processor() -> Pi05Processor:
    tok = train_tokenizer([RULE, "last: pick up the blue block | rule: leave alone", "put each block in the bowl"] * 3,
                          vocab_size=300)
    cfg = dataclasses.replace(make_config("tiny", vocab_size=tok.get_vocab_size()), max_context_tokens=200)
    rng = np.random.default_rng(0)
    return Pi05Processor(cfg, tok, NormStats.from_data(rng.normal(size=(50, cfg.state_dim)), rng.normal(size=(50, cfg.action_dim))))


def _red_seeds(env, n):
    seeds, seed = [], 0
    while len(seeds) < n:
        _, info = env.reset(seed=seed, options={"family": "sort_into_bowls"})
        if "red block" in info["privileged"].blocks:
            seeds.append(seed)
        seed += 1
    return seeds


def test_lasting_and_episode_rules_are_told_apart():
    said = classify(RULE)
    assert said.kind is CorrectionKind.CONSTRAINT and said.lasting and said.rule == Rule("avoid_block", "red block")
    assert classify("/rule never use the drawer").lasting
    assert not classify("avoid the red block").lasting
    assert not classify("never use the drawer this time").lasting
    assert isinstance(classify("/rules"), Command) and classify("/forget 2") == Command(CommandName.FORGET, "2", "forgetting rule 2")
    assert not isinstance(classify("/forget"), Command)  # a number is needed
    # the console's reading, asked back, says how long the rule lasts
    from agent.coaching.understand import understand

    def probs(text):
        return {"unclear": 0.0, "constraint": 0.85, "override": 0.15}

    assert understand("from now on leave the green block where it is", probs=probs).meaning() == (
        "never touch the green block from now on, every episode")


def test_a_rule_repeated_in_a_second_episode_is_remembered():
    memory = SessionMemory()
    said = classify("avoid the red block")
    assert memory.offer(said, episode=0) is None and memory.offer(said, episode=0) is None
    kept = memory.offer(classify("stay away from the red block"), episode=1)  # other words, the same Rule
    assert kept is not None and kept.how == "repeated" and memory.texts() == ("stay away from the red block",)
    assert SessionMemory(enabled=False).offer(classify(RULE), episode=0) is None


def test_a_rule_said_in_episode_0_is_in_episode_3s_context_and_the_export_and_forget_drops_it(tmp_path):
    env = make_env(family="sort_into_bowls", image_size=32)
    seeds = _red_seeds(env, 5)
    high = SeeingOracle(seed=0)
    with recorded_loop(tmp_path / "s", env, high, seed=seeds[0]) as loop:
        console = CoachController(loop)
        loop.reset(seed=seeds[0], options={"family": "sort_into_bowls"})
        loop.submit(classify(RULE))
        loop.step()
        assert "1. " + RULE in console.handle("/rules").reply
        for k, seed in enumerate(seeds[1:4], start=1):
            loop.reset(seed=seed, options={"family": "sort_into_bowls"})
            for _ in range(40):
                loop.step()
            plans = [p for p in loop._context.plan_history if p.subtask.startswith("pick up")]
            # the oracle obeys the remembered rule: the red block is never picked while another one waits
            assert plans and all("red" not in p.subtask for p in plans[:1]), (k, plans)
        ep3 = [ctx for _, ctx in high.seen][-1]
        assert ep3.memory == (RULE,) and ep3.corrections == ()  # said in episode 0, read in episode 3
        proc = _processor()
        assert proc.decode(proc.planner_context_ids(ep3)).strip().startswith("last:")
        assert "rule: " + RULE in proc.decode(proc.planner_context_ids(ep3))  # what a learned pi05 planner reads
        assert loop.snapshot().memory == (RULE,)
        console.handle("/forget 1")
        loop.step()
        assert "forgot rule 1" in loop.snapshot().last_reply and loop.snapshot().memory == ()
        loop.reset(seed=seeds[4], options={"family": "sort_into_bowls"})
        assert high.seen[-1][1].memory == ()  # episode 4 plans without it
        assert "no rules remembered" in console.handle("/rules").reply
    session = read_session(tmp_path / "s")
    events = [(e.type, e.episode) for ep in session.episodes for e in ep.rules]
    assert events == [("rule_remembered", 0), ("rule_forgotten", 3)]
    assert session.episodes[3].plans[0].context.memory == [RULE] and session.episodes[4].plans[0].context.memory == []
    # the export's contexts where no plan recorded one, and the pi05 coaching table's `said`, read the same memory
    from sessions.export.coaching import said_before
    from sessions.export.common import memory_at

    assert memory_at(session.episodes[3], 0) == [RULE] and memory_at(session.episodes[3], 10_000) == []
    assert said_before(session.episodes[2], 0) == ["rule: " + RULE] and said_before(session.episodes[4], 0) == []
    export_sessions([tmp_path / "s"], tmp_path / "ds", ExportOptions(format="lerobot", video_codec="lossless"))
    rows = pq.read_table(tmp_path / "ds" / "data" / "chunk-000" / "file-000.parquet").to_pylist()
    memory = {(r["episode_index"], m["content"], m["role"], m["camera"]) for r in rows
              for m in r["language_persistent"] if m["style"] == "memory"}
    assert {(3, RULE, "assistant", None), (0, RULE, "assistant", None)} <= memory
    assert not any(ep == 4 for ep, *_ in memory)  # forgotten before episode 4's first plan


def test_a_rule_is_recorded_before_the_correction_that_said_it_and_forgotten_before_its_withdrawal():
    from memory_recorder import MemoryRecorder

    env = make_env(family="sort_into_bowls", image_size=32, render_images=False)
    rec = MemoryRecorder()
    loop = ControlLoop(env, OraclePlanner(seed=0), ScriptedExpert(seed=0), recorder=rec)
    loop.reset(seed=_red_seeds(env, 1)[0], options={"family": "sort_into_bowls"})
    loop.submit(classify(RULE))
    loop.step()
    kinds = [e.type for e in rec.events if e.type != "plan"]
    assert kinds[-2:] == ["rule_remembered", "correction"]
    asked = [e for e in rec.events if e.type == "plan"][-1]
    assert asked.reason == "correction" and asked.context.memory == [RULE]  # the plan the rule asked for reads it
    loop.submit(Command(CommandName.UNDO))
    loop.step()
    assert [e.type for e in rec.events if e.type != "plan"][-2:] == ["rule_forgotten", "correction_withdrawn"]
    assert loop.memory.texts() == () and loop.snapshot().memory == ()
    loop.close()


def test_the_scripted_coach_words_a_rule_for_good_or_for_the_episode_as_asked():
    from agent.coaching.scripted import FamilyBehaviour, ScriptedCoach

    env = make_env(family="sort_into_bowls", image_size=32, render_images=False)
    seeds = _red_seeds(env, 6)
    said = {}
    for scope in ("lasting", "episode"):
        coach = ScriptedCoach(seed=0, intended=FamilyBehaviour(fixed_rules=[Rule("avoid_block", "red block")]),
                              rule_scope=scope, interrupt_rate=0.0)
        loop = ControlLoop(env, OraclePlanner(seed=0), ScriptedExpert(seed=0), coach=coach)
        for seed in seeds:
            loop.run_episode(seed=seed, options={"family": "sort_into_bowls"})
            said.setdefault(scope, []).extend(c for c in loop._episode.corrections if c.kind is CorrectionKind.CONSTRAINT)
        said[scope + " kept"] = loop.memory.texts()
    assert said["lasting"] and all(c.lasting for c in said["lasting"])
    assert said["episode"] and not any(c.lasting for c in said["episode"])
    assert said["lasting kept"] == (said["lasting"][0].text,)
    # worded for the episode, kept once said in a second episode (if the oracle broke it twice)
    assert len(said["episode"]) < 2 or len(said["episode kept"]) == 1
