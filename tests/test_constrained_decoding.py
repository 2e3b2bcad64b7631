"""Grammar-constrained decoding of the grounded plan (issue 30): the token automaton, the masked greedy
decode with forced spans appended in one pass, and decoding left as it was where the grammar is off."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from policies.grammar import COLORS, DIRECTIONS, parse_subtask
from policies.pi05.configuration import make_config
from policies.pi05.constrained import PlanConstraint
from policies.pi05.modeling import Pi05Model
from policies.pi05.policy import decode_grounded
from policies.pi05.processor import NormStats, Pi05Processor, pad_to, train_tokenizer
from policies.plan_grammar import allowed_subtasks, plan_is_allowed
from policies.planning import parse_plan
from policies.scene_line import Scene, SeenBlock, format_scene, parse_scene

torch.set_num_threads(1)

LINES = [
    "I see: red block on the table at the left, blue block in the green bowl; drawer shut.",
    "I see: large green block in the gripper, small green block on the table at the right, "
    "yellow block on the purple block.",
    "I see: red block on the table at the middle.",
    "I see: no block; drawer open.",
]
TASKS = ["put the red block in the blue bowl", "stack the green blocks", "push the red block to the left",
         "open the drawer"]


def random_line(rng: np.random.Generator) -> str:
    colors = list(rng.permutation(COLORS)[: rng.integers(1, 4)])
    blocks = []
    for i, c in enumerate(colors):
        place = rng.choice(["table", "held", "bowl", "block", "drawer"]) if i else "table"
        where = f"{rng.choice(COLORS)} bowl" if place == "bowl" else f"{colors[0]} block" if place == "block" else None
        blocks.append(SeenBlock(f"{c} block", str(place), where, str(rng.choice(["left", "middle", "right"]))
                                if place == "table" else None))
    return format_scene(Scene(tuple(blocks), bool(rng.integers(2)) if rng.integers(2) else None))


@pytest.fixture(scope="module")
def processor() -> Pi05Processor:
    rng = np.random.default_rng(0)
    lines = LINES + [random_line(rng) for _ in range(40)]
    subtasks = [s.text for line in lines for s in allowed_subtasks(parse_scene(line))]
    tok = train_tokenizer((lines + [f"So: {s}" for s in subtasks] + TASKS) * 2, vocab_size=600)
    cfg = make_config("tiny", vision_stem="objects", vocab_size=tok.get_vocab_size(), max_target_tokens=64)
    stats = NormStats.from_data(rng.normal(size=(50, cfg.state_dim)), rng.normal(size=(50, cfg.action_dim)))
    return Pi05Processor(cfg, tok, stats)


def random_model(processor: Pi05Processor, seed: int) -> Pi05Model:
    torch.manual_seed(seed)
    model = Pi05Model(processor.cfg).eval()
    with torch.no_grad():  # a random model's logits spread wider than at init, so greedy choices vary
        model.embed.weight.normal_(0, 0.5)
    return model


def inputs(processor: Pi05Processor, tasks: list[str], seed: int = 0):
    cfg = processor.cfg
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (len(tasks), 2, cfg.image_size, cfg.image_size, 3), dtype=np.uint8))
    prefix = [pad_to(processor.prefix_ids(t, rng.normal(size=cfg.state_dim)), cfg.prefix_text_len) for t in tasks]
    ctx = [pad_to(processor.context_ids("pick up the red block" if i % 2 else None), cfg.max_context_tokens)
           for i in range(len(tasks))]
    stack = lambda pairs, k: torch.from_numpy(np.stack([p[k] for p in pairs]))  # noqa: E731
    return images, stack(prefix, 0), stack(prefix, 1), stack(ctx, 0), stack(ctx, 1)


def test_the_automaton_holds_exactly_the_allowed_plans_as_training_encodes_them(processor):
    for line in LINES:
        constraint = PlanConstraint.for_line(processor, line)
        subtasks = allowed_subtasks(parse_scene(line))
        for s in subtasks:
            target = processor.target_ids(line, s.text)  # the training target: <bos> line So: subtask <eos>
            assert constraint.accepts(target[1:]), (line, s.text)
            assert not constraint.accepts(target[1:-1])  # no plan ends before its <eos>
        listed = {b.name for b in parse_scene(line).blocks}
        for bad in ["pick up the orange block", "push the orange block to the left", "stack it on the orange block",
                    "place it in the blue block", "pick up the", "open the"]:
            assert not constraint.accepts(processor.target_ids(line, bad)[1:]), bad
        assert not constraint.accepts(processor.target_ids("I see: orange block moving.", "open the drawer")[1:])
        # names: listed blocks only; a stack never onto the block in the gripper
        for s in subtasks:
            if s.kind in ("pick", "push"):
                assert s.obj in listed
            if s.kind == "stack":
                assert s.target in listed and parse_scene(line).block(s.target).place != "held"
    assert "stack it on the large green block" not in {s.text for s in allowed_subtasks(parse_scene(LINES[1]))}


def test_the_automaton_accepts_every_plan_the_oracle_writes_for_every_family(processor, tmp_path):
    from agent.envs import SUITES
    from agent.training import planner_frames as pf
    from policies.scene_line import scene_from_facts

    pf.write_manifest(tmp_path, 32, 8)
    pf.record_shard(str(tmp_path), list(range(len(SUITES["base"]))), "base", 0.0, 32, 400, None)
    rows, _, _ = pf.read_shard(pf.shards(tmp_path)[0])
    # room for a whole target: this test's small vocabulary spells some names in several tokens
    roomy = Pi05Processor(dataclasses.replace(processor.cfg, max_target_tokens=400), processor.tok, processor.stats)
    families = set()
    for row in rows:
        line = format_scene(scene_from_facts(row["facts"], row["context"]["task"]))
        assert parse_subtask(row["subtask"]) in allowed_subtasks(parse_scene(line)), (line, row["subtask"])
        assert plan_is_allowed(f"{line} So: {row['subtask']}")
        assert PlanConstraint.for_line(roomy, line).accepts(roomy.target_ids(line, row["subtask"])[1:])
        families.add(row["family"])
    assert families == set(SUITES["base"])


def test_a_random_models_constrained_plans_always_parse_and_name_only_listed_blocks(processor):
    rng = np.random.default_rng(1)
    lines = LINES + [random_line(rng) for _ in range(8)]
    tasks = [TASKS[i % len(TASKS)] for i in range(len(lines))]
    seen_kinds = set()
    for seed in range(3):
        model = random_model(processor, seed)
        args = inputs(processor, tasks, seed)
        constraints = [PlanConstraint.for_line(processor, line) for line in lines]
        out = model.generate(*args, constraints=constraints)
        for line, ids in zip(lines, out.tolist()):
            text = processor.decode(ids)
            assert ids[ids.index(processor.cfg.eos_id) - 1] != processor.cfg.pad_id  # reached <eos>
            assert plan_is_allowed(text), text
            plan = parse_plan(text)
            assert plan.thought == line
            sub = parse_subtask(plan.subtask)
            seen_kinds.add(sub.kind)
            listed = {b.name for b in parse_scene(line).blocks}
            assert sub.obj is None or sub.obj in listed
            assert sub.kind != "stack" or sub.target in listed
        # the policy's path: decode_grounded forces the given lines and keeps the grammar on for plans
        texts, _ = decode_grounded(model, processor, *args, tasks, lines=lines)
        assert texts == [processor.decode(ids) for ids in out.tolist()]
    assert len(seen_kinds) > 1  # the mask leaves the model its choice among the allowed subtasks


def test_with_the_grammar_off_decoding_is_as_before(processor):
    model = random_model(processor, 0)
    args = inputs(processor, TASKS)
    lines = LINES
    forced = torch.full((len(lines), 50), processor.cfg.pad_id, dtype=torch.long)
    for r, line in enumerate(lines):
        ids = processor.encode(line)
        forced[r, : len(ids)] = torch.tensor(ids)
    before, before_scores = model.generate(*args, forced_ids=forced, return_scores=True)
    # every row free through the constrained decoder: the same ids and logits as the plain decoder
    free, free_scores = model.generate(*args, forced_ids=forced, constraints=[None] * len(lines), return_scores=True)
    assert torch.equal(free, before)
    n = before.shape[1]
    for r in range(len(lines)):
        k = int((before[r] != processor.cfg.pad_id).sum())
        assert torch.allclose(free_scores[r, :k], before_scores[r, :k], atol=1e-4)
    assert free_scores.shape[1] == n
    # a mixed batch: the free rows decode as alone, the constrained one under its grammar
    constraints = [None, PlanConstraint.for_line(processor, lines[1]), None, None]
    mixed = model.generate(*args, forced_ids=forced, constraints=constraints)
    for r in (0, 2, 3):
        k = int((before[r] != processor.cfg.pad_id).sum())
        assert mixed[r, :k].tolist() == before[r, :k].tolist()
    assert plan_is_allowed(processor.decode(mixed[1].tolist()))
    # decode_grounded: grammar=False (what a scene question asks for) is the old decoding
    texts, _ = decode_grounded(model, processor, *args, TASKS, lines=lines, grammar=False)
    assert texts == [processor.decode(row) for row in before.tolist()]


def test_forced_spans_in_one_pass_give_the_ids_and_logits_of_token_by_token_decoding(processor, monkeypatch):
    rng = np.random.default_rng(2)
    lines = [LINES[0], LINES[2], random_line(rng), LINES[3]]
    model = random_model(processor, 3)
    args = inputs(processor, TASKS, 3)
    constraints = [PlanConstraint.for_line(processor, line) for line in lines]
    passes = []
    fast_backbone = Pi05Model._fast_backbone
    monkeypatch.setattr(Pi05Model, "_fast_backbone",
                        lambda self, *a, **k: passes.append(1) or fast_backbone(self, *a, **k))
    jumped, jumped_scores = model.generate(*args, constraints=constraints, return_scores=True)
    n_jumped = len(passes)
    stepped, stepped_scores = model.generate(*args, constraints=constraints, return_scores=True, jump=False)
    n_stepped = len(passes) - n_jumped
    assert torch.equal(jumped, stepped)
    assert torch.allclose(jumped_scores, stepped_scores, atol=1e-4)
    # the plain decoder teacher-forced with the same ids computes the same logits, a token a pass
    plain, plain_scores = model.generate(*args, forced_ids=jumped, max_new_tokens=jumped.shape[1], return_scores=True)
    assert torch.equal(plain, jumped)
    for r in range(len(lines)):
        k = int((jumped[r] != processor.cfg.pad_id).sum())
        assert torch.allclose(jumped_scores[r, :k], plain_scores[r, :k], atol=1e-4)
    # jump-forward: a pass per choice the grammar leaves (kind, then a name or direction), not per token
    longest = max(int((row != processor.cfg.pad_id).sum()) for row in jumped)
    assert n_stepped == longest and n_jumped <= 6 < longest


def test_a_scene_with_one_block_can_only_pick_that_block(processor):
    line = "I see: red block on the table at the middle."
    constraint = PlanConstraint.for_line(processor, line)
    opening, node = constraint.forced(constraint.root)
    assert processor.decode(opening) == f"{line}So:"  # the line and "So:", as training encodes them, in one span
    pick = processor.encode("So: pick")[-1]
    span, leaf = constraint.forced(constraint.advance(node, pick))
    assert processor.decode(span) == "up the red block" and span[-1] == processor.cfg.eos_id and not leaf
    push = processor.encode("So: push")[-1]
    span, node = constraint.forced(constraint.advance(node, push))
    assert processor.decode(span) == "the red block to the"  # then only the direction is chosen
    assert len(constraint.allowed(node)) == len(DIRECTIONS)
    subtasks = allowed_subtasks(parse_scene(line))
    assert {s.obj for s in subtasks if s.obj} == {"red block"}
    assert {s.target for s in subtasks if s.kind == "stack"} == {"red block"}
    for seed in range(4):
        out = random_model(processor, seed).generate(*inputs(processor, TASKS[:2], seed),
                                                    constraints=[constraint, constraint])
        for ids in out.tolist():
            sub = parse_subtask(parse_plan(processor.decode(ids)).subtask)
            assert sub.obj in (None, "red block") and (sub.kind != "stack" or sub.target == "red block")


def test_constrained_decoding_runs_under_bf16_autocast(processor):
    model = random_model(processor, 5)
    constraints = [PlanConstraint.for_line(processor, line) for line in LINES]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.generate(*inputs(processor, TASKS, 5), constraints=constraints)
    assert all(plan_is_allowed(processor.decode(ids)) for ids in out.tolist())
