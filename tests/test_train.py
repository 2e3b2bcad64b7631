"""hivla train end to end on synthetic sessions (tiny preset): data cache, checkpoint, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agent.training.dataset import (
    collect_samples, context_subtasks, last_completed, load_cache, planner_targets, split_episodes,
)
from agent.training.loop import TRAIN_STATE
from agent.training.trainer import TRAINER_STATE, TrainSettings, train
from policies.pi05.policy import load_pi05
from policies.types import Observation, Plan, PlanContext
from sessions.synthetic import write_synthetic_session

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synthetic_session(root / "a", episodes=3, steps=30, image_size=32, seed=0)
    write_synthetic_session(root / "b", episodes=2, steps=30, image_size=32, seed=1)
    return root


def test_samples_follow_the_recorded_plans(sessions):
    raw = collect_samples([sessions], ("front", "wrist"), image_size=32, horizon=4)
    assert len(raw) > 100
    assert raw.images[0].shape == (2, 32, 32, 3) and raw.images[0].dtype == np.uint8
    assert raw.actions[0].shape == (4, 5)
    assert all(s for s in raw.subtasks)
    # the last steps of an episode have padded action chunks
    assert any(not m.all() for m in raw.action_masks)
    train_idx, held_idx = split_episodes(torch.tensor([0, 0, 1, 1, 2, 2]), 0.34)
    assert len(held_idx) == 2 and not set(train_idx.tolist()) & set(held_idx.tolist())


def test_planner_targets_move_on_when_progress_outruns_the_plan():
    from types import SimpleNamespace as NS

    plans = [NS(plan_id=0, step=0), NS(plan_id=1, step=4)]
    # progress (subtask_index) moves from 0 to 1 at step 2, the re-plan only comes at step 4
    steps = [NS(step=i, plan_id=0 if i < 4 else 1, subtask_index=0 if i < 2 else 1) for i in range(6)]
    assert planner_targets(steps, plans) == [0, 0, 1, 1, 1, 1]
    # without progress information the plan in force is the target
    steps = [NS(step=i, plan_id=0 if i < 4 else 1, subtask_index=None) for i in range(6)]
    assert planner_targets(steps, plans) == [0, 0, 0, 0, 1, 1]


def test_train_tiny_checkpoint_loads_and_resumes(sessions, tmp_path):
    out = tmp_path / "ckpt"
    s = TrainSettings(data=[str(sessions)], out=str(out), preset="tiny", steps=6, batch_size=8, eval_every=3,
                      eval_samples=16, eval_generate=4, threads=1, warmup_steps=2, vocab_size=700,
                      overrides={"image_size": 32})
    summary = train(s)
    assert summary["steps"] == 6 and np.isfinite(summary["final_eval"]["eval_loss"])
    assert 0.0 <= summary["final_eval"]["eval_subtask_acc"] <= 1.0
    policy = load_pi05(out)
    obs = Observation(images={"front": np.zeros((32, 32, 3), np.uint8), "wrist": np.zeros((32, 32, 3), np.uint8)},
                      state=np.zeros(8, np.float32), task="put the red block in the blue bowl", time=0.0)
    assert policy.generate_plan(obs, PlanContext(task=obs.task)).source == "model"
    assert policy.predict_action_chunk(obs, "pick up the red block").shape == (policy.cfg.action_horizon, 5)

    # the offline evaluation benchmark reads the same checkpoint and cache
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "offline_eval", Path(__file__).resolve().parents[1] / "benchmarks" / "offline_eval.py")
    offline_eval = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(offline_eval)
    assert offline_eval.main(["--checkpoint", str(out), "--frames", "12", "--threads", "1",
                              "--json", str(tmp_path / "oe.json")]) == 0
    report = json.loads((tmp_path / "oe.json").read_text())
    assert report["subtask_accuracy"]["all"]["frames"] == 12
    assert sum(v["frames"] for k, v in report["subtask_accuracy"].items() if k.startswith("kind: ")) == 12
    assert set(report["action_r2"]) == {"dx", "dy", "dz", "dyaw", "grip"}

    s.steps, s.resume = 9, True
    summary = train(s)
    state = json.loads((out / TRAINER_STATE).read_text())
    assert summary["steps"] == 9 and state["step"] == 9
    assert "resumed at step 6" in (out / "train.log").read_text()


def test_last_completed_is_the_plan_in_force_before_a_subtask_done_replan():
    from types import SimpleNamespace as NS

    def plan(pid, step, subtask, reason):
        return NS(plan_id=pid, step=step, reason=reason, plan=NS(subtask=subtask))

    plans = [plan(0, 0, "pick up the red block", "start"), plan(1, 3, "place it in the blue bowl", "timer"),
             plan(2, 5, "pick up the green block", "subtask_done"), plan(3, 7, "pick up the red block", "timer")]
    steps = [NS(step=i, plan_id=0 if i < 3 else 1 if i < 5 else 2 if i < 7 else 3) for i in range(9)]
    # the pick was re-planned on the timer (no completion); the place finished at step 5
    assert last_completed(steps, plans) == [None] * 5 + ["place it in the blue bowl"] * 4
    assert context_subtasks(steps, plans, "in_force")[:4] == [None, "pick up the red block",
                                                              "pick up the red block", "pick up the red block"]
    # a "history" model reads the subtasks done as the step's plan was made and, unless it is the one
    # just done, the subtask in force before the step (the timer's re-plans mid-subtask)
    assert context_subtasks(steps, plans, "history") == [
        None, *["doing: pick up the red block"] * 3, "doing: place it in the blue bowl",
        "done: place it in the blue bowl",  # the decision after the place finished: nothing under way
        *["done: place it in the blue bowl | doing: pick up the green block"] * 2,
        "done: place it in the blue bowl | doing: pick up the red block"]


def test_a_resumed_run_can_switch_context_last_and_reencodes_its_cache(sessions, tmp_path):
    out = tmp_path / "ckpt"
    s = TrainSettings(data=[str(sessions)], out=str(out), preset="tiny", steps=2, batch_size=8, eval_every=2,
                      eval_samples=8, eval_generate=2, threads=1, warmup_steps=1, vocab_size=700,
                      overrides={"image_size": 32})
    train(s)
    before, _ = load_cache(out)
    s.steps, s.resume, s.overrides = 3, True, {"image_size": 32, "context_last": "done"}
    train(s)
    tensors, meta = load_cache(out)
    assert meta["context_last"] == "done" and json.loads((out / "config.json").read_text())["context_last"] == "done"
    assert "re-encoding the cached coaching contexts" in (out / "train.log").read_text()
    assert torch.equal(tensors["target_ids"], before["target_ids"])  # only the contexts change
    policy = load_pi05(out)
    processor = policy.processor
    seen = []
    real = processor.context_ids
    processor.context_ids = lambda last, corrections: seen.append(last) or real(last, corrections)
    obs = Observation(images={"front": np.zeros((32, 32, 3), np.uint8), "wrist": np.zeros((32, 32, 3), np.uint8)},
                      state=np.zeros(8, np.float32), task="put the red block in the blue bowl", time=0.0)
    context = PlanContext(task=obs.task, completed_subtasks=["pick up the red block"])
    context.plan_history.append(Plan(thought="", subtask="place it in the blue bowl", source="model"))
    policy.generate_plan(obs, context)
    assert seen == ["pick up the red block"]  # the subtask done last, not the one in force
    processor.context_ids = real
    texts = {processor.decode(row[m].tolist()) for row, m in zip(tensors["context_ids"], tensors["context_mask"].bool())}
    assert not torch.equal(tensors["context_ids"], before["context_ids"])
    assert not any("last:" in t for t in texts)  # (the tiny preset's 8-token contexts cut most "done:" labels)
    s.steps, s.overrides = 4, {"width": 64}
    with pytest.raises(ValueError, match="cannot change when resuming"):
        train(s)


def test_datagen_records_sessions_the_dataset_reads(tmp_path):
    pytest.importorskip("agent.envs.oracle")
    from agent.cli import main as cli

    out = tmp_path / "dg"
    assert cli(["datagen", "--episodes", "1", "--out", str(out), "--max-steps", "25", "--image-size", "32"]) == 0
    raw = collect_samples([out], ("front", "wrist"), image_size=32, horizon=4)
    assert len(raw) == 25
    assert raw.subtasks[0] and raw.tasks[0]


def test_init_from_keeps_the_matching_weights_and_starts_a_new_vision_stem(sessions, tmp_path):
    first = tmp_path / "first"
    base = dict(data=[str(sessions)], preset="tiny", steps=2, batch_size=8, eval_every=2, eval_samples=8,
                eval_generate=2, threads=1, warmup_steps=1, vocab_size=700)
    train(TrainSettings(out=str(first), overrides={"image_size": 32}, **base))
    second = tmp_path / "second"
    s = TrainSettings(out=str(second), overrides={"image_size": 32, "vision_stem": "conv"}, init_from=str(first),
                      **{**base, "steps": 1, "lr": 0.0})  # lr 0: the weights stay as initialised
    train(s)
    log = (second / "train.log").read_text()
    assert f"initialised from {first}" in log and "vision.patch.net.0.weight" in log
    assert (second / "tokenizer.json").read_text() == (first / "tokenizer.json").read_text()
    a, b = load_pi05(first).model.state_dict(), load_pi05(second).model.state_dict()
    assert torch.equal(a["embed.weight"], b["embed.weight"]) and torch.equal(a["backbone.0.q.weight"], b["backbone.0.q.weight"])


def test_stop_at_ends_resumably_before_the_schedule_does(sessions, tmp_path):
    s = TrainSettings(data=[str(sessions)], out=str(tmp_path / "ck"), preset="tiny", steps=8, stop_at=3, batch_size=8,
                      eval_every=100, eval_samples=8, eval_generate=2, threads=1, warmup_steps=1, vocab_size=700,
                      overrides={"image_size": 32})
    assert train(s)["steps"] == 3
    s.resume, s.stop_at = True, None
    assert train(s)["steps"] == 8


def _tiny(sessions, out, steps, **kw) -> TrainSettings:
    return TrainSettings(data=[str(sessions)], out=str(out), preset="tiny", steps=steps, batch_size=8, eval_every=100,
                         eval_samples=8, eval_generate=2, threads=1, warmup_steps=1, vocab_size=700,
                         overrides={"image_size": 32}, **kw)


def test_sigterm_mid_run_saves_a_checkpoint_the_run_resumes_from(sessions, tmp_path, sigterm_at_step):
    out = tmp_path / "ck"
    assert sigterm_at_step(3, lambda: train(_tiny(sessions, out, 6)), out)["step"] == 3
    assert json.loads((out / "checkpoint_info.json").read_text())["step"] == 3
    assert load_pi05(out).cfg.preset == "tiny"  # what was saved is a loadable checkpoint
    assert "interrupted at step 3" in (out / "train.log").read_text()
    assert train(_tiny(sessions, out, 6, resume=True))["steps"] == 6
    assert "resumed at step 3" in (out / "train.log").read_text()


def test_a_run_saved_by_the_earlier_trainer_still_resumes(sessions, tmp_path):
    """Runs saved before the shared loop numbered the optimizer moments by position, without metadata,
    and were read back into the first parameter group; such a run resumes as it did."""
    from safetensors.torch import load_file, save_file

    out = tmp_path / "ck"
    train(_tiny(sessions, out, 2))
    flat = load_file(str(out / TRAIN_STATE))
    index = {i: pos for pos, i in enumerate(sorted({int(k.split(".")[0]) for k in flat}))}
    save_file({f"{index[int(k.split('.')[0])]}.{k.split('.', 1)[1]}": v for k, v in flat.items()}, str(out / TRAIN_STATE))
    state = json.loads((out / TRAINER_STATE).read_text())
    (out / TRAINER_STATE).write_text(json.dumps({k: state[k] for k in ("step", "elapsed_s", "samples", "history")}))
    assert train(_tiny(sessions, out, 4, resume=True))["steps"] == 4
    assert "resumed at step 2" in (out / "train.log").read_text()


@pytest.mark.slow
def test_accelerate_launch_trains_on_two_processes(sessions, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m agent.commands.train` (gloo on the CPU): the second
    process reads the data the first one prepared, each trains on its half of every batch, the first saves."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "agent.commands.train", "--data",
           str(sessions), "--out", str(out), "--preset", "tiny", "--steps", "4", "--batch-size", "8", "--threads", "1",
           "--eval-every", "4", "--dtype", "fp32", "--set", "image_size=32"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    log = (out / "train.log").read_text()
    assert "2 process(es) (MULTI_CPU, backend gloo)" in log
    assert json.loads((out / TRAINER_STATE).read_text())["step"] == 4
    assert load_pi05(out).cfg.preset == "tiny"
