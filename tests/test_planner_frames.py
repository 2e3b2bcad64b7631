"""Planner frames at scale (`hivla datagen --mode planner`), scene questions and the resampler planner."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agent.envs import make_env
from agent.envs.scene_facts import scene_facts
from agent.training import planner_frames as pf
from agent.training.dataset import collect_samples
from agent.training.scene_questions import QUESTION_TYPES, answer, sample_questions, type_probabilities
from agent.training.trainer import TrainSettings, train
from policies.pi05.configuration import make_config
from policies.pi05.modeling import Pi05Model
from policies.pi05.policy import load_pi05
from policies.types import Observation, PlanContext

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    out = tmp_path_factory.mktemp("planner_frames")
    pf.write_manifest(out, 32, 8)
    counts = [pf.record_shard(str(out), seeds, "base", 0.0, 32, 300, None) for seeds in ([0, 1], [2, 3])]
    return out, counts


def test_the_data_mode_renders_only_the_frames_it_keeps(tmp_path, monkeypatch):
    from agent.envs.tabletop import TabletopEnv

    rendered = []
    real = TabletopEnv._render_camera
    monkeypatch.setattr(TabletopEnv, "_render_camera", lambda self, cam: rendered.append(cam) or real(self, cam))
    pf.write_manifest(tmp_path, 32, 8)
    counts = pf.record_shard(str(tmp_path), [5, 6], "base", 0.0, 32, 300, None, render_size=64)
    rows, images, states = pf.read_shard(pf.shards(tmp_path)[0])
    # two cameras for each kept frame (the plans the loop asked for), nothing for the other steps
    assert counts["steps"] > 10 * counts["frames"] and len(rendered) == 2 * counts["frames"] == 2 * len(rows)
    assert images.shape == (len(rows), 2, 32, 32, 3) and images.dtype == np.uint8 and images.std() > 10
    assert states.shape == (len(rows), 8)


def test_shards_hold_what_the_planner_was_given_and_the_oracle_answered(frames):
    out, counts = frames
    stems = pf.shards(out)
    assert [s.name for s in stems] == ["shard_0000000", "shard_0000002"]
    rows, _, _ = pf.read_shard(stems[0])
    first = rows[0]
    assert first["context"]["done"] == [] and first["context"]["in_force"] is None  # the first plan of an episode
    assert first["subtask"] and first["thought"] and first["context"]["task"]
    # later plans of an episode name the subtasks the loop saw completed
    assert any(r["context"]["done"] for r in rows[1:])
    assert sum(c["frames"] for c in counts) == sum(len(pf.read_shard(s)[0]) for s in stems)


def test_a_damaged_shard_is_one_line_naming_the_fix(frames, tmp_path):
    out, _ = frames
    stem = pf.shards(out)[0]
    bad = tmp_path / "shard_0000000"
    bad.with_suffix(".jsonl").write_text(stem.with_suffix(".jsonl").read_text().splitlines()[0] + "\n")
    bad.with_suffix(".safetensors").write_bytes(stem.with_suffix(".safetensors").read_bytes())
    with pytest.raises(ValueError, match="rows but .* frames; delete it and run datagen again"):
        pf.read_shard(bad)


def test_a_manifest_of_another_recording_is_refused(tmp_path):
    pf.write_manifest(tmp_path, 64, 8)
    with pytest.raises(ValueError, match="use another --out"):
        pf.write_manifest(tmp_path, 32, 8)


def test_scene_question_labels_match_the_detectors_on_a_scripted_scene():
    env = make_env(family="put_color_in_bowl", image_size=32, render_images=False)
    _, info = env.reset(seed=3)
    world = info["privileged"]
    block = next(iter(world.blocks))
    bowl = next(iter(world.bowls))
    _, info = env.place_block(block, world.bowl(bowl).pos + np.array([0.0, 0.0, 0.03]))
    world = info["privileged"]
    facts = scene_facts(world)
    assert world.in_bowl(block, bowl)
    assert answer("where", facts, block) == f"the {block} is in the {bowl}"
    assert block in answer("bowl", facts, bowl)
    assert answer("held", facts) == "nothing" and world.held is None
    assert answer("drawer_state", facts) == ("yes, it is open" if world.drawer.is_open else "no, it is shut")
    on_table = [b for b in world.blocks if world.on_table(b)]
    assert answer("count", facts) == ["no", "one", "two", "three", "four", "five", "six", "seven", "eight"][len(on_table)]
    leftmost = min(world.blocks, key=lambda b: world.blocks[b].pos[0])
    assert answer("leftmost", facts) == f"the {leftmost}"
    absent = next(f"{c} block" for c in ("red", "green", "blue", "yellow", "purple", "orange")
                  if not any(c in b for b in world.blocks))
    assert answer("where", facts, absent) == f"the {absent} is not in the scene"


def test_sampled_questions_are_varied_and_answered_from_the_facts(frames):
    out, _ = frames
    rows, _, _ = pf.read_shard(pf.shards(out)[0])
    rng = np.random.default_rng(0)
    asked = [q for r in rows for q in sample_questions(r["facts"], rng, 3)]
    assert {kind for kind, _, _ in asked} <= set(QUESTION_TYPES) and len({kind for kind, _, _ in asked}) >= 6
    assert len({question for _, question, _ in asked}) > len(asked) // 3
    for kind, question, ans in asked:
        assert ans and "{" not in question


def test_samples_share_frames_and_carry_questions(frames):
    out, counts = frames
    raw = collect_samples([out], ("front", "wrist"), 32, 4, context_last="done", scene_questions=1.0, log=lambda m: None)
    n_frames = sum(c["frames"] for c in counts)
    assert len(raw.images) == n_frames and len(raw) == 2 * n_frames  # one plan + one question a frame
    assert max(raw.frame_of) == n_frames - 1
    plans = [i for i, a in enumerate(raw.answers) if a is None]
    questions = [i for i, a in enumerate(raw.answers) if a is not None]
    assert len(plans) == len(questions) == n_frames
    assert all(raw.question_types[i] in QUESTION_TYPES and raw.last_subtasks[i] is None for i in questions)


def test_question_weights_tilt_the_mix_and_bad_ones_are_refused(frames):
    out, _ = frames
    raw = collect_samples([out], ("front", "wrist"), 32, 4, context_last="done", scene_questions=1.0,
                          log=lambda m: None, question_weights={"where": 20.0})
    kinds = [k for k in raw.question_types if k]
    uniform = collect_samples([out], ("front", "wrist"), 32, 4, context_last="done", scene_questions=1.0,
                              log=lambda m: None)
    assert kinds.count("where") > 2 * [k for k in uniform.question_types if k].count("where")
    assert kinds.count("where") > len(kinds) // 2  # 20 / 28 of the draws, less scenes with no block
    with pytest.raises(ValueError, match="unknown question type wher"):
        type_probabilities({"wher": 2.0})
    with pytest.raises(ValueError, match="not all 0"):
        type_probabilities({k: 0.0 for k in QUESTION_TYPES})
    assert type_probabilities(None) is None


def test_the_resampler_reads_a_fine_map_into_a_few_tokens():
    cfg = make_config("tiny", vision_stem="resampler", vision_queries=3)
    model = Pi05Model(cfg)
    tokens = model.vision(torch.randint(0, 255, (2, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8))
    assert tokens.shape == (2, 3, cfg.width) and cfg.image_tokens_per_camera == 3
    # the map keeps a quarter of the image's resolution (16x16 at 64 px) before the queries read it
    fmap = model.vision.trunk(torch.zeros(1, 3, cfg.image_size, cfg.image_size))
    assert fmap.shape[-1] == cfg.image_size // 4


def test_a_tiny_planner_trains_on_planner_frames_and_answers(frames, tmp_path):
    out, _ = frames
    ckpt = tmp_path / "ckpt"
    s = TrainSettings(data=[str(out)], out=str(ckpt), preset="planner", steps=4, batch_size=8, eval_every=4,
                      eval_samples=16, eval_generate=4, threads=1, warmup_steps=1, vocab_size=700,
                      held_out_fraction=0.25, scene_questions=1.0,
                      overrides={"image_size": 32, "width": 32, "depth": 1, "mlp_dim": 64, "head_dim": 16,
                                 "vision_width": 32, "vision_depth": 1, "vision_mlp_dim": 32, "vision_queries": 2})
    summary = train(s)
    final = summary["final_eval"]
    assert 0.0 <= final["eval_subtask_acc"] <= 1.0 and 0.0 <= final["eval_question_acc"] <= 1.0
    policy = load_pi05(ckpt)
    img = np.zeros((32, 32, 3), np.uint8)
    obs = Observation(images={"front": img, "wrist": img}, state=np.zeros(8, np.float32), task="stack the blocks", time=0.0)
    assert isinstance(policy.answer_question(obs, "what is in the red bowl?"), str)


def test_a_planner_not_trained_on_questions_says_so():
    from policies.pi05.policy import Pi05Policy
    from policies.pi05.processor import NormStats, Pi05Processor, train_tokenizer

    cfg = make_config("tiny")
    tok = train_tokenizer(["pick up the red block"], vocab_size=400)
    cfg.vocab_size = tok.get_vocab_size()
    stats = NormStats(*(np.zeros(n, np.float32) + v for n, v in ((8, -1), (8, 1), (5, -1), (5, 1))))
    policy = Pi05Policy(Pi05Model(cfg), Pi05Processor(cfg, tok, stats))
    img = np.zeros((32, 32, 3), np.uint8)
    obs = Observation(images={"front": img, "wrist": img}, state=np.zeros(8, np.float32), task="t", time=0.0)
    with pytest.raises(ValueError, match="not co-trained on scene questions"):
        policy.answer_question(obs, "what is in the red bowl?")


def test_a_learned_low_level_is_shown_rendered_cameras_on_an_unrendered_env():
    from agent.envs.expert import ScriptedExpert

    seen = []

    class Watching(ScriptedExpert):
        def act(self, obs, subtask):
            seen.append(obs.images["front"].std())
            return super().act(obs, subtask)

    env = make_env(family="put_color_in_bowl", image_size=32, render_images=False)
    obs, info = env.reset(seed=1)
    assert env.observation(obs, info).images["front"].std() == 0  # the env itself renders nothing
    low = pf.RenderedLowLevel(Watching(), env)
    low.act(env.observation(obs, info), "pick up the " + next(iter(info["privileged"].blocks)))
    assert seen and seen[0] > 10
