"""One miniature coaching round on the `tiny` preset, end to end through the real commands:
base data (hivla datagen) -> tiny base checkpoint (hivla train) -> coached episodes on the coaching
suite (hivla run --coach scripted --out) -> corrections export (hivla export --format sft) ->
fine-tune (hivla finetune) -> autonomous evaluation (hivla run --json). The fine-tuned model must
agree with more of the training corrections than the base model did, and its low level must be
the base checkpoint's, untouched."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from agent.cli import main as hivla  # noqa: E402
from agent.training.finetune import EXPERT_PREFIXES, FinetuneSettings, finetune  # noqa: E402
from agent.training.trainer import TrainSettings, train  # noqa: E402
from sessions.reader import iter_sessions  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def round_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("round")


def test_one_coaching_round_end_to_end(round_dir):
    started = time.perf_counter()
    base_data, base_ckpt = round_dir / "base_data", round_dir / "base_ckpt"
    assert hivla(["datagen", "--episodes", "4", "--out", str(base_data), "--image-size", "32", "--max-steps", "120"]) == 0
    train(TrainSettings(data=[str(base_data)], out=str(base_ckpt), preset="tiny", steps=250, batch_size=16, lr=3e-3,
                        warmup_steps=20, eval_every=250, eval_samples=16, eval_generate=4, threads=1,
                        # without the discrete action tokens a 250-step tiny model already decodes subtasks
                        # (with them it mostly decodes nothing yet, which the coach only calls out when stuck)
                        overrides={"image_size": 32, "action_token_stride": 0}))

    # coached episodes: the scripted coach corrects the tiny model on the coaching suite
    spec = f"pi05:{base_ckpt}"
    sessions = round_dir / "coached"
    assert hivla(["run", "--high-level", spec, "--low-level", spec, "--suite", "coaching", "--episodes", "1",
                  "--coach", "scripted", "--out", str(sessions), "--image-size", "32", "--max-steps", "80",
                  "--seed", "5", "--quiet", "--json", str(round_dir / "coached.json")]) == 0
    coached = json.loads((round_dir / "coached.json").read_text())
    assert coached["interventions_per_episode"] > 0
    said = [c for s in iter_sessions([sessions]) for ep in s.episodes for c in ep.corrections]
    assert said and all(c.speaker == "scripted" for c in said)

    export = round_dir / "export"
    assert hivla(["export", str(sessions), "--format", "sft", "--out", str(export)]) == 0
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["format"] == "sft" and sum(manifest["rows"].values()) > 0

    out = round_dir / "ft"
    summary = finetune(FinetuneSettings(base=str(base_ckpt), data=[str(export)], out=str(out), base_data=[str(base_data)],
                                        correction_share=0.5, steps=100, batch_size=16, lr=3e-3, held_out_fraction=0.0,
                                        base_stride=2, threads=1, progress=False))
    before, after = summary["before"]["train_agreement"], summary["after"]["train_agreement"]
    assert after > before, f"agreement on the training corrections did not rise: {before} -> {after}"
    assert summary["corrections"]["corrections"] >= 1 and 0 < summary["correction_share_of_base"] < 1

    # the low level is frozen: the expert's weights are the base checkpoint's
    from safetensors.torch import load_file

    base_w, ft_w = load_file(str(base_ckpt / "model.safetensors")), load_file(str(out / "model.safetensors"))
    expert = [k for k in base_w if k.startswith(EXPERT_PREFIXES)]
    assert expert and all(torch.equal(base_w[k], ft_w[k]) for k in expert)
    assert any(not torch.equal(base_w[k], ft_w[k]) for k in base_w if k.startswith("backbone"))

    # autonomous evaluation of the fine-tuned high level with the base low level
    assert hivla(["run", "--high-level", f"pi05:{out}", "--low-level", spec, "--suite", "coaching", "--episodes", "1",
                  "--image-size", "32", "--max-steps", "40", "--seed", "100", "--quiet",
                  "--json", str(round_dir / "eval.json")]) == 0
    evaluation = json.loads((round_dir / "eval.json").read_text())
    assert evaluation["episodes"] == 3 and evaluation["interventions_per_episode"] == 0
    assert set(evaluation["per_family"]) == {"tidy_up", "stack_the_blocks", "recover_from_drop"}
    assert time.perf_counter() - started < 120
