"""The low-level VLA end to end on tiny configs: real sessions from the simulator, training, closed loop,
checkpoints, specs, and the per-primitive evaluation with a learned policy."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from agent.commands.datagen import record_episodes
from agent.envs import make_env
from agent.envs.eval_primitives import evaluate, run_subtask
from agent.envs.oracle import OraclePlanner
from agent.training.vla_data import chunk_masks, collect_vla_samples
from agent.training.vla_trainer import TRAINER_STATE, VlaTrainSettings, train_vla
from policies.checkpoint import CheckpointError
from policies.types import PlanContext
from policies.vla.configuration import make_config
from policies.vla.policy import VlaLowLevel, load_vla

torch.set_num_threads(1)
FAMILY, SEEDS = "block_in_drawer_and_close", (10, 11, 12)  # every episode starts with "open the drawer"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vla_data")
    record_episodes(str(root), 0, list(SEEDS), "base", 0.0, 64, 40, [FAMILY])
    return root


def _settings(data, out, steps, **kw):
    return VlaTrainSettings(data=[str(data)], out=str(out), preset="tiny", steps=steps, batch_size=32, lr=3e-3,
                            warmup_steps=20, ema_decay=0.9, eval_every=10**9, closed_loop_every=0,
                            held_out_fraction=0.0, vocab_size=600, overrides={"random_shift_pad": 0}, **kw)


@pytest.fixture(scope="module")
def overfit(data, tmp_path_factory):
    """1,200 steps (about 20 s) on three recorded episodes (800 sat at the edge: a change to the prompts, whose
    text the tokenizer is also trained on, was enough to leave the drawer shut)."""
    out = tmp_path_factory.mktemp("vla_ckpt")
    train_vla(_settings(data, out, 1200))
    return out


def _first_situation(seed):
    env = make_env(suite="base", image_size=64)
    obs, info = env.reset(seed=seed, options={"family": FAMILY})
    subtask = OraclePlanner(seed=seed).plan(env.observation(obs, info), PlanContext(task=obs["task"])).subtask
    return env, obs, info, subtask


def test_chunks_stop_where_the_subtask_changes():
    masks = chunk_masks(["a", "a", "a", "b", "b"], [False] * 5, horizon=3)
    assert masks.tolist() == [[True, True, True], [True, True, False], [True, False, False],
                              [True, True, False], [True, False, False]]
    paused = chunk_masks(["a"] * 3, [False, True, False], horizon=3)
    assert paused[0].tolist() == [True, False, False]


def test_samples_come_from_the_recorded_steps(data):
    raw = collect_vla_samples([data], make_config("tiny"))
    assert raw.images[0].shape == (2, 32, 32, 3) and raw.images[0].dtype == np.uint8
    assert raw.actions[0].shape == (4, 5)
    assert raw.subtasks[0] == "open the drawer"
    assert any(not m.all() for m in raw.action_masks)  # chunks end at subtask changes


def test_tiny_overfit_closes_the_loop_on_open_the_drawer(overfit):
    env, obs, info, subtask = _first_situation(SEEDS[0])
    assert subtask == "open the drawer"
    ok, used, _, _ = run_subtask(env, VlaLowLevel(load_vla(overfit)), subtask, 60, obs, info)
    assert ok, f"the overfit policy did not open the drawer in {used} steps"


def test_changing_only_the_subtask_text_changes_the_chunk(overfit):
    env, obs, info, _ = _first_situation(SEEDS[0])
    policy = load_vla(overfit)
    o = env.observation(obs, info)
    opened = policy.predict_action_chunk(o, "open the drawer")
    assert np.array_equal(opened, policy.predict_action_chunk(o, "open the drawer"))  # deterministic
    other = policy.predict_action_chunk(o, "put it in the drawer")
    assert np.abs(opened - other).max() > 1e-3


def test_save_load_round_trip_gives_identical_chunks(overfit, tmp_path):
    from policies.vla.policy import save_checkpoint

    env, obs, info, subtask = _first_situation(SEEDS[1])
    first = load_vla(overfit)
    copy_dir = save_checkpoint(tmp_path / "copy", first.model, first.processor)
    o = env.observation(obs, info)
    assert np.array_equal(first.predict_action_chunk(o, subtask), load_vla(copy_dir).predict_action_chunk(o, subtask))


def test_a_truncated_checkpoint_is_one_clear_error(overfit, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(overfit, bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_vla(bad)
    assert "\n" not in str(err.value)


def test_a_mismatched_checkpoint_is_one_clear_error(overfit, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(overfit, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["keypoints"] = cfg["keypoints"] * 2
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match config.json"):
        load_vla(bad)
    with pytest.raises(CheckpointError, match="pi05"):
        load_vla(_pi05_dir(tmp_path))


def _pi05_dir(tmp_path):
    from policies.pi05.configuration import make_config as pi05_config
    from policies.pi05.modeling import Pi05Model
    from policies.pi05.policy import save_checkpoint
    from policies.pi05.processor import NormStats, prompt_corpus, train_tokenizer

    cfg = pi05_config("tiny")
    tok = train_tokenizer(prompt_corpus(), vocab_size=cfg.vocab_size)
    stats = NormStats(*(np.zeros(d, np.float32) + v for d in (8, 8, 5, 5) for v in (0,)))
    return save_checkpoint(tmp_path / "pi05", Pi05Model(cfg), tok, stats)


def test_training_resumes_where_it_stopped(data, tmp_path):
    out = tmp_path / "run"
    assert train_vla(_settings(data, out, 20, stop_at=10))["steps"] == 10
    summary = train_vla(_settings(data, out, 20, resume=True))
    assert summary["steps"] == 20
    assert json.loads((out / TRAINER_STATE).read_text())["step"] == 20


def test_sigterm_mid_run_saves_and_the_run_resumes_from_there(data, tmp_path, sigterm_at_step):
    out = tmp_path / "run"
    assert sigterm_at_step(4, lambda: train_vla(_settings(data, out, 8)), out)["step"] == 4
    assert (out / "train_model.safetensors").is_file() and load_vla(out).cfg.preset == "tiny"
    assert "interrupted at step 4" in (out / "train.log").read_text()
    assert train_vla(_settings(data, out, 8, resume=True))["steps"] == 8
    assert "resumed at step 4" in (out / "train.log").read_text()


def test_fine_tuning_starts_from_the_checkpoint_and_keeps_its_units(overfit, data, tmp_path):
    """`hivla train --model vla --init-from CKPT`: the DAgger rounds fine-tune the shipped policy."""
    from safetensors.torch import load_file

    from agent.cli import main as hivla

    out = tmp_path / "tuned"
    settings = replace(_settings(data, out, 1, init_from=str(overfit)), lr=1e-9, overrides={"n_action_steps": 3})
    assert train_vla(settings)["steps"] == 1
    for name in ("tokenizer.json", "norm_stats.json"):  # the same units, not a new tokenizer or new stats
        assert (out / name).read_text() == (overfit / name).read_text()
    assert load_vla(out).cfg.n_action_steps == 3
    before, after = load_file(str(overfit / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert before.keys() == after.keys()
    assert max(float((before[k] - after[k]).abs().max()) for k in before) < 1e-4  # one step at lr 1e-9
    env, obs, info, subtask = _first_situation(SEEDS[0])
    ok, _, _, _ = run_subtask(env, VlaLowLevel(load_vla(out)), subtask, 60, obs, info)
    assert ok  # it still opens the drawer: the weights came with it
    with pytest.raises(ValueError, match="cannot change"):  # shapes come from the checkpoint
        train_vla(replace(_settings(data, tmp_path / "x", 1, init_from=str(overfit)), overrides={"keypoints": 4}))
    assert hivla(["train", "--model", "vla", "--data", str(data), "--out", str(tmp_path / "y"),
                  "--init-from", str(tmp_path)]) != 0  # not a checkpoint: one line naming the missing files


@pytest.mark.slow
def test_accelerate_launch_trains_the_vla_on_two_processes(data, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m agent.commands.train --model vla` (gloo on the CPU)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "agent.commands.train", "--model", "vla",
           "--data", str(data), "--out", str(out), "--preset", "tiny", "--steps", "4", "--batch-size", "16",
           "--eval-every", "4", "--closed-loop-every", "0", "--threads", "1"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "2 process(es) (MULTI_CPU, backend gloo)" in (out / "train.log").read_text()
    assert json.loads((out / TRAINER_STATE).read_text())["step"] == 4 and load_vla(out).cfg.preset == "tiny"


def test_the_vla_spec_builds_a_low_level_that_executes_part_of_each_chunk(overfit):
    from agent.specs import describe_spec, make_low_level

    low = make_low_level(f"vla:{overfit}")
    env, obs, info, subtask = _first_situation(SEEDS[2])
    chunk = low.act(env.observation(obs, info), subtask)
    cfg = low.policy.cfg
    assert chunk.shape == (cfg.n_action_steps, cfg.action_dim) and chunk.dtype == np.float32
    assert describe_spec("expert") == "expert (privileged)"
    assert describe_spec(f"vla:{overfit}").endswith("(learned)")


def test_eval_primitives_measures_a_policy_that_never_moves():
    class Still:
        def reset(self):
            pass

        def act(self, obs, subtask):
            return np.zeros((4, 5), np.float32)

    report = evaluate(trials=1, budget=12, low_level=Still(), image_size=32, log=lambda m: None)
    per = report["per_primitive"]
    # the expert sets up each situation after a failed trial, so every primitive is tried
    assert all(per[k]["trials"] == 1 for k in per), per
    assert per["pick"]["success_rate"] == 0.0 and per["open"]["success_rate"] == 0.0
    assert report["low_level"] == "Still"


def test_put_down_detours_put_the_picked_block_down_first():
    from agent.envs.detours import PutDownDetours
    from agent.envs.expert import ScriptedExpert
    from agent.loop import ControlLoop

    env = make_env(suite="base", image_size=32, render_images=False)
    planner = PutDownDetours(OraclePlanner(seed=0), share=1.0, seed=0)
    loop = ControlLoop(env, planner, ScriptedExpert(), compute_model_plan=False)
    subtasks = []
    real_plan = planner.plan

    def spy(obs, context):
        plan = real_plan(obs, context)
        subtasks.append(plan.subtask)
        return plan

    planner.plan = spy
    loop.run_episode(seed=0, options={"family": "put_color_in_bowl"}, max_steps=60)
    first_put_down = subtasks.index("put it down on the table")
    assert subtasks[0].startswith("pick up") and first_put_down > 0
    assert any(s.startswith("pick up") for s in subtasks[first_put_down:])  # picked up again afterwards
    with pytest.raises(ValueError, match="share"):
        PutDownDetours(OraclePlanner(seed=0), share=1.5)


def test_a_flow_head_trains_on_an_earlier_runs_cached_data(overfit, tmp_path):
    out = tmp_path / "flow"
    s = _settings(overfit, out, 5)  # --data is not read: the cache of the overfit run is reused
    s.data_cache, s.overrides = str(overfit), {"head": "flow", "random_shift_pad": 0}
    assert train_vla(s)["steps"] == 5
    env, obs, info, subtask = _first_situation(SEEDS[0])
    chunk = load_vla(out).predict_action_chunk(env.observation(obs, info), subtask)
    assert chunk.shape == (4, 5) and np.isfinite(chunk).all()
    with pytest.raises(ValueError, match="no cached VLA data"):
        train_vla(_settings(overfit, tmp_path / "x", 5, data_cache=str(tmp_path)))


def test_a_resumed_run_may_change_the_loss_but_not_a_shape(data, tmp_path):
    out = tmp_path / "run"
    train_vla(_settings(data, out, 5))
    s = _settings(data, out, 8, resume=True)
    s.overrides = {"regression_loss": "l2", "random_shift_pad": 0}
    assert train_vla(s)["steps"] == 8
    assert json.loads((out / "config.json").read_text())["regression_loss"] == "l2"
    s = _settings(data, out, 10, resume=True)
    s.overrides = {"keypoints": 3}
    with pytest.raises(ValueError, match="keypoints cannot change when resuming"):
        train_vla(s)


def test_sigterm_stops_training_like_ctrl_c():
    import os
    import signal

    from agent.training.trainer import sigterm_as_interrupt

    with pytest.raises(KeyboardInterrupt):
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
