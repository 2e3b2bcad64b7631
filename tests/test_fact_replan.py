"""A stated fact changes the next plan within one re-plan (issue 33): a grounded pi05 planner (tiny,
untrained) in the control loop on the simulator, its read-out writing a line that names a block the
scene does not hold; "there is no <block>" typed at the console goes through the reader, the loop's
facts in force, PlannerContext.facts and decode_grounded(..., facts=...), and the very next plan's
scene line has the fact in place of the reading and decides from it.

The low level holds still: this is the planner's test, and an untrained planner's subtasks name
blocks the scripted expert would refuse."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from agent.coaching.understand import understand
from agent.envs import make_env
from agent.loop import ControlLoop
from memory_recorder import MemoryRecorder
from policies.grammar import parse_subtask
from policies.pi05 import policy as pi05_policy
from policies.pi05.configuration import make_config
from policies.pi05.modeling import Pi05Model
from policies.pi05.objects import BLOCK_NAMES
from policies.pi05.policy import Pi05HighLevel, Pi05Policy
from policies.pi05.processor import NormStats, Pi05Processor, train_tokenizer
from policies.plan_grammar import allowed_subtasks, plan_is_allowed
from policies.planning import format_plan
from policies.scene_line import Fact, Scene, SeenBlock, format_scene, parse_scene, split_scene
from policies.types import CorrectionKind

torch.set_num_threads(1)
FAMILY, SEED = "put_color_in_bowl", 0


class HoldStill:
    """A low level that never moves (the loop still steps, records and re-plans)."""

    def reset(self) -> None:
        pass

    def act(self, obs, subtask: str) -> np.ndarray:
        return np.zeros((4, 5), np.float32)


def tiny_grounded_planner(state_dim: int, seed: int) -> Pi05Policy:
    """A tiny grounded planner with random weights and a tokenizer that knows the scene grammar."""
    lines = [format_scene(Scene((SeenBlock(name, place, side="left" if place == "table" else None),)))
             for name in BLOCK_NAMES for place in ("table", "held", "moving")]
    subtasks = sorted({s.text for line in lines for s in allowed_subtasks(parse_scene(line))})
    tok = train_tokenizer((lines + [f"So: {s}" for s in subtasks] + ["I see: no block."]) * 2, vocab_size=600)
    cfg = make_config("tiny", vision_stem="objects", vocab_size=tok.get_vocab_size(), max_target_tokens=400,
                      state_dim=state_dim)
    rng = np.random.default_rng(0)
    stats = NormStats.from_data(rng.normal(size=(50, cfg.state_dim)), rng.normal(size=(50, cfg.action_dim)))
    torch.manual_seed(seed)
    return Pi05Policy(Pi05Model(cfg).eval(), Pi05Processor(cfg, tok, stats))


@pytest.fixture
def decoded(monkeypatch) -> list:
    """The facts each grounded decode was asked with (the real decode runs)."""
    calls: list = []
    real = pi05_policy.decode_grounded

    def spy(*args, facts=None, **kwargs):
        calls.append(facts)
        return real(*args, facts=facts, **kwargs)

    monkeypatch.setattr(pi05_policy, "decode_grounded", spy)
    return calls


def named_block(subtask: str) -> str | None:
    sub = parse_subtask(subtask)
    return sub.obj if sub.kind in ("pick", "push") else sub.target if sub.kind == "stack" else None


@pytest.mark.parametrize("async_planning", [False, True], ids=["sync", "async"])
def test_a_stated_fact_changes_the_next_plan(decoded, async_planning):
    env = make_env(family=FAMILY, image_size=32)
    obs, _ = env.reset(seed=SEED)
    for model_seed in range(10):  # random weights whose first plan names a block (most do: picks, pushes, stacks)
        policy = tiny_grounded_planner(len(obs["state"]), model_seed)
        rec = MemoryRecorder()
        loop = ControlLoop(env, Pi05HighLevel(policy), HoldStill(), recorder=rec, async_planning=async_planning)
        loop.reset(seed=SEED)
        first = wait_for_plan(loop)
        block = named_block(first.subtask)
        if block is not None:
            break
        loop.close()
    assert policy.grounded and block is not None, "no random planner of 10 named a block in its first plan"
    line, _ = split_scene(first.thought)
    assert parse_scene(line).block(block) is not None  # the read-out's own line lists what it picks
    assert all(f is None for f in decoded)  # no fact in force yet: the read-out's own line

    said = understand(f"there is no {block}", probs=lambda text: {"fact": 0.97, "override": 0.03})
    assert said.intent == "fact" and not said.unsure and said.item.fact == Fact(block, "absent")
    loop.submit(said.item)
    plans_before = len([e for e in rec.events if e.type == "plan"])
    after = wait_for_plan(loop, after=plans_before, recorder=rec)
    loop.close()

    # the very next plan: asked with the fact, its line without the block, its subtask the line allows
    assert decoded[-1] == [(Fact(block, "absent"),)]
    new_line, _ = split_scene(after.plan.thought)
    corrected = parse_scene(new_line)
    assert corrected.block(block) is None and corrected.blocks  # the rest of the reading stands
    assert plan_is_allowed(format_plan(after.plan.thought, after.plan.subtask))
    assert named_block(after.plan.subtask) != block and after.plan.subtask != first.subtask
    assert after.reason == "correction" and after.plan.source == "model"
    # and it is recorded as what the planner read
    assert [f.subject for f in after.context.facts] == [block] and after.context.facts[0].place == "absent"
    [correction] = [e for e in rec.events if e.type == "correction"]
    assert correction.kind is CorrectionKind.FACT and correction.fact.subject == block


def wait_for_plan(loop: ControlLoop, after: int | None = None, recorder: MemoryRecorder | None = None):
    """Step until the first plan (after=None: the plan in force), or the first recorded plan event
    after the `after`-th; asynchronous planning lands it a few steps later."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        loop.step()
        if after is None:
            plan = loop.snapshot().plan
            if plan is not None:
                return plan
        else:
            plans = [e for e in recorder.events if e.type == "plan"]
            if len(plans) > after:
                return plans[after]
        time.sleep(0.01)
    raise AssertionError("no plan within 60 s")
