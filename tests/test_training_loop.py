"""agent/training/loop.py on a toy regression: the recipes' settings, the schedule, the parameter groups,
the resume state, the non-finite guard, the evaluation hook, stop_at and gradient accumulation. The
recipes' own tests (test_train, test_vla, test_finetune, test_hf_finetune) run it on the real models."""

from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
import torch

from agent.training.loop import (
    TRAINER_STATE, LoopSettings, PresetSettings, Recipe, RecipeSettings, TrainingLoop, decay_groups, load_train_state,
    lr_at, save_train_state,
)

torch.set_num_threads(1)


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        loss = ((self.lin(batch["x"]) * self.scale - batch["y"]) ** 2).mean() * batch.get("blow_up", 1.0)
        return loss, {"loss": float(loss.detach())}


def toy_batches(step: int):
    g = torch.Generator().manual_seed(step)
    while True:
        x = torch.randn(8, 3, generator=g)
        yield {"x": x, "y": x.sum(1, keepdim=True)}


def settings(out, **kw) -> LoopSettings:
    return LoopSettings(**{"out": str(out), "steps": 10, "lr": 1e-2, "warmup_steps": 2, "batch_size": 8,
                           "weight_decay": 0.1, "threads": 1, "progress": False, **kw})


def test_a_recipes_settings_hand_the_loop_what_they_hold():
    s = PresetSettings(data=["d"], out="o", steps=7, batch_size=4, lr=0.1, warmup_steps=1, preset="tiny", stop_at=3,
                       threads=1)
    loop = s.loop_settings(betas=(0.9, 0.95), eval_every=2)  # the recipe adds one and replaces another
    assert (loop.out, loop.steps, loop.batch_size, loop.lr, loop.warmup_steps, loop.stop_at, loop.threads) == \
        ("o", 7, 4, 0.1, 1, 3, 1)
    assert (loop.betas, loop.eval_every, loop.weight_decay, loop.dtype) == ((0.9, 0.95), 2, 0.01, "bf16")
    assert loop.settings == dataclasses.asdict(s)  # all of them, for the top of the log
    plain = RecipeSettings(data=["d"], out="o", steps=7, batch_size=4, lr=0.1, warmup_steps=1).loop_settings()
    assert (plain.weight_decay, plain.stop_at, plain.eval_every) == (0.0, None, 0)  # the loop's own defaults


def test_warm_up_then_cosine_to_a_tenth():
    s = SimpleNamespace(lr=1.0, warmup_steps=4, steps=104)
    assert [lr_at(i, s) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(54, s) == pytest.approx(0.55) and lr_at(104, s) == pytest.approx(0.1)


def test_decay_on_matrices_only_and_frozen_parameters_left_out():
    model = Toy()
    model.scale.requires_grad_(False)
    decay, no_decay = decay_groups(model, 0.1)
    assert decay == {"params": [model.lin.weight], "weight_decay": 0.1}
    assert no_decay == {"params": [model.lin.bias], "weight_decay": 0.0}
    model.lin.bias.requires_grad_(False)
    assert decay_groups(model, 0.1) == [decay]  # no empty group


def test_every_groups_moments_come_back(tmp_path):
    model = Toy()
    opt = torch.optim.AdamW(decay_groups(model, 0.1), lr=0.1)
    model(next(toy_batches(0)))[0].backward()
    opt.step()
    save_train_state(tmp_path, opt, {"step": 1})
    fresh = torch.optim.AdamW(decay_groups(model, 0.1), lr=0.1)
    assert load_train_state(tmp_path, fresh) == {"step": 1}
    for p in model.parameters():
        assert torch.equal(fresh.state[p]["exp_avg"], opt.state[p]["exp_avg"])


def test_a_run_evaluates_saves_stops_at_and_resumes(tmp_path):
    saved, evaluated = [], []

    def run(**kw):
        loop = TrainingLoop(settings(tmp_path, eval_every=4, **kw))
        model = Toy()
        recipe = Recipe(model=model, batches=toy_batches, save=lambda state: saved.append(state["step"]),
                        evaluate=lambda step, final: evaluated.append((step, final)) or {"eval_loss": 0.5})
        return loop, loop.run(recipe)

    loop, state = run(stop_at=6)
    assert state["step"] == 6 and saved == [6] and evaluated == [(4, False), (6, True)]
    assert [h["step"] for h in state["history"]] == [4, 6]
    assert json.loads((tmp_path / TRAINER_STATE).read_text())["step"] == 6
    loop, state = run(resume=True)
    assert loop.resuming and state["step"] == 10 and saved == [6, 10] and evaluated[-2:] == [(8, False), (10, True)]
    log = (tmp_path / "train.log").read_text()
    assert "resumed at step 6" in log and "step 10 lr" in log and "eval eval_loss 0.5000 step 10" in log


def test_a_non_finite_loss_is_one_line_naming_the_fix(tmp_path):
    def blown(step):
        for batch in toy_batches(step):
            yield {**batch, "blow_up": math.inf}

    loop = TrainingLoop(settings(tmp_path))
    with pytest.raises(FloatingPointError, match=r"^loss is inf at step 0; lower --lr$"):
        loop.run(Recipe(model=Toy(), batches=blown, save=lambda state: None))


def test_weighted_micro_batches_accumulate_to_the_whole_batch_gradient(tmp_path):
    torch.manual_seed(0)
    whole, parts = Toy(), Toy()
    parts.load_state_dict(whole.state_dict())
    batch = next(toy_batches(0))
    halves = [{k: v[:4] for k, v in batch.items()}, {k: v[4:] for k, v in batch.items()}]
    for model, step_batch in ((whole, batch), (parts, [(0.5, halves[0]), (0.5, halves[1])])):
        loop = TrainingLoop(settings(tmp_path / str(id(model)), steps=1, warmup_steps=0, lr=0.1))
        loop.run(Recipe(model=model, batches=lambda step, b=step_batch: iter([b]), save=lambda state: None))
    for a, b in zip(whole.parameters(), parts.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
