"""The grounded planner: the scene line's grammar, the object read-out's labels and its two-stage recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.envs import SUITES, make_env
from agent.envs.scene_facts import scene_facts
from agent.training import planner_frames as pf
from agent.training.readout_trainer import ReadoutSettings, load_frames, train_readout
from agent.training.trainer import TrainSettings, train
from policies.pi05.configuration import make_config
from policies.pi05.objects import BLOCK_NAMES, BOWL_NAMES, WHERE_NAMES, ObjectReadout, labels_from_facts, read_scenes
from policies.plan_grammar import allowed_subtasks
from policies.pi05.policy import load_pi05
from policies.planning import format_plan, parse_plan
from policies.scene_line import PLACES, SIDES, Scene, SceneParseError, SeenBlock, format_scene, line_order, \
    parse_scene, scene_from_facts
from policies.types import Observation, PlanContext

torch.set_num_threads(1)
TINY = {"image_size": 32, "width": 32, "depth": 1, "mlp_dim": 64, "head_dim": 16, "vision_width": 32,
        "vision_depth": 1, "vision_heads": 2, "vision_mlp_dim": 32}


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """One oracle + expert episode of every base family, as planner frames."""
    out = tmp_path_factory.mktemp("grounded_frames")
    pf.write_manifest(out, 32, 8)
    n = len(SUITES["base"])
    pf.record_shard(str(out), list(range(n)), "base", 0.0, 32, 400, None)
    return out


def test_the_grounded_thought_round_trips_for_every_family(frames):
    rows, _, _ = pf.read_shard(pf.shards(frames)[0])
    families = set()
    for row in rows:
        scene = scene_from_facts(row["facts"], row["context"]["task"])
        line = format_scene(scene)
        assert parse_scene(line) == scene
        plan = parse_plan(format_plan(line, row["subtask"]))
        assert plan.thought == line and plan.subtask == row["subtask"]
        # every present block is listed once, in line_order (left to right, stacks and bowls' blocks together)
        assert sorted(b.name for b in scene.blocks) == sorted(row["facts"]["blocks"])
        assert [b.name for b in scene.blocks] == line_order({n: (f["x"], f["place"], f.get("where"))
                                                             for n, f in row["facts"]["blocks"].items()})
        # the bowls present, each once, in the fixed colour order; the line without them as well
        assert set(scene.bowls) == set(row["facts"]["bowls"]) and len(scene.bowls) == len(row["facts"]["bowls"])
        bare = scene_from_facts(row["facts"], row["context"]["task"], bowls=False)
        assert bare.bowls == () and parse_scene(format_scene(bare)) == bare
        # the oracle itself writes the same line before its reason
        assert row["thought"].startswith(line + " ")
        families.add(row["family"])
    assert families == set(SUITES["base"])


def test_the_scene_grammar_refuses_text_outside_it():
    scene = Scene((SeenBlock("red block", "table", side="left"), SeenBlock("large blue block", "block", "green block")),
                  drawer_open=False)
    line = format_scene(scene)
    assert line == "I see: red block on the table at the left, large blue block on the green block; drawer shut."
    assert parse_scene(line) == scene
    with_bowls = Scene(scene.blocks, drawer_open=True, bowls=("red bowl", "blue bowl"))
    assert format_scene(with_bowls).endswith("green block; bowls: red, blue; drawer open.")
    assert parse_scene(format_scene(with_bowls)) == with_bowls
    for bad in ("the red block is on the table", "I see: red block floating.", "I see: red block in the gripper",
                "I see: red block in the gripper; bowls: blue, red.", "I see: red block in the gripper; bowls: pink.",
                "I see: red block in the gripper; plates: red."):
        with pytest.raises(SceneParseError):
            parse_scene(bad)


def test_read_out_labels_match_the_detectors_on_a_scripted_scene():
    env = make_env(family="put_color_in_bowl", image_size=32, render_images=False)
    _, info = env.reset(seed=3)
    world = info["privileged"]
    block, bowl = next(iter(world.blocks)), next(iter(world.bowls))
    _, info = env.place_block(block, world.bowl(bowl).pos + np.array([0.0, 0.0, 0.03]))
    world = info["privileged"]
    labels = labels_from_facts(scene_facts(world))
    assert world.in_bowl(block, bowl)
    i = BLOCK_NAMES.index(block)
    assert PLACES[labels["place"][i]] == "bowl" and WHERE_NAMES[labels["where"][i]] == bowl
    for name in world.blocks:
        j = BLOCK_NAMES.index(name)
        if world.on_table(name):
            assert PLACES[labels["place"][j]] == "table"
            assert SIDES[labels["side"][j]] == world.side_of(name) if world.side_of(name) in SIDES else True
    absent = [k for k, name in enumerate(BLOCK_NAMES) if name not in world.blocks]
    assert absent and all(labels["place"][k] == 0 for k in absent)
    assert labels["drawer"] == int(world.drawer.is_open)
    assert [BOWL_NAMES[k] for k, there in enumerate(labels["bowls"]) if there] == \
        [name for name in BOWL_NAMES if name in world.bowls]


@pytest.mark.parametrize("noise", [-0.002, 0.002])
def test_a_stack_and_a_bowls_blocks_come_in_one_order_whatever_millimetres_of_x_say(noise):
    from agent.training.scene_questions import answer

    facts = {"blocks": {"red block": {"place": "block", "where": "green block", "x": -0.2 + noise},
                        "green block": {"place": "table", "where": None, "x": -0.2},
                        "blue block": {"place": "bowl", "where": "purple bowl", "x": 0.1 - noise},
                        "yellow block": {"place": "block", "where": "blue block", "x": 0.1},
                        "orange block": {"place": "bowl", "where": "purple bowl", "x": 0.1 + noise},
                        "large red block": {"place": "bowl", "where": "purple bowl", "x": 0.1},
                        "large green block": {"place": "table", "where": None, "x": 0.25}},
             "bowls": ["purple bowl"], "drawer_open": False, "held": None}
    assert format_scene(scene_from_facts(facts, "stack")) == (
        "I see: green block on the table at the left, red block on the green block, large red block in the "
        "purple bowl, blue block in the purple bowl, orange block in the purple bowl, yellow block on the blue "
        "block, large green block on the table at the right; bowls: purple.")
    # the questions list in the line's order: "the leftmost" is the stack's bottom block
    assert answer("leftmost", facts) == "the green block"
    assert answer("bowl", facts, "purple bowl") == "the large red block, the blue block and the orange block"
    # and the read-out's reading is written the same way: the x it reads for a stack's blocks does not order them
    labels = {k: torch.tensor([v]) for k, v in labels_from_facts(facts).items()}
    heads = {"place": torch.nn.functional.one_hot(labels["place"], len(PLACES)).float(),
             "where": torch.nn.functional.one_hot(labels["where"].clamp(min=0), len(WHERE_NAMES)).float(),
             "side": torch.nn.functional.one_hot(labels["side"].clamp(min=0), len(SIDES)).float(),
             "x": (labels["x"] - 2 * noise * (labels["place"] == PLACES.index("block"))) / 0.3,
             "drawer": torch.tensor([[1.0, 0.0]])}
    assert read_scenes(heads, ["stack"]) == [scene_from_facts(facts, "stack", bowls=False)]


def test_the_heads_reading_writes_a_line_in_the_grammar():
    readout = ObjectReadout(make_config("tiny", vision_stem="objects")).eval()
    with torch.no_grad():
        out = readout.heads(readout.features(torch.randint(0, 255, (3, 2, 32, 32, 3), dtype=torch.uint8)))
    for scene, task in zip(read_scenes(out, ["put the blocks in the drawer", "stack", "sort"]), ["drawer", "a", "b"]):
        assert parse_scene(format_scene(scene)) == scene
        for b in scene.blocks:  # a block is never read as on itself or in a block
            assert b.where != b.name
            assert b.place != "bowl" or b.where.endswith("bowl")
        assert scene.bowls == ()  # this read-out has no bowl queries


def test_a_read_out_with_bowl_queries_lists_the_bowls_and_the_plan_may_use_only_those():
    readout = ObjectReadout(make_config("tiny", vision_stem="objects", scene_bowls=True)).eval()
    assert readout.n_tokens == len(BLOCK_NAMES) + len(BOWL_NAMES) + 1
    with torch.no_grad():
        out = readout.heads(readout.features(torch.randint(0, 255, (4, 2, 32, 32, 3), dtype=torch.uint8)))
    assert out["bowls"].shape == (4, len(BOWL_NAMES), 2)
    # the heads say: the green bowl is there, the red block is in the blue bowl, no other block is there
    out["bowls"][:] = torch.tensor([1.0, 0.0])
    out["bowls"][:, BOWL_NAMES.index("green bowl")] = torch.tensor([0.0, 1.0])
    out["place"][:] = 0.0
    out["place"][:, :, 0] = 1.0
    red = BLOCK_NAMES.index("red block")
    out["place"][:, red] = torch.nn.functional.one_hot(torch.tensor(PLACES.index("bowl")), len(PLACES)).float()
    out["where"][:, red] = torch.nn.functional.one_hot(torch.tensor(WHERE_NAMES.index("blue bowl")), len(WHERE_NAMES)).float()
    scene = read_scenes(out, ["swap the blocks"] * 4)[0]
    # a block read in a bowl says that bowl is there, and the line lists it in the colour order
    assert scene.bowls == ("green bowl", "blue bowl")
    assert format_scene(scene) == "I see: red block in the blue bowl; bowls: green, blue."
    targets = {s.target for s in allowed_subtasks(scene) if s.kind == "place"}
    assert targets == {"green bowl", "blue bowl"}
    # a line without bowls (a read-out without bowl queries) leaves every bowl colour open
    assert {s.target for s in allowed_subtasks(Scene(scene.blocks)) if s.kind == "place"} == set(BOWL_NAMES)


def test_the_two_stage_recipe_trains_and_plans_from_its_own_reading(frames, tmp_path):
    readout = tmp_path / "readout"
    summary = train_readout(ReadoutSettings(data=[str(frames)], out=str(readout), preset="grounded", steps=6, batch_size=8,
                                            eval_every=6, threads=1, warmup_steps=1, held_out_fraction=0.2,
                                            overrides=TINY))
    assert 0.0 <= summary["final_eval"]["objects_right"] <= 1.0
    ckpt = tmp_path / "planner"
    s = TrainSettings(data=[str(frames)], out=str(ckpt), preset="grounded", steps=4, batch_size=8, eval_every=4,
                      eval_samples=16, eval_generate=4, threads=1, warmup_steps=1, vocab_size=700,
                      held_out_fraction=0.25, scene_questions=1.0, readout=str(readout), overrides=TINY)
    before = saved_readout(readout)
    train(s)
    policy = load_pi05(ckpt)
    # stage 2 left the read-out as stage 1 trained it (only its projection into the backbone learned)
    after = policy.model.vision.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if not k.startswith("proj."))
    frames_set = load_frames([frames], 32)
    obs = Observation(images={"front": frames_set.images[0, 0].numpy(), "wrist": frames_set.images[0, 1].numpy()},
                      state=np.zeros(8, np.float32), task=frames_set.tasks[0], time=0.0)
    plan = policy.generate_plan(obs, PlanContext(task=obs.task))
    with torch.no_grad():
        images = torch.from_numpy(policy.processor.prepare_images(obs.images))[None]
        read = read_scenes(policy.model.vision.heads(policy.model.vision.features(images)), [obs.task])[0]
    # the line the backbone decided from is the read-out's (an untrained backbone may not reach "So:",
    # and then its whole text is shown as the subtask)
    assert (plan.thought or plan.subtask).startswith(format_scene(read))
    assert isinstance(policy.answer_question(obs, "what is in the red bowl?"), str)


def saved_readout(run) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k.removeprefix("vision."): v for k, v in load_file(str(run / "model.safetensors")).items()}


def test_the_text_only_baseline_sees_no_image_and_writes_no_thought(frames):
    from agent.training.dataset import collect_planner_frames
    from policies.pi05.modeling import Pi05Model

    model = Pi05Model(make_config("tiny", blind=True))
    images = torch.randint(0, 255, (2, 2, 32, 32, 3), dtype=torch.uint8)
    ids = torch.randint(10, 100, (2, model.cfg.prefix_text_len))
    tokens, _ = model.embed_prefix(images, ids, torch.ones_like(ids))
    assert not tokens[:, : model.cfg.image_tokens].any() and tokens[:, model.cfg.image_tokens:].any()
    raw = collect_planner_frames([frames], ("front", "wrist"), 32, 4, thoughts="none")
    assert raw.thoughts and not any(raw.thoughts)
    scene = collect_planner_frames([frames], ("front", "wrist"), 32, 4, thoughts="scene")
    assert all(t.startswith("I see: ") for t in scene.thoughts)
