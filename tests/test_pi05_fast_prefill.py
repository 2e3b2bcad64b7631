"""The plan's prefill and decode step on their fast paths equal the reference arithmetic.

The ViT read-out's inference path (fused weights, no autograd) against nn.Conv2d / nn.TransformerEncoder
on the same weights; the prefix pass that takes <bos> along against the reference's first step; the
per-plan token step (_TokenStep) against the general step (_fast_backbone); the pieces they are built
from (the norm without its sqrt(width), the RoPE tables, the cached segment rules) against their
definitions. Weights are random, the zero-initialised ones randomised too (tests/test_pi05_fast.py).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from policies.augment import camera_input
from policies.pi05.modeling import Pi05Model, RMSNorm, _fold_norm, _rms_unit, _TokenStep, _segment_rules, rope
from test_pi05_fast import inputs, plan_args, randomised


def reference_vision(vision, images: torch.Tensor) -> torch.Tensor:
    """VisionTower's arithmetic through torch's own modules (nn.Conv2d or the conv stem, nn.TransformerEncoder)."""
    pixels = camera_input(images, torch.float32, 0, False)
    tokens = vision.patch(pixels).flatten(2).transpose(1, 2) + vision.pos
    return vision.proj(vision.norm(vision.blocks(tokens)))


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_fused_vision_equals_its_torch_modules_and_follows_a_weight_change(stem):
    model = randomised(vision_stem=stem, patch_size=8 if stem == "conv" else 16)
    vision = model.vision
    images = inputs(model.cfg)["images"].flatten(0, 1)
    for _ in range(2):  # the second round after an in-place change, as an optimizer step makes one
        with torch.no_grad():
            expected = reference_vision(vision, images)
        with torch.inference_mode():
            fused = vision(images)
        with torch.no_grad():
            fused_no_grad = vision(images)
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused_no_grad, expected, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            for p in vision.parameters():
                p.add_(torch.randn_like(p) * 0.05)


def test_vision_trains_through_its_modules_not_the_fused_copies():
    model = randomised()
    model.train()
    images = inputs(model.cfg)["images"].flatten(0, 1)
    model.vision(images).square().sum().backward()
    assert model.vision.blocks.layers[0].linear1.weight.grad is not None
    assert "_fused" not in model.vision.__dict__  # training never built them


def test_folding_a_layernorm_into_the_linear_it_feeds():
    torch.manual_seed(0)
    norm, linear = torch.nn.LayerNorm(16), torch.nn.Linear(16, 8)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(5, 16)
    w, b = _fold_norm(norm, linear.weight, linear.bias)
    torch.testing.assert_close(torch.addmm(b, F.layer_norm(x, (16,)), w), linear(norm(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"num_kv_heads": 2}])
@pytest.mark.parametrize("b", [1, 2])
def test_one_token_plan_is_the_reference_first_step(overrides, b):
    """The prefix pass with <bos> along gives the first token on its own (the benchmark's 1-token plan)."""
    model = randomised(**overrides)
    model.cfg.eos_id = -1
    x = {k: v[:b] for k, v in inputs(model.cfg).items()}
    fast_ids, fast_scores = model.generate(*plan_args(x), max_new_tokens=1, return_scores=True)
    ref_ids, ref_scores = model.generate(*plan_args(x), max_new_tokens=1, use_cache=False, return_scores=True)
    assert fast_ids.shape == (b, 1) and torch.equal(fast_ids, ref_ids)
    torch.testing.assert_close(fast_scores, ref_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("overrides", [{}, {"num_kv_heads": 2}])
@pytest.mark.parametrize("b", [1, 2])
def test_token_step_equals_the_general_step(overrides, b):
    """_TokenStep (views made once, the whole cache attended under a mask) against _fast_backbone (the
    cache sliced to what is written) on the same cache and token, three steps running."""
    model = randomised(**overrides)
    cfg = model.cfg
    x = {k: v[:b] for k, v in inputs(model.cfg).items()}
    room = 3
    with torch.inference_mode():
        layout = model._plan_layout(*plan_args(x), bos=True)
        w = model._inference_weights(torch.float32)
        keys, values, valid, _ = model._fast_prefix(w, layout, room, zeros=True, tail=1)
        twin_keys, twin_values = [k.clone() for k in keys], [v.clone() for v in values]
        p = valid.shape[1]
        step = _TokenStep(w, cfg, keys, values, p)
        total = p + room
        bias = torch.zeros(b, cfg.num_kv_heads, 1, total)
        bias[..., :p].masked_fill_(~valid[:, None, None], float("-inf"))
        rope_matrices = model._step_rope(valid.sum(1)[:, None] + torch.arange(room)[None], torch.float32)
        tokens = torch.randint(10, cfg.vocab_size, (room, b), generator=torch.Generator().manual_seed(4))
        for i in range(room):
            at = p + i
            step_bias = bias.clone()
            step_bias[..., at + 1:] = float("-inf")
            got = step(F.embedding(tokens[i], w.embed_in), rope_matrices[:, i], i,
                       step_bias.reshape(b * cfg.num_kv_heads, 1, total))
            mask = bias[..., : at + 1] if b > 1 else None  # _fast_backbone: additive, the written slots only
            want = model._fast_backbone(w, F.embedding(tokens[i][:, None], w.embed_in), rope_matrices[:, i:i + 1],
                                        twin_keys, twin_values, at, mask)[:, 0]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for k, twin in zip(keys, twin_keys):
            torch.testing.assert_close(k, twin, rtol=1e-5, atol=1e-5)


def test_rms_unit_times_root_width_is_rmsnorm():
    torch.manual_seed(0)
    norm = RMSNorm(48)
    x = torch.randn(3, 5, 48) * 3
    floor = torch.tensor(math.sqrt(48 * norm.eps))
    torch.testing.assert_close(_rms_unit(x, floor) * math.sqrt(48), norm(x), rtol=1e-6, atol=1e-6)
    bf16 = x.to(torch.bfloat16)
    assert _rms_unit(bf16, floor).dtype == torch.bfloat16


def test_rope_tables_rotate_as_rope():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 3, 16)  # [B, L, heads, d]
    positions = torch.randint(0, 100, (2, 7))
    cos, sin = Pi05Model._rope_tables(positions, 16, 10_000.0)
    got = x * cos + x.roll(8, -1) * sin
    want = rope(x.transpose(1, 2), positions, 10_000.0).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_segment_rules_built_under_inference_serve_training():
    """The rules are cached per layout; built first inside inference mode (a plan), they are still a
    plain tensor that a training step's mask and backward can use."""
    model = randomised()
    x = inputs(model.cfg)
    layout = ((Pi05Model.BASE, 4), (Pi05Model.CONTEXT, 3), (Pi05Model.TARGET, 2))
    _segment_rules.cache_clear()
    with torch.inference_mode():
        cached = _segment_rules(layout, torch.device("cpu"))
        model.generate(*plan_args(x), max_new_tokens=2)
    assert not cached.is_inference()
    torch.testing.assert_close(cached, _segment_rules.__wrapped__(layout, torch.device("cpu")))
    model.train()
    batch = {**x, "target_ids": torch.randint(10, model.cfg.vocab_size, (2, model.cfg.max_target_tokens)),
             "target_mask": torch.ones(2, model.cfg.max_target_tokens, dtype=torch.bool),
             "actions": torch.rand(2, model.cfg.action_horizon, model.cfg.action_dim) * 2 - 1,
             "action_mask": torch.ones(2, model.cfg.action_horizon, dtype=torch.bool)}
    with torch.inference_mode():
        model.run_training_backbone(batch)  # the training layout's rules built inside inference mode
    loss, _ = model(batch)
    loss.backward()
    assert model.embed.weight.grad is not None
