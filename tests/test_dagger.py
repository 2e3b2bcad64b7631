"""DAgger data for the low-level VLA (`hivla datagen --mode dagger`, agent.training.dagger), on a tiny
random VLA with the shipped rhythm (a 10-action chunk, 7 executed): what runs, what is labelled, the
sessions the VLA trainer reads, resuming."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from agent.cli import main as hivla  # noqa: E402
from agent.commands.datagen import record_episodes  # noqa: E402
from agent.envs import make_env  # noqa: E402
from agent.envs.expert import ScriptedExpert  # noqa: E402
from agent.envs.oracle import OraclePlanner  # noqa: E402
from agent.runtime import events as ev  # noqa: E402
from agent.runtime.factory import build_loop  # noqa: E402
from agent.specs import make_low_level  # noqa: E402
from agent.training import dagger  # noqa: E402
from agent.training.vla_data import collect_vla_samples  # noqa: E402
from agent.training.vla_trainer import VlaTrainSettings, train_vla  # noqa: E402
from memory_recorder import MemoryRecorder  # noqa: E402
from random_vla import make_random_vla  # noqa: E402
from policies.vla.configuration import VlaConfig  # noqa: E402
from sessions.reader import read_session  # noqa: E402

torch.set_num_threads(1)
FAMILY, SEED = "put_color_in_bowl", 7  # pick, then place
CHUNK, EXECUTE, IMAGE, RENDER = 10, 7, 32, 64


@pytest.fixture(scope="module")
def vla(tmp_path_factory):
    """An untrained tiny VLA that predicts 10 actions and hands the loop 7 (the shipped rhythm)."""
    return make_random_vla(tmp_path_factory.mktemp("dagger_vla"),
                           ["pick up the red block", "place it in the blue bowl", "push the red block to the left"],
                           chunk_size=CHUNK, n_action_steps=EXECUTE)


class _Seen:
    """Observes after the recording: each step's executed action, and the chunk a fresh scripted expert
    (no memory of earlier calls) makes at the state the step was taken from."""

    def __init__(self) -> None:
        self.actions, self.fresh = [], []

    def on_event(self, event) -> None:
        if isinstance(event, ev.StepTaken):
            self.actions.append(np.asarray(event.action))
            self.fresh.append(ScriptedExpert(horizon=CHUNK, strict=False).act(event.obs, event.subtask))


def _episode(vla, beta: float, max_steps: int, seed: int = SEED, family: str = FAMILY):
    """One DAgger episode through the real pieces: (recorded steps, the DaggerLowLevel, what _Seen saw)."""
    env = make_env(suite="base", image_size=RENDER, seed=seed)
    labels = dagger.ExpertLabels(horizon=CHUNK, seed=seed)
    low = dagger.DaggerLowLevel(make_low_level(f"vla:{vla}", seed=seed), labels, beta, execute=EXECUTE)
    rec, seen = MemoryRecorder(), _Seen()
    loop = build_loop(env, OraclePlanner(seed=seed), low, compute_model_plan=False,
                      observers=[dagger.LabelledRecording(rec, labels, IMAGE), seen])
    low.begin_episode(seed)
    loop.run_episode(seed=seed, options={"family": family}, max_steps=max_steps)
    loop.close()
    env.close()
    return rec.steps, low, seen


def _chunk_runs(steps, starts):
    """[(first step, steps executed)] of each chunk from the low level's chunk starts."""
    firsts = [s for s, _ in starts]
    return [(a, b - a) for a, b in zip(firsts, [*firsts[1:], len(steps)])]


def test_labels_are_the_experts_chunk_at_the_visited_state_not_the_executed_action(vla):
    steps, low, seen = _episode(vla, beta=0.0, max_steps=40)  # the random policy acts alone
    assert low.chunks == {"expert": 0, "policy": len(low.starts)} and len(steps) == 40
    assert all(s.label is not None and np.shape(s.label) == (CHUNK, 5) for s in steps)
    labels = np.asarray([s.label for s in steps])
    # the label depends on the visited state alone: a fresh expert asked there makes the same chunk
    picks = [i for i, s in enumerate(steps) if s.subtask.startswith("pick")]
    assert len(picks) > 20
    np.testing.assert_allclose(labels[picks], np.asarray(seen.fresh)[picks], atol=1e-6)
    # and it is not what was executed: the policy's actions
    executed = np.asarray([s.action for s in steps])
    np.testing.assert_allclose(executed, np.asarray(seen.actions), atol=1e-6)
    assert np.abs(executed - labels[:, 0]).max(axis=1).min() > 1e-4


def test_chunks_follow_the_policys_rhythm_and_an_expert_chunk_is_its_label(vla):
    steps, low, _ = _episode(vla, beta=0.5, max_steps=120)
    assert low.chunks["expert"] > 2 and low.chunks["policy"] > 2
    subtask_starts = {i for i in range(1, len(steps)) if steps[i].subtask != steps[i - 1].subtask}
    runs = _chunk_runs(steps, low.starts)
    for (first, length), (_, who) in zip(runs, low.starts):
        # 7 actions, then the loop asks again, unless a new subtask cut the chunk short (or the episode ended)
        assert length == EXECUTE or first + length in subtask_starts or first + length == len(steps)
        if who == "expert":
            executed = [steps[first + k].action for k in range(length)]
            np.testing.assert_allclose(executed, np.asarray(steps[first].label)[:length], atol=1e-5)
    assert all(s.label is not None for s in steps)


def test_beta_one_is_the_expert_asked_every_seven_steps(vla, tmp_path):
    counts = dagger.record_shard(str(tmp_path), [SEED], "base", f"vla:{vla}", 1.0, IMAGE, RENDER, 300, [FAMILY])
    assert counts["policy_chunks"] == 0 and counts["successes"] == 1
    recorded = read_session(tmp_path / dagger.shard_name(SEED)).episodes[0]
    assert recorded.end.success and all(s.label is not None for s in recorded.steps)
    # the plain scripted expert (noise-free) in the loop, asked again after 7 actions
    env = make_env(suite="base", image_size=RENDER, seed=SEED)
    plain = MemoryRecorder()
    loop = build_loop(env, OraclePlanner(seed=SEED), ScriptedExpert(horizon=CHUNK, seed=SEED), recorder=plain,
                      execute_steps=EXECUTE, compute_model_plan=False)
    loop.run_episode(seed=SEED, options={"family": FAMILY}, max_steps=300)
    env.close()
    assert len(recorded.steps) == len(plain.steps)
    np.testing.assert_allclose([s.action for s in recorded.steps], [s.action for s in plain.steps], atol=1e-6)
    assert [s.subtask for s in recorded.steps] == [s.subtask for s in plain.steps]


def _datagen(vla, out, *extra: str) -> int:
    return hivla(["datagen", "--mode", "dagger", "--low-level", f"vla:{vla}", "--out", str(out), "--image-size",
                  str(IMAGE), "--render-size", str(RENDER), "--max-steps", "25", "--episodes", "2",
                  "--shard-episodes", "1", "--seed", "50", "--families", "push_to_side", *extra])


def test_a_round_writes_sessions_the_vla_trainer_reads_beside_expert_sessions(vla, tmp_path, capsys):
    out = tmp_path / "r1"
    assert _datagen(vla, out, "--beta", "0.5") == 0
    assert dagger.done_shards(out) == ["dagger_0000050", "dagger_0000051"]
    summary = dagger.round_summary(out)
    assert summary["episodes"] == 2 and summary["labelled_steps"] == summary["steps"] == 50
    assert summary["expert_chunks"] + summary["policy_chunks"] >= 2 * 25 / EXECUTE
    sessions = [read_session(out / name) for name in dagger.done_shards(out)]
    assert {ep.start.family for s in sessions for ep in s.episodes} == {"push_to_side"}
    assert sessions[0].header.cameras == {"front": (IMAGE, IMAGE), "wrist": (IMAGE, IMAGE)}
    assert sessions[0].header.env["beta"] == 0.5 and sessions[0].header.env["n_action_steps"] == EXECUTE

    cfg = VlaConfig.load(vla / "config.json")
    raw = collect_vla_samples([out], cfg, log=lambda _: None)
    labels = [np.asarray(s.label) for sess in sessions for ep in sess.episodes for s in ep.steps]
    assert len(raw) == 50
    np.testing.assert_allclose(np.stack(raw.actions), np.stack(labels), atol=1e-6)  # the labels, not what ran
    assert all(m.all() for m in raw.action_masks)

    # a round aggregates with the expert's sessions: those still learn the actions executed next
    expert = tmp_path / "expert"
    record_episodes(str(expert), 0, [60], "base", 0.0, IMAGE, 20, ["push_to_side"])
    both = collect_vla_samples([expert, out], cfg, log=lambda _: None)
    assert len(both) == 50 + 20 and not both.action_masks[19].all()  # the expert's last step: a cut chunk
    run = tmp_path / "ckpt"
    summary = train_vla(VlaTrainSettings(data=[str(expert), str(out)], out=str(run), preset="tiny", steps=3,
                                         batch_size=8, warmup_steps=1, eval_every=10**9, closed_loop_every=0,
                                         held_out_fraction=0.0, vocab_size=600))
    assert summary["steps"] == 3 and (run / "model.safetensors").is_file()


def test_a_killed_round_resumes_and_skips_the_shards_it_wrote(vla, tmp_path, capsys):
    out = tmp_path / "r1"
    assert _datagen(vla, out, "--beta", "0.5") == 0
    first = read_session(out / "dagger_0000050").header.session_id
    second = read_session(out / "dagger_0000051").header.session_id
    # as if killed while recording the second shard: its directory is a partial one, its counts absent
    (out / "dagger_0000051").rename(out / "dagger_0000051.partial")
    (out / "dagger_0000051.json").unlink()
    capsys.readouterr()
    assert _datagen(vla, out, "--beta", "0.5") == 0
    assert "1 of 2 shards already in" in capsys.readouterr().out
    assert read_session(out / "dagger_0000050").header.session_id == first  # not recorded again
    assert read_session(out / "dagger_0000051").header.session_id != second
    assert not (out / "dagger_0000051.partial").exists() and dagger.round_summary(out)["episodes"] == 2
    assert _datagen(vla, out, "--beta", "0.5") == 0
    assert "2 of 2 shards already in" in capsys.readouterr().out
    # a round is recorded with one set of settings: another beta is another --out
    assert _datagen(vla, out, "--beta", "0.25") == 2
    err = capsys.readouterr().err
    assert "recorded with other beta" in err and "use another --out" in err
    assert json.loads((out / dagger.MANIFEST).read_text())["beta"] == 0.5


@pytest.mark.parametrize("argv, says", [
    (["--mode", "dagger"], "--mode dagger needs --beta in [0, 1]"),
    (["--mode", "dagger", "--beta", "1.5"], "--mode dagger needs --beta in [0, 1]"),
    (["--mode", "dagger", "--beta", "0.5", "--low-level", "expert"], "--low-level default or vla:PATH"),
    (["--mode", "dagger", "--beta", "0.5", "--noise", "0.004"], "--noise is not used by --mode dagger"),
    (["--beta", "0.5"], "--beta is for --mode dagger"),
    (["--mode", "planner", "--beta", "0.5"], "--beta is for --mode dagger"),
    (["--shard-episodes", "5"], "--low-level and --shard-episodes are for --mode planner and --mode dagger"),
])
def test_options_a_mode_does_not_use_are_one_error(argv, says, tmp_path, capsys):
    assert hivla(["datagen", "--out", str(tmp_path / "x"), *argv]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_dropped_block_is_labelled_with_the_re_grasp():
    env = make_env(suite="base", image_size=RENDER, seed=SEED)
    raw, info = env.reset(seed=SEED, options={"family": FAMILY})
    obs = env.observation(raw, info)
    pick, place = info["subtasks"][:2]
    labels = dagger.ExpertLabels(horizon=CHUNK)

    def run(actions) -> None:
        nonlocal obs
        for a in actions:
            raw, _, _, _, info = env.step(a)
            obs = env.observation(raw, info)

    for _ in range(30):  # the expert picks the block and lifts it (it is asked at every state, as in a round)
        run(labels.chunk(obs, pick)[:EXECUTE])
        if obs.privileged.held and obs.privileged.block(obs.privileged.held).pos[2] > 0.06:
            break
    block = obs.privileged.held
    assert block is not None
    run(labels.chunk(obs, place)[:3])  # carrying it towards the bowl
    run([np.array([0, 0, 0, 0, -1.0], np.float32)] * 8)  # the jaws open: dropped
    assert obs.privileged.held is None
    env.close()
    label = labels.chunk(obs, place)
    # over the block, down with the jaws open, then closed on it: a grasp again, not a release or a retreat
    assert label[0, 4] == -1.0 and label[:, 4].max() == 1.0 and label[:5, 2].sum() < -0.03
    np.testing.assert_allclose(label, ScriptedExpert(horizon=CHUNK).act(obs, pick), atol=1e-6)
