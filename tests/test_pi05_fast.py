"""The π0.5 model's inference fast paths equal their reference paths.

Plan decoding: the static KV cache with fused weights (generate's default) against recomputing the
whole sequence every token (use_cache=False) and against the cache grown by concatenation
("dynamic", the path before). The action chunk: the static-cache Euler loop against run_expert
(fast=False). Weights are random and the zero-initialised ones (norm scales, adaptive-norm
modulations) are randomised too, so every fused piece carries signal.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from policies.pi05.configuration import make_config
from policies.pi05.modeling import Pi05Model

SHIPPED = Path(__file__).resolve().parent.parent / "policies" / "checkpoints" / "small"


def randomised(preset: str = "tiny", seed: int = 0, **overrides) -> Pi05Model:
    torch.manual_seed(seed)
    cfg = make_config(preset, **overrides)
    model = Pi05Model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(0.0, 0.1)
    return model


def inputs(cfg, b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(10, cfg.vocab_size, (b, n), generator=g)
    out = {
        "images": torch.randint(0, 256, (b, len(cfg.cameras), cfg.image_size, cfg.image_size, 3), dtype=torch.uint8, generator=g),
        "prefix_ids": ids(cfg.prefix_text_len), "prefix_mask": torch.ones(b, cfg.prefix_text_len, dtype=torch.bool),
        "context_ids": ids(cfg.max_context_tokens), "context_mask": torch.ones(b, cfg.max_context_tokens, dtype=torch.bool),
        "subtask_ids": ids(cfg.max_subtask_tokens), "subtask_mask": torch.ones(b, cfg.max_subtask_tokens, dtype=torch.bool),
    }
    # padding in every segment, different per row, as real prompts have
    out["prefix_mask"][0, -3:] = False
    out["context_mask"][-1, -2:] = False
    out["subtask_mask"][0, -1:] = False
    return out


def plan_args(x):
    return x["images"], x["prefix_ids"], x["prefix_mask"], x["context_ids"], x["context_mask"]


def chunk_args(x):
    return x["images"], x["prefix_ids"], x["prefix_mask"], x["subtask_ids"], x["subtask_mask"]


@pytest.mark.parametrize("preset,overrides", [("tiny", {}), ("tiny", {"num_kv_heads": 2}),
                                              ("tiny", {"num_kv_heads": 2, "num_heads": 2}), ("planner", {})])
def test_static_cache_decoding_equals_recomputing_and_the_dynamic_cache(preset, overrides):
    model = randomised(preset, **overrides)
    model.cfg.eos_id = -1  # decode every token
    x = inputs(model.cfg)
    fast_ids, fast_scores = model.generate(*plan_args(x), max_new_tokens=10, return_scores=True)
    ref_ids, ref_scores = model.generate(*plan_args(x), max_new_tokens=10, use_cache=False, return_scores=True)
    dyn_ids, dyn_scores = model.generate(*plan_args(x), max_new_tokens=10, use_cache="dynamic", return_scores=True)
    assert fast_ids.shape == (2, 10) and torch.equal(fast_ids, ref_ids) and torch.equal(dyn_ids, ref_ids)
    torch.testing.assert_close(fast_scores, ref_scores, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dyn_scores, ref_scores, rtol=1e-4, atol=1e-4)


def test_static_cache_decoding_stops_each_row_at_its_eos():
    model = randomised()
    model.cfg.eos_id = -1
    x = inputs(model.cfg)
    first = model.generate(*plan_args(x), max_new_tokens=8, use_cache=False)
    model.cfg.eos_id = int(first[0, 2])  # row 0 ends at its third token
    fast = model.generate(*plan_args(x), max_new_tokens=8)
    ref = model.generate(*plan_args(x), max_new_tokens=8, use_cache=False)
    assert torch.equal(fast, ref)
    assert fast.shape[1] == 3 or (fast[0, 3:] == model.cfg.pad_id).all()


@pytest.mark.parametrize("overrides", [{}, {"num_kv_heads": 2}])
def test_fast_action_chunk_equals_run_expert(overrides):
    model = randomised(**overrides)
    cfg = model.cfg
    x = inputs(cfg)
    noise = torch.randn(2, cfg.action_horizon, cfg.action_dim, generator=torch.Generator().manual_seed(1))
    fast = model.sample_actions(*chunk_args(x), noise=noise)
    ref = model.sample_actions(*chunk_args(x), noise=noise, fast=False)
    assert fast.abs().max() > 0.1  # the flow moved the noise: a real comparison
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_fused_weights_follow_a_training_step():
    model = randomised()
    model.cfg.eos_id = -1
    x = inputs(model.cfg)
    noise = torch.randn(2, model.cfg.action_horizon, model.cfg.action_dim)
    model.generate(*plan_args(x), max_new_tokens=4)  # builds the fused weights
    model.sample_actions(*chunk_args(x), noise=noise)
    with torch.no_grad():  # what an optimizer step does: in place
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    _, fast = model.generate(*plan_args(x), max_new_tokens=4, return_scores=True)
    _, ref = model.generate(*plan_args(x), max_new_tokens=4, use_cache=False, return_scores=True)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.sample_actions(*chunk_args(x), noise=noise),
                               model.sample_actions(*chunk_args(x), noise=noise, fast=False), rtol=1e-4, atol=1e-5)


def test_fast_paths_run_under_bf16_autocast_close_to_the_reference():
    model = randomised()
    model.cfg.eos_id = -1
    x = inputs(model.cfg)
    noise = torch.randn(2, model.cfg.action_horizon, model.cfg.action_dim)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, fast = model.generate(*plan_args(x), max_new_tokens=4, return_scores=True)
        _, ref = model.generate(*plan_args(x), max_new_tokens=1, use_cache=False, return_scores=True)
        chunk = model.sample_actions(*chunk_args(x), noise=noise)
        chunk_ref = model.sample_actions(*chunk_args(x), noise=noise, fast=False)
    torch.testing.assert_close(fast[:, :1], ref, rtol=0.05, atol=0.1)
    torch.testing.assert_close(chunk, chunk_ref, rtol=0.05, atol=0.1)


def test_bf16_weights_fast_paths_run():
    model = randomised().to(torch.bfloat16)
    x = inputs(model.cfg)
    ids = model.generate(*plan_args(x), max_new_tokens=3)
    chunk = model.sample_actions(*chunk_args(x))
    assert ids.shape[0] == 2 and chunk.dtype == torch.float32 and torch.isfinite(chunk).all()


@pytest.mark.skipif(not (SHIPPED / "model.safetensors").exists(), reason="no shipped checkpoint")
def test_shipped_checkpoint_plans_and_acts_the_same_on_the_fast_paths():
    from policies.pi05.policy import load_checkpoint

    model, _ = load_checkpoint(SHIPPED)
    x = inputs(model.cfg, b=1, seed=3)
    fast_ids, fast_scores = model.generate(*plan_args(x), max_new_tokens=12, return_scores=True)
    ref_ids, ref_scores = model.generate(*plan_args(x), max_new_tokens=12, use_cache=False, return_scores=True)
    assert torch.equal(fast_ids, ref_ids)
    torch.testing.assert_close(fast_scores, ref_scores, rtol=1e-4, atol=1e-3)
    noise = torch.randn(1, model.cfg.action_horizon, model.cfg.action_dim, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.sample_actions(*chunk_args(x), noise=noise),
                               model.sample_actions(*chunk_args(x), noise=noise, fast=False), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("overrides", [{}, {"num_kv_heads": 2}])
@pytest.mark.parametrize("padded", [True, False])
def test_one_row_fast_paths_equal_the_reference_with_and_without_padding(overrides, padded):
    """A single row runs without any mask: padded, its padding is dropped before the prefix pass (the
    policy's case: one observation, a padded prompt); unpadded, nothing is masked (the benchmark's)."""
    model = randomised(**overrides)
    model.cfg.eos_id = -1
    x = {k: v[:1] for k, v in inputs(model.cfg).items()}
    if padded:
        x["prefix_mask"][0, -3:] = False
        x["context_mask"][0, -2:] = False
        x["subtask_mask"][0, -2:] = False
    else:
        for k in ("prefix_mask", "context_mask", "subtask_mask"):
            x[k][:] = True
    fast_ids, fast_scores = model.generate(*plan_args(x), max_new_tokens=8, return_scores=True)
    ref_ids, ref_scores = model.generate(*plan_args(x), max_new_tokens=8, use_cache=False, return_scores=True)
    assert torch.equal(fast_ids, ref_ids)
    torch.testing.assert_close(fast_scores, ref_scores, rtol=1e-4, atol=1e-4)
    noise = torch.randn(1, model.cfg.action_horizon, model.cfg.action_dim, generator=torch.Generator().manual_seed(2))
    fast = model.sample_actions(*chunk_args(x), noise=noise)
    assert fast.abs().max() > 0.1
    torch.testing.assert_close(fast, model.sample_actions(*chunk_args(x), noise=noise, fast=False), rtol=1e-4, atol=1e-5)


def test_vision_tower_equals_its_torch_modules():
    """The ViT read-out runs its patch conv as a matmul and its encoder layers as plain ops: the same
    outputs as nn.Conv2d and nn.TransformerEncoder on the same weights, in training and inference."""
    from policies.augment import camera_input

    model = randomised()
    vision = model.vision
    images = inputs(model.cfg)["images"].flatten(0, 1)
    for training, grad in ((False, False), (False, True), (True, True)):  # eval without grad: torch's fast path
        vision.train(training)
        with torch.set_grad_enabled(grad):
            pixels = camera_input(images, torch.float32, 0, False)
            expected = vision.patch(pixels).flatten(2).transpose(1, 2) + vision.pos
            expected = vision.proj(vision.norm(vision.blocks(expected)))
            torch.testing.assert_close(vision(images), expected, rtol=1e-5, atol=1e-5)
