"""Nudges teach the low level (issue 32, item 4): the steps each nudge of a recorded session moved the arm
(agent/coaching/nudge_bursts.py), the VLA samples they become (agent/training/vla_data.py, `nudges:`),
the LeRobot export's intervention column on exactly those frames, and the miniature round
(benchmarks/nudge_round.py --preset tiny) end to end."""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from agent.cli import main as hivla  # noqa: E402
from agent.coaching.nudge import nudge_to_action_offset  # noqa: E402
from agent.coaching.nudge_bursts import completed_subtasks, nudge_bursts  # noqa: E402
from agent.envs import make_env  # noqa: E402
from agent.envs.oracle import OraclePlanner  # noqa: E402
from agent.errors import UserError  # noqa: E402
from agent.training.vla_data import build_processor, collect_vla_samples, encode_vla_samples  # noqa: E402
from oracle_session import recorded_loop  # noqa: E402
from policies.vla.configuration import make_config  # noqa: E402
from sessions.export import ExportOptions, export_sessions  # noqa: E402
from sessions.export.lerobot_files import DATA_PATH, INTERVENTION  # noqa: E402
from sessions.reader import read_session  # noqa: E402
from sessions.synthetic import write_synthetic_session  # noqa: E402

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
FAMILY, SEED = "put_color_in_bowl", 7  # pick, place, pick, place
# What the person types, by the control step it is applied at: two nudges, the second said while the
# first still runs (queued behind it); one paused in the middle; one cut short by a stop.
SAID = {6: "a bit to the left", 8: "a bit back", 20: "move up a bit", 21: "/pause", 23: "/resume", 40: "lower",
        42: "stop", 44: "go on"}
BURSTS = [(6, 7, 8, 9), (10, 11, 12, 13), (20, 23, 24, 25), (40, 41)]
HELPED = [False, False, True, True]  # the first two: another nudge came before the pick was done
CFG = make_config("tiny", chunk_size=8, n_action_steps=6)


@pytest.fixture(scope="module")
def nudged(tmp_path_factory):
    """The oracle and the scripted expert on the real simulator, a person nudging now and then, recorded."""
    path = tmp_path_factory.mktemp("nudged") / "session"
    env = make_env(suite="base", image_size=32)
    with recorded_loop(path, env, OraclePlanner(seed=SEED), seed=SEED) as loop:
        loop.reset(seed=SEED, options={"family": FAMILY})
        episode = loop._episode
        while not episode.over and episode.step < 200:
            if episode.step in SAID:
                loop.submit(SAID[episode.step])
            loop.step()
    env.close()
    return path


def test_each_nudge_and_the_steps_its_burst_moved_the_arm(nudged):
    ep = read_session(nudged).episodes[0]
    assert ep.success
    bursts = nudge_bursts(ep)
    assert [b.correction.text for b in bursts] == ["a bit to the left", "a bit back", "move up a bit", "lower"]
    assert [b.positions for b in bursts] == BURSTS  # paused steps take no offset, a stop drops the rest
    assert [ep.steps[p].paused for p in (21, 22, 42, 43)] == [True] * 4
    assert [b.helped for b in bursts] == HELPED
    assert [b.subtask for b in bursts][2:] == ["pick up the small yellow block", "place it in the orange bowl"]
    for b in bursts:  # each burst step executed the nudge's offset (the grip the arm held when it was said)
        said = ep.position_of_step(b.correction.step)
        grip_closed = said > 0 and ep.steps[said - 1].action[4] > 0
        offset = nudge_to_action_offset(b.correction.text, grip_closed=grip_closed)
        for p in b.positions:
            np.testing.assert_allclose(ep.steps[p].action, offset, atol=1e-6)
    assert completed_subtasks(ep)[:2] == ["pick up the small yellow block", "place it in the orange bowl"]


def test_the_loop_records_which_steps_a_nudge_moved_and_old_sessions_read_the_same(nudged):
    ep = read_session(nudged).episodes[0]
    assert [i for i, s in enumerate(ep.steps) if s.intervention] == [p for b in BURSTS for p in b]
    # a session of schema 6 or older has no flag: the bursts are read back from the records, the same
    old = replace(ep, steps=[s.model_copy(update={"intervention": False}) for s in ep.steps])
    assert [b.positions for b in nudge_bursts(old)] == BURSTS


def test_nudge_samples_start_with_the_bursts_offsets_then_what_ran_next(nudged):
    ep = read_session(nudged).episodes[0]
    actions = np.asarray([s.action for s in ep.steps], np.float32)
    raw = collect_vla_samples([f"nudges:{nudged}"], CFG, log=lambda m: None)
    helped = [p for b, ok in zip(BURSTS, HELPED) if ok for p in b]
    assert len(raw) == len(helped) == 6 and all(raw.nudge)
    assert raw.subtasks == [ep.steps[p].subtask for p in helped]
    offset = actions[20]
    first = raw.actions[0]  # at step 20: the nudge's first action, then a pause: the chunk ends there
    np.testing.assert_allclose(first[0], offset)
    assert raw.action_masks[0].tolist() == [True] + [False] * 7
    at_23 = raw.actions[1]  # three more of the nudge, then the low level's own actions from where it ended
    np.testing.assert_allclose(at_23[:3], np.stack([offset] * 3))
    np.testing.assert_allclose(at_23[3:], actions[26:31])
    assert raw.action_masks[1].all()
    at_40 = raw.actions[4]  # cut short by the stop two steps in: held steps are not taught
    np.testing.assert_allclose(at_40[:2], actions[40:42])
    assert raw.action_masks[4].tolist() == [True, True] + [False] * 6
    np.testing.assert_array_equal(raw.images[0][0], ep.frame("front", 20))  # the frame the nudge was taken at
    np.testing.assert_array_equal(raw.states[2], np.asarray(ep.steps[24].state, np.float32))

    every = collect_vla_samples([f"nudges-all:{nudged}"], CFG, log=lambda m: None)
    assert len(every) == sum(map(len, BURSTS)) == 14
    mixed = collect_vla_samples([str(nudged), f"nudges:{nudged}"], CFG, stride=5, log=lambda m: None)
    plain = [i for i in range(0, len(ep.steps), 5) if ep.steps[i].subtask and not ep.steps[i].paused]
    assert len(mixed) == len(plain) + 6 and sum(mixed.nudge) == 6
    _, meta = encode_vla_samples(mixed, build_processor(mixed, make_config("tiny", chunk_size=8), vocab_size=600))
    assert meta["nudge_samples"] == 6 and meta["samples"] == len(mixed)


def test_the_lerobot_export_marks_exactly_the_frames_a_nudge_moved(nudged, tmp_path):
    out = tmp_path / "lerobot"
    export_sessions([nudged], out, ExportOptions(format="lerobot", video_codec="lossless"))
    flags = pq.read_table(out / DATA_PATH.format(chunk_index=0, file_index=0))[INTERVENTION].to_pylist()
    assert [i for i, f in enumerate(flags) if f] == [p for b in BURSTS for p in b]  # helped or not: a person's
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["features"][INTERVENTION] == {"dtype": "bool", "shape": [1], "names": None}
    stats = json.loads((out / "meta" / "stats.json").read_text())[INTERVENTION]
    assert stats["max"] == [1.0] and stats["mean"][0] == pytest.approx(14 / len(flags))


def test_asking_for_nudges_where_none_moved_the_arm_is_one_line_naming_the_fix(tmp_path):
    # synthetic sessions say "a bit more to the left" over random actions: no step ran a nudge
    synthetic = write_synthetic_session(tmp_path / "s", episodes=2, steps=12, image_size=32, seed=4)
    with pytest.raises(UserError, match="--all-nudges"):
        collect_vla_samples([f"nudges:{synthetic}"], CFG, log=lambda m: None)
    with pytest.raises(UserError, match="hivla run --coach scripted"):
        collect_vla_samples([f"nudges-all:{synthetic}"], CFG, log=lambda m: None)
    common = ["train", "--data", str(synthetic), "--out", str(tmp_path / "o")]
    assert hivla([*common, "--nudge-data", str(synthetic)]) == 2  # --model pi05: nudges teach the low level
    assert hivla([*common, "--model", "vla", "--all-nudges"]) == 2  # no --nudge-data to keep them from
    assert hivla([*common, "--model", "vla", "--nudge-data", str(tmp_path / "none")]) == 2


@pytest.mark.slow
def test_the_tiny_nudge_round_runs_end_to_end(tmp_path):
    """benchmarks/nudge_round.py --preset tiny: about a minute (a tiny VLA trained, coached, fine-tuned)."""
    spec = importlib.util.spec_from_file_location("nudge_round", ROOT / "benchmarks" / "nudge_round.py")
    nudge_round = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nudge_round)

    out = tmp_path / "result.json"
    assert nudge_round.main(["--preset", "tiny", "--workdir", str(tmp_path / "w"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    nudges = result["nudges"]
    assert nudges["nudges"] > 0 and nudges["burst_steps"] > 0
    # every step a nudge moved is one training sample, and one frame the export marks
    marked = result["data"]["export"]["intervention_frames"]
    assert result["finetune"]["nudge_samples"] == nudges["burst_steps"] == marked
    assert result["finetune"]["steps"] == 20 and 0 < result["finetune"]["nudge_share"] < 1
    for when in ("before", "after"):
        assert result[when]["nudged_subtasks_all"]["n"] == len(result["situations"]["all"]) > 0
        assert 0.0 <= result[when]["heldout_success"] <= 1.0
    from safetensors.torch import load_file

    base = load_file(str(tmp_path / "w" / "base_vla" / "model.safetensors"))
    tuned = load_file(str(tmp_path / "w" / "vla_nudged" / "model.safetensors"))
    assert any(not torch.equal(base[k], tuned[k]) for k in base)  # the round changed the low level
