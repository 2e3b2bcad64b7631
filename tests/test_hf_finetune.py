"""`hivla finetune --base hf:DIR`: LoRA on a local transformers model, trained on an SFT export that
hivla's own commands made (a scripted `hivla coach` session, then `hivla export --format sft`), each
example rendered by the same `HfHighLevel.encode` that prompts the model in the loop. The models are
tiny and random, built here (tests/tiny_hf.py); nothing is downloaded. Also: --device / --dtype
reach every learned spec from `hivla coach` and `hivla run`."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from agent.cli import main as hivla
from agent.training.sft_data import load_sft_export
from policies.hf.planner import IGNORE_INDEX, HfHighLevel
from sessions.export.png import decode_png
from sessions.reader import read_session
from tiny_hf import save_tiny_lm, save_tiny_vlm

torch.set_num_threads(1)
SCRIPT = "@4 never use the drawer\n@8 pick up the red block\n@14 no, not that\n"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """A coached session (the oracle plans, the expert acts, three corrections) and its SFT export."""
    root = tmp_path_factory.mktemp("coached")
    (root / "script.txt").write_text(SCRIPT)
    assert hivla(["coach", "--family", "put_color_in_bowl", "--seed", "0", "--high-level", "oracle",
                  "--low-level", "expert", "--image-size", "32", "--replan-period", "0.5",
                  "--script", str(root / "script.txt"), "--steps", "30", "--out", str(root / "session")]) == 0
    assert hivla(["export", str(root / "session"), "--format", "sft", "--out", str(root / "sft")]) == 0
    return root


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    # initializer_range 0.2: with the default 0.02 a width-32 model's logits stay nearly flat (tiny_hf.py)
    return save_tiny_lm(tmp_path_factory.mktemp("lm"), initializer_range=0.2)


def _rows(export):
    return pq.read_table(export / "sft" / "train.parquet").to_pylist()


def test_the_sft_export_carries_the_context_the_planner_had(export):
    rows = _rows(export)
    episode = read_session(export / "session").episodes[0]
    by_kind = {r["kind"]: r for r in rows}
    override, negation = by_kind["override"], by_kind["negation"]
    # a correction's own row holds it as the newest correction, and the plan it came in on as in force
    assert [c["text"] for c in override["context"]["corrections"]] == ["never use the drawer", "pick up the red block"]
    assert [c["kind"] for c in negation["context"]["corrections"]] == ["constraint", "override", "negation"]
    assert negation["context"]["in_force"] == "pick up the red block"
    first = min((r for r in rows if r["kind"] == "plan"), key=lambda r: r["step"])
    assert first["context"] == {"task": episode.task, "done": [], "in_force": None, "corrections": [], "memory": [],
                                "facts": []}
    # "never use the drawer" (step 4) is a rule for good: every later decision reads it as remembered
    assert all(r["context"]["memory"] == ["never use the drawer"] for r in rows if r["step"] > 4)
    # a plan made because a subtask finished names it as done
    finished = [r for r in rows if r["context"]["done"]]
    assert finished and finished[0]["context"]["done"] == [finished[0]["context"]["in_force"]]
    for row in rows:  # the current frames are the last images, in the order `cameras` names
        assert row["cameras"] == ["front", "wrist"]
        position = episode.position_of_step(row["step"])
        np.testing.assert_array_equal(decode_png(row["images"][-1]["bytes"]), episode.frame("wrist", position))


def test_the_context_recorded_with_each_plan_is_what_the_events_give(export):
    """The loop records what the planner read (schema 2); a session of schema 1 gets it from its events."""
    from sessions.export.common import ExportOptions, decision_points, planner_context

    session = read_session(export / "session")
    ep = session.episodes[0]
    points = decision_points(session, ep, ExportOptions(format="sft"))
    assert all(p.context is not None for p in ep.plans)
    recorded = [planner_context(ep, point) for point in points]
    for plan in ep.plans:
        plan.context = None  # as a session of schema 1 reads
    assert [planner_context(ep, point) for point in points] == recorded


def test_a_training_example_is_the_inference_prompt_followed_by_the_answer(export, lm):
    planner = HfHighLevel(lm)
    examples = load_sft_export([export / "sft"])
    assert examples and all(e.weight > 0 and " So: " in e.answer for e in examples)  # the corrected plan is left out
    e = next(x for x in examples if x.key.endswith("override"))
    assert e.answer.endswith("So: pick up the red block")
    prompt = planner.encode({}, e.context)["input_ids"][0]
    full = planner.encode({}, e.context, e.answer)
    ids, labels = full["input_ids"][0], full["labels"][0]
    n = len(prompt)
    assert torch.equal(ids[:n], prompt)  # exactly what generate() is given in the loop
    assert (labels[:n] == IGNORE_INDEX).all() and torch.equal(labels[n:], ids[n:])
    answer = planner.tokenizer.decode(labels[n:])
    assert answer.startswith(e.answer) and answer[len(e.answer):].strip() == "<|im_end|>"  # the answer, then the turn end


def test_hivla_finetune_hf_lowers_the_answer_loss_and_hf_out_plans_in_a_run(export, lm, tmp_path, capsys):
    out = tmp_path / "adapter"
    common = ["finetune", "--base", f"hf:{lm}", "--data", str(export / "sft"), "--out", str(out), "--batch-size", "2",
              "--lr", "2e-2", "--warmup-steps", "3", "--dtype", "fp32", "--eval-samples", "4", "--threads", "1"]
    assert hivla([*common, "--steps", "30"]) == 0
    summary = json.loads((out / "hf_finetune.json").read_text())
    before, after = summary["before"]["train_loss"], summary["after"]["train_loss"]
    assert after < 0.7 * before, (before, after)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(lm.resolve()) and (out / "adapter_model.safetensors").is_file()
    assert "before: answer loss" in capsys.readouterr().out

    # resumable: the same schedule continues from the saved step
    assert hivla([*common, "--steps", "32", "--resume"]) == 0
    assert json.loads((out / "hf_finetune.json").read_text())["step"] == 32
    assert "resumed at step 30" in capsys.readouterr().out

    # hf:OUT is the base with the adapter merged, and plans in a run
    sessions = tmp_path / "runs"
    assert hivla(["run", "--high-level", f"hf:{out}", "--low-level", "expert", "--family", "put_color_in_bowl",
                  "--episodes", "1", "--max-steps", "8", "--image-size", "32", "--out", str(sessions), "--quiet"]) == 0
    [session] = list(sessions.iterdir())
    plans = read_session(session).episodes[0].plans
    assert plans and plans[0].plan.source == "model"


def test_sigterm_mid_hf_finetune_saves_a_resumable_adapter(export, lm, tmp_path, sigterm_at_step):
    from agent.training.hf_finetune import HfFinetuneSettings, finetune_hf

    out = tmp_path / "adapter"
    s = HfFinetuneSettings(base=str(lm), data=[str(export / "sft")], out=str(out), steps=4, batch_size=2, lr=2e-2,
                           warmup_steps=1, dtype="fp32", eval_samples=2)
    assert sigterm_at_step(2, lambda: finetune_hf(s), out)["step"] == 2 and (out / "adapter_config.json").is_file()
    s.resume = True
    assert finetune_hf(s)["step"] == 4
    assert "resumed at step 2" in (out / "finetune.log").read_text()


@pytest.mark.slow
def test_accelerate_launch_fine_tunes_the_adapters_on_two_processes(export, lm, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` (gloo on the CPU): each process accumulates its
    share of the examples, the gradients meet once a step, the main process saves the adapter."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "agent.commands.finetune", "--base",
           f"hf:{lm}", "--data", str(export / "sft"), "--out", str(out), "--steps", "3", "--batch-size", "4",
           "--warmup-steps", "1", "--dtype", "fp32", "--eval-samples", "2", "--threads", "1"]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "2 process(es) (MULTI_CPU, backend gloo)" in (out / "finetune.log").read_text()
    summary = json.loads((out / "hf_finetune.json").read_text())
    assert summary["processes"] == 2 and summary["step"] == 3 and np.isfinite(summary["after"]["train_loss"])
    assert HfHighLevel(out).model is not None  # the saved adapter loads


def test_a_tiny_vlm_fine_tunes_on_the_camera_frames(export, tmp_path):
    from agent.training.hf_finetune import HfFinetuneSettings, finetune_hf

    vlm = save_tiny_vlm(tmp_path / "vlm")
    out = tmp_path / "vlm_adapter"
    summary = finetune_hf(HfFinetuneSettings(base=str(vlm), data=[str(export / "sft")], out=str(out), steps=3,
                                             batch_size=2, lr=2e-2, warmup_steps=1, dtype="fp32", eval_samples=2,
                                             merge=True))
    assert np.isfinite(summary["after"]["train_loss"])
    planner = HfHighLevel(out)
    assert planner.is_vlm
    example = load_sft_export([export / "sft"])[0]
    assert planner.encode(example.frames(), example.context, example.answer)["pixel_values"].shape[0] == 2
    assert HfHighLevel(out / "merged").is_vlm  # --merge: a standalone model directory


def test_bad_input_is_one_line_naming_the_fix(export, lm, tmp_path, capsys):
    def refused(*argv) -> str:
        assert hivla(["finetune", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("hivla finetune: ") and err.count("\n") == 1 and "Traceback" not in err
        return err

    sft, out = str(export / "sft"), str(tmp_path / "o")
    assert "no config.json" in refused("--base", f"hf:{tmp_path / 'missing'}", "--data", sft, "--out", out)
    assert "--format sft" in refused("--base", f"hf:{lm}", "--data", str(export / "session"), "--out", out)
    assert hivla(["export", str(export / "session"), "--format", "pairs", "--out", str(tmp_path / "pairs")]) == 0
    capsys.readouterr()
    assert "a 'pairs' export" in refused("--base", f"hf:{lm}", "--data", str(tmp_path / "pairs"), "--out", out)
    assert "pi05 checkpoints only" in refused("--base", f"hf:{lm}", "--data", sft, "--out", out, "--anchor-weight", "0")
    assert "hf:DIR only" in refused("--base", "policies/checkpoints/small", "--data", sft, "--out", out, "--merge")
    assert "no model directory" in refused("--base", "hf:", "--data", sft, "--out", out)
    assert not (tmp_path / "o").exists()  # nothing is written for a refused fine-tune
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "adapter_config.json").write_text("{}")
    assert "--resume" in refused("--base", f"hf:{lm}", "--data", sft, "--out", str(tmp_path / "taken"))


# ------------------------------------------------------------------------------------------- --device / --dtype


def test_device_and_dtype_reach_every_learned_model(lm, tmp_path, monkeypatch, random_vla_checkpoint):
    import agent.specs as specs

    built = []

    def spy(make):
        def wrapped(spec=None, **kwargs):
            policy = make(spec, **kwargs)
            built.append((spec.partition(":")[0], kwargs.get("device"), kwargs.get("dtype"), policy))
            return policy
        return wrapped

    monkeypatch.setattr(specs, "make_high_level", spy(specs.make_high_level))
    monkeypatch.setattr(specs, "make_low_level", spy(specs.make_low_level))
    (tmp_path / "script.txt").write_text("@2 pick up the red block\n")
    assert hivla(["coach", "--family", "put_color_in_bowl", "--high-level", f"hf:{lm}", "--low-level",
                  f"vla:{random_vla_checkpoint}", "--image-size", "32", "--script", str(tmp_path / "script.txt"),
                  "--steps", "3", "--out", str(tmp_path / "s"), "--device", "cpu", "--dtype", "bf16"]) == 0
    assert hivla(["run", "--high-level", f"hf:{lm}", "--low-level", f"vla:{random_vla_checkpoint}", "--family",
                  "put_color_in_bowl", "--episodes", "1", "--max-steps", "2", "--image-size", "32", "--quiet",
                  "--dtype", "bf16"]) == 0
    assert {(kind, device, dtype) for kind, device, dtype, _ in built} == {("hf", "cpu", "bf16"), ("vla", "cpu", "bf16")}
    hf_models = [policy for kind, *_, policy in built if kind == "hf"]
    assert all(p.model.dtype == torch.bfloat16 for p in hf_models)
    vla_models = [policy for kind, *_, policy in built if kind == "vla"]
    assert all(p.policy.dtype == "bf16" for p in vla_models)


def test_a_device_torch_cannot_use_is_refused_before_any_work(capsys):
    assert hivla(["coach", "--device", "gpu", "--script", "/dev/null"]) == 2
    assert "not a torch device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert hivla(["run", "--device", "cuda", "--high-level", "oracle", "--low-level", "expert", "--quiet"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
