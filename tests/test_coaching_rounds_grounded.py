"""Coaching rounds with a grounded planner (issue #32): a tiny grounded checkpoint (its object read-out
trained first, then frozen while the backbone learns "I see: <scene line> So: <subtask>", the history
context) goes through the round's commands: coached episodes (`hivla run --coach scripted --out`), an
SFT export, `hivla finetune` on its planner frames ∪ the coaching data. What it trains on is checked:
base samples are planner frames whose thought is the simulator's scene line (as `hivla train` builds
them), coaching samples "<the line its read-out writes at that frame, facts said applied> So: <what the
coach wanted>", history contexts; the read-out and the action expert stay as they were, and the
fine-tuned checkpoint loads and plans. The benchmark's low-level choices name the shipped VLA."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from agent.cli import main as hivla  # noqa: E402
from agent.envs import SUITES  # noqa: E402
from agent.training import planner_frames as pf  # noqa: E402
from agent.training.finetune import EXPERT_PREFIXES  # noqa: E402
from agent.training.readout_trainer import ReadoutSettings, train_readout  # noqa: E402
from agent.training.trainer import TrainSettings, train  # noqa: E402
from policies.planning import PlannerContext  # noqa: E402
from policies.scene_line import format_scene, scene_from_facts, split_scene  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
TINY = {"image_size": 32, "width": 32, "depth": 1, "mlp_dim": 64, "head_dim": 16, "vision_width": 32,
        "vision_depth": 1, "vision_heads": 2, "vision_mlp_dim": 32}


@pytest.fixture(scope="module")
def grounded(tmp_path_factory):
    """(planner frames of two shards, a tiny grounded checkpoint trained on them with a frozen read-out)."""
    root = tmp_path_factory.mktemp("grounded")
    frames = root / "frames"
    frames.mkdir()
    pf.write_manifest(frames, 32, 8)
    families = list(SUITES["base"])
    pf.record_shard(str(frames), [0, 1, 2], "base", 0.0, 32, 300, families[:3])
    pf.record_shard(str(frames), [3, 4, 5], "base", 0.0, 32, 300, families[3:6])
    assert len(pf.shards(frames)) == 2
    readout = root / "readout"
    train_readout(ReadoutSettings(data=[str(frames)], out=str(readout), preset="grounded", steps=4, batch_size=8,
                                  eval_every=4, threads=1, warmup_steps=1, held_out_fraction=0.2, overrides=TINY))
    ckpt = root / "ckpt"
    train(TrainSettings(data=[str(frames)], out=str(ckpt), preset="grounded", steps=4, batch_size=8, eval_every=4,
                        eval_samples=8, eval_generate=2, threads=1, warmup_steps=1, vocab_size=700,
                        held_out_fraction=0.2, scene_questions=0.5, readout=str(readout), overrides=TINY))
    return frames, ckpt


def test_a_coaching_round_of_a_grounded_planner(grounded, tmp_path, monkeypatch, capsys):
    import agent.training.finetune_data as finetune_data
    from policies.pi05.policy import load_pi05
    from sessions.reader import iter_sessions

    frames, ckpt = grounded
    assert json.loads((ckpt / "config.json").read_text())["context_last"] == "history"
    sessions, export, out = tmp_path / "coached", tmp_path / "export", tmp_path / "ft"
    assert hivla(["run", "--high-level", f"pi05:{ckpt}", "--low-level", "expert", "--suite", "coaching",
                  "--episodes", "1", "--coach", "scripted", "--out", str(sessions), "--image-size", "32",
                  "--max-steps", "60", "--seed", "5", "--quiet", "--json", str(tmp_path / "coached.json")]) == 0
    said = [c for s in iter_sessions([sessions]) for ep in s.episodes for c in ep.corrections]
    assert said, "the scripted coach said nothing to an untrained grounded planner"
    plans = {(s.header.session_id, ep.episode, p.step): p for s in iter_sessions([sessions]) for ep in s.episodes
             for p in ep.plans if p.plan.source == "model"}
    assert plans and all(p.plan.thought.startswith("I see:") for p in plans.values())
    assert hivla(["export", str(sessions), "--format", "sft", "--out", str(export)]) == 0

    encoded = []
    real = finetune_data.encode_samples

    def spy(raw, processor):
        result = real(raw, processor)
        encoded.append((raw, result[0]))
        return result

    monkeypatch.setattr(finetune_data, "encode_samples", spy)
    capsys.readouterr()
    assert hivla(["finetune", "--base", str(ckpt), "--data", str(export), "--base-data", str(frames), "--out", str(out),
                  "--steps", "3", "--batch-size", "8", "--correction-share", "0.5", "--held-out-fraction", "0",
                  "--threads", "1", "--max-base-samples", "60"]) == 0, capsys.readouterr().err
    # the coaching windows, the agreement samples, then one part a planner-frame directory
    (windows, window_tensors), (agree, _), (base_raw, _) = encoded

    # base samples: planner frames as `hivla train --preset grounded` builds them
    rows = [row for stem in pf.shards(frames) for row in pf.read_shard(stem)[0]]
    true_lines = {format_scene(scene_from_facts(row["facts"], PlannerContext.from_dict(row["context"]).task, True))
                  for row in rows}
    plan_rows = [i for i, a in enumerate(base_raw.answers) if a is None]
    assert len(plan_rows) == len(rows) and len(base_raw) > len(rows)  # one plan a frame, and scene questions
    assert all(base_raw.thoughts[i] in true_lines for i in plan_rows)
    assert {base_raw.thoughts[i] for i in plan_rows} == true_lines
    histories = [base_raw.last_subtasks[i] for i in plan_rows if base_raw.last_subtasks[i]]
    assert histories and all(h.startswith(("done: ", "doing: ")) for h in histories)
    summary = json.loads((out / "finetune_summary.json").read_text())
    assert summary["base_samples_total"] == len(base_raw)
    assert json.loads((out / "base_cache.safetensors.json").read_text())["thoughts"] == "scene_bowls"

    # coaching samples: "<the line its read-out writes at the frame> So: <what the coach wanted>"
    assert len(windows) == summary["corrections"]["correction_samples"] > 0
    assert all(t.startswith("I see: ") and split_scene(t)[1] == "" for t in windows.thoughts + agree.thoughts)
    policy = load_pi05(ckpt)
    with torch.no_grad():
        from policies.pi05.objects import read_scenes

        images = torch.from_numpy(np.stack(windows.images))
        read = read_scenes(policy.model.vision.heads(policy.model.vision.features(images)), windows.tasks)
    facts_said = summary["corrections"]["scene_lines"]["with_facts"]
    assert facts_said > 0  # the coach told this misreading planner what is true: those lines say it
    unchanged = [t == format_scene(s) for t, s in zip(windows.thoughts, read)]
    assert sum(unchanged) >= len(windows) - facts_said  # the reading itself, but where a fact said replaced it
    targets = [policy.processor.decode(ids) for ids in windows_targets(window_tensors)]
    assert [policy.processor.parse_plan(t) for t in targets] == list(zip(windows.thoughts, windows.plan_subtasks))
    contexts = [c for c in windows.last_subtasks if c]
    assert contexts and all(c.startswith(("done: ", "doing: ")) for c in contexts)
    # an approved plan's line is the line the planner wrote when it made that plan
    written = {(f"{sid}/{ep}", p.plan.subtask, split_scene(p.plan.thought)[0]) for (sid, ep, _), p in plans.items()}
    matching = sum((key, sub, line) in written
                   for key, line, sub in zip(windows.episode_keys, windows.thoughts, windows.plan_subtasks))
    assert matching >= summary["corrections"]["approved_plan_samples"] > 0

    # the facts in force, as the export records them, are the sessions' (the contexts their plans read)
    from agent.training.finetune_data import recorded_facts

    def in_force(decisions, step):
        return ([facts for at, facts in decisions if at <= step] or [()])[-1]

    from_sessions, from_export = recorded_facts([str(sessions)], print), recorded_facts([str(export)], print)
    assert from_sessions and set(from_sessions) == set(from_export)
    for key, decisions in from_sessions.items():
        assert all(in_force(decisions, k) == in_force(from_export[key], k) for k in range(61)), key

    # the read-out (but its projection) and the action expert are the base checkpoint's
    from safetensors.torch import load_file

    base_w, ft_w = load_file(str(ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    frozen = [k for k in base_w if k.startswith(EXPERT_PREFIXES) or (k.startswith("vision.") and
                                                                   not k.startswith("vision.proj."))]
    assert frozen and all(torch.equal(base_w[k], ft_w[k]) for k in frozen)
    assert any(not torch.equal(base_w[k], ft_w[k]) for k in base_w if k.startswith("backbone"))
    assert summary["anchor_weight"] == 0.0  # a planner only: no low level reads its keys/values
    assert summary["after"]["train_agreement"] is not None and summary["after"]["base_plan_accuracy"] is not None

    # the fine-tuned checkpoint loads and plans, in closed loop
    tuned = load_pi05(out)
    assert tuned.cfg.vision_stem == "objects" and tuned.cfg.context_last == "history"
    assert hivla(["run", "--high-level", f"pi05:{out}", "--low-level", "expert", "--suite", "coaching",
                  "--family", "tidy_up", "--episodes", "1", "--image-size", "32", "--max-steps", "20", "--seed", "9",
                  "--quiet", "--json", str(tmp_path / "after.json"), "--out", str(tmp_path / "after")]) == 0
    after = [p for s in iter_sessions([tmp_path / "after"]) for ep in s.episodes for p in ep.plans]
    assert after and all(p.plan.thought.startswith("I see:") for p in after)


def windows_targets(tensors: dict) -> list[list[int]]:
    return [ids[mask].tolist() for ids, mask in zip(tensors["target_ids"], tensors["target_mask"].bool())]


def test_a_grounded_planner_refuses_session_base_data(grounded, tmp_path):
    """Sessions record no simulator facts, so they hold no scene line to learn from: refused, naming
    planner frames; a cache of other thoughts is refused too."""
    from agent.training.corrections import CorrectionDataError
    from agent.training.finetune_data import base_dataset
    from agent.training.finetune_settings import FinetuneSettings
    from policies.pi05.policy import load_checkpoint
    from sessions.synthetic import write_synthetic_session

    frames, ckpt = grounded
    _, processor = load_checkpoint(ckpt)
    write_synthetic_session(tmp_path / "sessions" / "a", episodes=1, steps=10, image_size=32, seed=0)
    settings = FinetuneSettings(base=str(ckpt), data=[], base_data=[str(tmp_path / "sessions")], out=str(tmp_path / "o"))
    with pytest.raises(CorrectionDataError, match="planner frames"):
        base_dataset(settings, processor, print)
    # a cache of the frames written without the scene lines (an older fine-tune's) is not read
    cache = tmp_path / "old"
    settings = FinetuneSettings(base=str(ckpt), data=[], base_data=[str(frames)], out=str(cache), max_base_samples=10)
    tensors, total = base_dataset(settings, processor, print)
    assert len(tensors["prefix_ids"]) == 10 < total and len(tensors["images"]) <= 10
    meta = json.loads((cache / "base_cache.safetensors.json").read_text())
    assert meta["thoughts"] == "scene_bowls" and meta["context_last"] == "history"
    reread, again = base_dataset(FinetuneSettings(base=str(ckpt), data=[], base_data=[str(cache)], out=str(tmp_path / "r")),
                                 processor, print)
    assert again == total and all(torch.equal(reread[k], tensors[k]) for k in tensors)
    del meta["thoughts"]
    (cache / "base_cache.safetensors.json").write_text(json.dumps(meta))
    with pytest.raises(CorrectionDataError, match="scene lines"):
        base_dataset(FinetuneSettings(base=str(ckpt), data=[], base_data=[str(cache)], out=str(tmp_path / "r2")),
                     processor, print)


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("coaching_rounds", ROOT / "benchmarks" / "coaching_rounds.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_runs_the_grounded_planner_with_the_shipped_vla(grounded, tmp_path):
    rounds = _load_benchmark()
    frames, ckpt = grounded
    args = rounds.parse_args(["--checkpoint", str(ckpt), "--low-level", "vla", "--workdir", str(tmp_path)])
    # no --low-level: `hivla run` executes with its shipped VLA
    assert rounds.level_flags(args, ckpt, ckpt) == ["--high-level", f"pi05:{ckpt}"]
    assert rounds.planner_only(ckpt)
    args.low_level = "expert"
    assert rounds.level_flags(args, ckpt, ckpt) == ["--high-level", f"pi05:{ckpt}", "--low-level", "expert"]
    defaults = rounds.parse_args([])
    assert defaults.preset == "grounded" and defaults.low_level is None
    from agent.specs import SHIPPED_CHECKPOINT, SHIPPED_VLA, default_low_level_spec

    assert default_low_level_spec() == f"vla:{SHIPPED_VLA}"
    base, base_data = rounds.base_checkpoint(None, defaults)
    assert base == SHIPPED_CHECKPOINT and base_data is None
    with pytest.raises(SystemExit):
        rounds.parse_args(["--low-level", "nonsense"])


def test_the_benchmark_refuses_a_planner_only_checkpoint_as_its_low_level(grounded, tmp_path):
    rounds = _load_benchmark()
    _, ckpt = grounded
    for low in ("base", "finetuned"):
        with pytest.raises(SystemExit, match="planner only"):
            rounds.main(["--checkpoint", str(ckpt), "--low-level", low, "--workdir", str(tmp_path),
                         "--json", str(tmp_path / "r.json")])
    assert not (tmp_path / "round0").exists()  # refused before any stage ran


@pytest.mark.slow
def test_the_benchmark_runs_a_round_with_a_tiny_grounded_planner(grounded, tmp_path):
    """benchmarks/coaching_rounds.py end to end (every stage a hivla subprocess) with the tiny grounded
    planner and its planner frames as base data (the scripted expert executes: the shipped VLA is the
    full run's low level, which this test must not wait for)."""
    rounds = _load_benchmark()
    frames, ckpt = grounded
    out = tmp_path / "rounds"
    assert rounds.main(["--checkpoint", str(ckpt), "--base-data", str(frames), "--low-level", "expert",
                        "--episodes", "1", "--base-episodes", "0", "--coached", "2", "--rounds", "2",
                        "--finetune-steps", "3", "--image-size", "32", "--max-steps", "80", "--workdir", str(out),
                        "--json", str(tmp_path / "rounds.json")]) == 0
    result = json.loads((tmp_path / "rounds.json").read_text())
    assert [r["round"] for r in result["rows"]] == [0, 1, 2]
    assert result["config"]["low_level"] == "expert"
    first = json.loads((out / "round1" / "ckpt" / "finetune_summary.json").read_text())
    second = json.loads((out / "round2" / "ckpt" / "finetune_summary.json").read_text())
    assert first["anchor_weight"] == 0.0 and second["base_samples_total"] == first["base_samples_total"]
    log = (out / "coaching_rounds.log").read_text()
    assert f"--base-data {out / 'round1' / 'ckpt'}" in log  # round 2 reads round 1's draw of the base data
