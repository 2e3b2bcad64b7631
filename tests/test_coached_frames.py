"""Coached planner frames (`hivla datagen --mode planner --coach scripted`): what their contexts hold,
that the oracle's labels obey it, that the planner's dataset reads them, and the measurement
benchmarks/offline_eval.py makes of them with policies/obey.py's check."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from agent.cli import main as hivla
from agent.training import planner_frames as pf
from agent.training.dataset import collect_planner_frames
from policies.obey import Forbid, binding, obeys
from policies.planning import RULE_MARK, PlannerContext

TINY = {"image_size": 32, "width": 32, "depth": 1, "mlp_dim": 64, "head_dim": 16, "vision_width": 32,
        "vision_depth": 1, "vision_heads": 2, "vision_mlp_dim": 32}


def _offline_eval():
    spec = importlib.util.spec_from_file_location("offline_eval", Path(__file__).resolve().parents[1] / "benchmarks"
                                                  / "offline_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


offline_eval = _offline_eval()
context_following = offline_eval.context_following
SEEDS = [15, 16, 17]  # one coached session of sort_into_bowls: a negation, an override, a rule said for good


@pytest.fixture(scope="module")
def coached(tmp_path_factory):
    out = tmp_path_factory.mktemp("coached_frames")
    pf.write_manifest(out, 32, 8, 64, "scripted", 3)
    counts = pf.record_shard(str(out), SEEDS, "base", 0.0, 32, 300, ["sort_into_bowls"], render_size=64,
                             coach="scripted", session_episodes=3)
    rows, _, _ = pf.read_shard(pf.shards(out)[0])
    return out, counts, rows


def _said(row) -> set[str]:
    return {c["kind"] for c in row["context"]["corrections"]} | ({"memory"} if row["context"]["memory"] else set())


def test_coached_frames_carry_what_was_said_and_the_oracle_obeys_it(coached):
    _, counts, rows = coached
    assert counts["interventions"] >= 3 and counts["successes"] == len(SEEDS)
    said = set().union(*map(_said, rows))
    assert {"negation", "override", "memory"} <= said, said
    ruled = [r for r in rows if r["forbids"]]
    assert len(ruled) >= 10
    for row in ruled:
        forbids = [Forbid.from_dict(f) for f in row["forbids"]]
        # what is checked is what the planner reads: every rule is a line of its context
        read = PlannerContext.from_dict(row["context"]).read_texts
        assert all(f.text in read or f"{RULE_MARK}{f.text}" in read for f in forbids), (forbids, read)
        assert obeys(row["subtask"], forbids, row["allowed"]), row  # the label obeys
    assert any(binding([Forbid.from_dict(f) for f in r["forbids"]], r["allowed"]) for r in ruled)
    # a rule said for good in one episode is in the next episodes' first contexts
    later_firsts = [r for r in rows if r["episode"] != SEEDS[0] and not r["context"]["done"]
                    and r["context"]["in_force"] is None]
    assert any(r["context"]["memory"] for r in later_firsts)


def test_coached_frames_load_through_the_planner_dataset_unchanged(coached):
    out, _, rows = coached
    raw = collect_planner_frames([out], ("front", "wrist"), 32, 4, log=lambda m: None)
    assert len(raw) == len(rows) == len(raw.images)
    for i, row in enumerate(rows):
        assert raw.frame_of[i] == i and raw.plan_subtasks[i] == row["subtask"]
        assert raw.corrections[i] == PlannerContext.from_dict(row["context"]).read_texts
    assert any(c.startswith(RULE_MARK) for cs in raw.corrections for c in cs)
    assert any(not c.startswith(RULE_MARK) for cs in raw.corrections for c in cs)


def test_the_measurement_catches_a_plan_that_breaks_what_it_was_told(coached):
    _, _, rows = coached
    ruled = [r for r in rows if r["forbids"]]
    bound = [r for r in ruled if binding([Forbid.from_dict(f) for f in r["forbids"]], r["allowed"])]
    obedient = context_following([(r, r["subtask"]) for r in ruled])
    assert obedient["in force"] == {"frames": len(ruled), "model_obeys": 1.0, "oracle_obeys": 1.0}
    # a model that takes the ruled-out step wherever the rules make a choice
    def broken(row):
        forbids = [Forbid.from_dict(f) for f in row["forbids"]]
        return next(s for s in row["allowed"] if any(f.forbids(s) for f in forbids))
    result = context_following([(r, broken(r) if r in bound else r["subtask"]) for r in ruled])
    assert result["binding"]["frames"] == len(bound) and result["binding"]["model_obeys"] == 0.0
    assert result["binding"]["oracle_obeys"] == 1.0
    assert result["in force"]["model_obeys"] == pytest.approx(1 - len(bound) / len(ruled))
    assert context_following([(r, r["subtask"]) for r in rows if not r["forbids"]]) == {}


def test_a_tiny_grounded_planner_trains_on_coached_frames_and_the_evaluation_measures_it(coached, tmp_path):
    from agent.training.readout_trainer import ReadoutSettings, train_readout
    from agent.training.trainer import TrainSettings, train

    out, _, rows = coached
    torch.set_num_threads(1)
    readout = tmp_path / "readout"
    train_readout(ReadoutSettings(data=[str(out)], out=str(readout), preset="grounded", steps=2, batch_size=8,
                                  eval_every=2, threads=1, warmup_steps=1, held_out_fraction=0.2, overrides=TINY))
    ckpt = tmp_path / "planner"
    train(TrainSettings(data=[str(out)], out=str(ckpt), preset="grounded", steps=2, batch_size=8, eval_every=2,
                        eval_samples=8, eval_generate=2, threads=1, warmup_steps=1, vocab_size=700,
                        held_out_fraction=0.25, scene_questions=0.3, readout=str(readout), overrides=TINY))
    report = tmp_path / "oe.json"
    assert offline_eval.main(["--checkpoint", str(ckpt), "--data", str(out), "--frames", "16", "--threads", "1",
                              "--questions", "0", "--json", str(report)]) == 0
    following = json.loads(report.read_text())["context_following"]
    assert following["in force"]["frames"] == min(16, sum(bool(r["forbids"]) for r in rows))
    assert following["in force"]["oracle_obeys"] == 1.0 and 0.0 <= following["in force"]["model_obeys"] <= 1.0


# --- the data mode --------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, says", [
    (["--coach", "scripted"], "--coach is for --mode planner"),
    (["--mode", "planner", "--session-episodes", "3"], "--session-episodes is for --coach scripted"),
    (["--mode", "planner", "--coach", "scripted", "--session-episodes", "0"], "--session-episodes must be at least 1"),
])
def test_coaching_options_outside_their_mode_are_one_error(argv, says, tmp_path, capsys):
    assert hivla(["datagen", "--out", str(tmp_path / "x"), *argv]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_datagen_records_coached_frames_resumably(tmp_path, capsys):
    out = tmp_path / "coached"
    plain = ["datagen", "--mode", "planner", "--episodes", "2", "--shard-episodes", "1", "--families",
             "sort_into_bowls", "--image-size", "32", "--render-size", "64", "--max-steps", "300",
             "--seed", str(SEEDS[0]), "--out", str(out)]
    argv = plain + ["--coach", "scripted", "--session-episodes", "2"]
    assert hivla(argv) == 0
    assert "the coach intervened" in capsys.readouterr().out
    assert [s.name for s in pf.shards(out)] == ["shard_0000015", "shard_0000016"]
    manifest = json.loads((out / pf.MANIFEST).read_text())
    assert manifest["coach"] == {"kind": "scripted", "session_episodes": 2}
    assert hivla(argv) == 0
    assert "2 of 2 shards already in" in capsys.readouterr().out
    # uncoached frames are another recording: another --out
    assert hivla(plain) == 2
    assert "use another --out" in capsys.readouterr().err
