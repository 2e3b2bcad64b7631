"""The π0.5-style model on the tiny preset: shapes, masks, KV caches, learning, checkpoints."""

from __future__ import annotations

import dataclasses

import json

import numpy as np
import pytest
import torch

from policies.augment import camera_input
from policies.pi05.configuration import Pi05Config, make_config
from policies.pi05.modeling import Pi05Model, count_parameters
from policies.pi05.policy import (
    CheckpointError, Pi05HighLevel, Pi05LowLevel, Pi05Policy, load_checkpoint, load_pi05, save_checkpoint,
)
from policies.pi05.processor import NormStats, Pi05Processor, pad_to, train_tokenizer
from policies.types import Correction, CorrectionKind, Observation, PlanContext

torch.set_num_threads(1)

TASKS = ["put the red block in the blue bowl", "stack the green block on the yellow block"]
PLANS = [("the red block is on the table", "pick up the red block"),
         ("i am holding the red block", "place it in the blue bowl"),
         ("the green block is free", "pick up the green block")]


@pytest.fixture(scope="module")
def processor() -> Pi05Processor:
    corpus = TASKS + [t for p in PLANS for t in p] + ["last: no, not that one | leave the green block alone"]
    tok = train_tokenizer(corpus * 3, vocab_size=700)
    cfg = make_config("tiny", vocab_size=tok.get_vocab_size())
    rng = np.random.default_rng(0)
    stats = NormStats.from_data(rng.normal(size=(200, cfg.state_dim)), rng.normal(size=(200, cfg.action_dim)))
    return Pi05Processor(cfg, tok, stats)


def make_batch(proc: Pi05Processor, n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    cfg = proc.cfg
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("prefix", "context", "subtask", "target")}
    for i in range(n):
        thought, subtask = PLANS[i % len(PLANS)]
        rows["prefix"].append(pad_to(proc.prefix_ids(TASKS[i % 2], rng.normal(size=cfg.state_dim)), cfg.prefix_text_len))
        rows["context"].append(pad_to(proc.context_ids("pick up the red block" if i % 2 else None), cfg.max_context_tokens))
        rows["subtask"].append(pad_to(proc.subtask_ids(subtask), cfg.max_subtask_tokens))
        rows["target"].append(pad_to(proc.target_ids(thought, subtask), cfg.max_target_tokens))
    batch = {"images": torch.from_numpy(rng.integers(0, 256, (n, 2, cfg.image_size, cfg.image_size, 3), dtype=np.uint8))}
    for k, pairs in rows.items():
        batch[f"{k}_ids"] = torch.from_numpy(np.stack([p[0] for p in pairs]))
        batch[f"{k}_mask"] = torch.from_numpy(np.stack([p[1] for p in pairs]))
    batch["actions"] = torch.from_numpy(rng.uniform(-1, 1, (n, cfg.action_horizon, cfg.action_dim)).astype(np.float32))
    batch["action_mask"] = torch.ones(n, cfg.action_horizon, dtype=torch.bool)
    batch["action_mask"][0, -1] = False  # one padded step past an episode end
    return batch


@pytest.fixture(scope="module")
def overfit(processor):
    """A tiny model overfit on one batch (shared by the learning and decoding tests)."""
    torch.manual_seed(0)
    model = Pi05Model(processor.cfg)
    batch = make_batch(processor)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(150):
        loss, info = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(info)
    return model.eval(), batch, history


def test_forward_shapes_and_finite_loss(processor):
    model = Pi05Model(processor.cfg)
    batch = make_batch(processor)
    loss, info = model(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(info) >= {"text_loss", "flow_loss", "action_token_loss", "token_acc"}
    assert info["action_token_loss"] > 0
    b = batch
    actions = model.sample_actions(b["images"], b["prefix_ids"], b["prefix_mask"], b["subtask_ids"], b["subtask_mask"])
    assert actions.shape == (4, processor.cfg.action_horizon, processor.cfg.action_dim)
    ids = model.generate(b["images"], b["prefix_ids"], b["prefix_mask"], b["context_ids"], b["context_mask"], max_new_tokens=5)
    assert ids.shape[0] == 4 and ids.shape[1] <= 5


def test_segment_mask_prefix_never_sees_later_segments():
    valid = lambda n, k: torch.ones(1, n, dtype=torch.bool) if k is None else torch.arange(n)[None] < k
    mask = Pi05Model.segment_mask([(0, valid(3, None)), (1, valid(2, None)), (2, valid(2, None)), (3, valid(3, None))])[0]
    base, ctx, sub, tgt = slice(0, 3), slice(3, 5), slice(5, 7), slice(7, 10)
    assert mask[base, base].all() and not mask[base, 3:].any()  # base prefix: bidirectional, sees nothing after
    assert not mask[sub, ctx].any() and not mask[sub, tgt].any()  # low level never sees the coaching context
    assert not mask[tgt, sub].any() and mask[tgt, ctx].all()  # target doesn't see the teacher-forced subtask
    assert torch.equal(mask[tgt, tgt], torch.tril(torch.ones(3, 3, dtype=torch.bool)))  # causal decoding
    assert not mask[ctx, sub].any() and not mask[ctx, tgt].any()
    # the training-only action-token segment sees base + subtask, causal within, and nobody sees it
    full = Pi05Model.segment_mask([(0, valid(3, None)), (1, valid(2, None)), (2, valid(2, None)),
                                   (3, valid(3, None)), (4, valid(3, None))])[0]
    act = slice(10, 13)
    assert full[act, base].all() and full[act, sub].all() and not full[act, ctx].any() and not full[act, tgt].any()
    assert torch.equal(full[act, act], torch.tril(torch.ones(3, 3, dtype=torch.bool)))
    assert not full[:10, act].any()


def test_prefix_keys_do_not_depend_on_suffix(processor):
    torch.manual_seed(0)
    model = Pi05Model(processor.cfg).eval()
    a, b = make_batch(processor, seed=1), make_batch(processor, seed=1)
    b["context_ids"] = torch.roll(a["context_ids"], 1, 0)
    b["context_mask"] = torch.roll(a["context_mask"], 1, 0)
    b["subtask_ids"], b["subtask_mask"] = torch.roll(a["subtask_ids"], 1, 0), torch.roll(a["subtask_mask"], 1, 0)
    b["target_ids"], b["target_mask"] = torch.roll(a["target_ids"], 1, 0), torch.roll(a["target_mask"], 1, 0)
    p = processor.cfg.prefix_len
    with torch.no_grad():
        _, cache_a, _ = model.run_training_backbone(a)
        _, cache_b, _ = model.run_training_backbone(b)
    for (ka, va), (kb, vb) in zip(cache_a, cache_b):
        torch.testing.assert_close(ka[:, :, :p], kb[:, :, :p])
        torch.testing.assert_close(va[:, :, :p], vb[:, :, :p])


def test_training_and_inference_see_the_same_action_context(processor):
    """The expert's keys/values in training ([base|context|subtask|target] with the mask) equal the ones
    the low level computes at inference ([base|subtask] only)."""
    torch.manual_seed(0)
    model = Pi05Model(processor.cfg).eval()
    batch = make_batch(processor)
    cfg = processor.cfg
    with torch.no_grad():
        _, train_cache, _ = model.run_training_backbone(batch)
        infer_cache, _, _ = model.encode_action_context(batch["images"], batch["prefix_ids"], batch["prefix_mask"],
                                                        batch["subtask_ids"], batch["subtask_mask"])
    p, c, s = cfg.prefix_len, cfg.max_context_tokens, cfg.max_subtask_tokens
    keep = torch.cat([torch.arange(p), torch.arange(p + c, p + c + s)])
    valid = torch.cat([torch.ones(4, p, dtype=torch.bool), batch["subtask_mask"]], 1)
    valid[:, cfg.prefix_len - cfg.prefix_text_len: p] = batch["prefix_mask"]
    for (kt, _), (ki, _) in zip(train_cache, infer_cache):
        torch.testing.assert_close(kt.index_select(2, keep)[valid[:, None, :, None].expand_as(ki)],
                                   ki[valid[:, None, :, None].expand_as(ki)], atol=1e-5, rtol=1e-4)


def open_expert_gates(model: Pi05Model) -> None:
    """The expert's adaLN-zero gates start closed, so at init no gradient reaches the backbone through
    its attention either way; open them so the insulation tests can fail."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modulation.bias" in name:
                p.fill_(0.5)


def test_knowledge_insulation_no_flow_gradient_into_backbone(processor):
    model = Pi05Model(processor.cfg)
    open_expert_gates(model)
    batch = make_batch(processor)
    model.cfg.text_loss_weight = model.cfg.action_token_loss_weight = 0.0  # flow loss only
    try:
        loss, _ = model(batch)
        loss.backward()
    finally:
        model.cfg.text_loss_weight = model.cfg.action_token_loss_weight = 1.0
    backbone = [p for n, p in model.named_parameters() if n.startswith(("backbone", "embed", "vision"))]
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in backbone)
    assert any(p.grad is not None and p.grad.abs().max() > 0 for n, p in model.named_parameters() if n.startswith("expert"))


def test_without_knowledge_insulation_the_flow_loss_trains_the_backbone(processor):
    cfg = dataclasses.replace(processor.cfg, knowledge_insulation=False, text_loss_weight=0.0,
                              action_token_loss_weight=0.0)
    model = Pi05Model(cfg)
    open_expert_gates(model)
    loss, _ = model(make_batch(processor))
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0
               for n, p in model.named_parameters() if n.startswith(("backbone", "vision")))


def test_context_names_the_subtask_in_force_or_the_one_done_last(processor):
    roomy = dataclasses.replace(processor.cfg, max_context_tokens=32)  # the tiny preset's 8 tokens cut the label
    in_force = Pi05Processor(roomy, processor.tok, processor.stats)
    done = Pi05Processor(dataclasses.replace(roomy, context_last="done"), processor.tok, processor.stats)
    assert in_force.decode(in_force.context_ids("pick up the red block")).strip() == "last: pick up the red block"
    assert done.decode(done.context_ids("pick up the red block")).strip() == "done: pick up the red block"
    assert done.context_ids(None) == [] and in_force.context_ids(None) == []
    history = Pi05Processor(dataclasses.replace(roomy, context_last="history"), processor.tok, processor.stats)
    phrase = "done: open the drawer | doing: pick up the red block"  # PlannerContext.last("history") labels it
    assert history.decode(history.context_ids(phrase)).strip() == phrase
    with pytest.raises(ValueError, match="context_last"):
        dataclasses.replace(processor.cfg, context_last="latest").validate()


def test_losses_fall_on_tiny_overfit(overfit):
    _, _, history = overfit
    first = np.mean([h["flow_loss"] for h in history[:10]])
    last = np.mean([h["flow_loss"] for h in history[-10:]])
    assert last < 0.7 * first, (first, last)
    assert history[-1]["text_loss"] < 0.2 * history[0]["text_loss"]


def test_decoding_with_cache_equals_without_and_matches_target(overfit, processor):
    model, b, _ = overfit
    with torch.no_grad():
        cached = model.generate(b["images"], b["prefix_ids"], b["prefix_mask"], b["context_ids"], b["context_mask"])
        full = model.generate(b["images"], b["prefix_ids"], b["prefix_mask"], b["context_ids"], b["context_mask"],
                              use_cache=False)
    assert torch.equal(cached, full)
    text = processor.decode(cached[0].tolist())
    assert processor.parse_plan(text) == PLANS[0]


def test_cached_action_context_equals_recomputed(overfit):
    model, b, _ = overfit
    noise = torch.randn(4, model.cfg.action_horizon, model.cfg.action_dim)
    args = (b["images"], b["prefix_ids"], b["prefix_mask"], b["subtask_ids"], b["subtask_mask"])
    cached = model.sample_actions(*args, noise=noise)
    recomputed = model.sample_actions(*args, noise=noise, cache_context=False)
    torch.testing.assert_close(cached, recomputed)


def _observation(cfg: Pi05Config, seed: int = 0) -> Observation:
    rng = np.random.default_rng(seed)
    img = lambda: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # larger than the model's: resized
    return Observation(images={"front": img(), "wrist": img()}, state=rng.normal(size=cfg.state_dim).astype(np.float32),
                       task=TASKS[0], time=0.0)


def test_save_load_round_trip_identical_outputs(overfit, processor, tmp_path):
    model, _, _ = overfit
    save_checkpoint(tmp_path / "ckpt", model, processor.tok, processor.stats)
    before = Pi05Policy(model, processor)
    after = load_pi05(tmp_path / "ckpt")
    obs = _observation(processor.cfg)
    ctx = PlanContext(task=obs.task, corrections=[Correction(CorrectionKind.NEGATION, "not that one")])
    assert before.generate_plan(obs, ctx) == after.generate_plan(obs, ctx)
    torch.manual_seed(3)
    a = before.predict_action_chunk(obs, "pick up the red block")
    torch.manual_seed(3)
    b = after.predict_action_chunk(obs, "pick up the red block")
    np.testing.assert_array_equal(a, b)
    assert a.shape == (processor.cfg.action_horizon, processor.cfg.action_dim) and a.dtype == np.float32
    # the adapters share the loaded policy
    high, low = Pi05HighLevel(after), Pi05LowLevel(after)
    assert high.plan(obs, ctx).source == "model"
    assert low.act(obs, "pick up the red block").shape == a.shape


def test_truncated_and_mismatched_checkpoints_fail_clearly(overfit, processor, tmp_path):
    model, _, _ = overfit
    ckpt = save_checkpoint(tmp_path / "ckpt", model, processor.tok, processor.stats)
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(ckpt)
    weights.write_bytes(data)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["mlp_dim"] += 8
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(ckpt)
    cfg["depth"] += 1
    cfg["mlp_dim"] -= 8
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing keys"):
        load_checkpoint(ckpt)
    (ckpt / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(ckpt)


def test_pi05_preset_parameter_count_on_meta_device():
    cfg = make_config("pi05")
    with torch.device("meta"):
        model = Pi05Model(cfg)
    counts = count_parameters(model)
    # So400m vision ≈ 0.41 B, Gemma 2B backbone (with its 257k-token embedding) ≈ 2.51 B,
    # Gemma-300M expert ≈ 0.31 B + adaptive-RMSNorm modulation ≈ 0.11 B: 3.35 B in all.
    assert 0.40e9 < counts["vision"] < 0.43e9
    assert 2.45e9 < counts["backbone"] < 2.55e9
    assert 0.40e9 < counts["expert"] < 0.45e9
    assert 3.2e9 < counts["total"] < 3.45e9


def test_conv_stem_gives_a_finer_token_grid_and_trains(processor):
    cfg = dataclasses.replace(processor.cfg, vision_stem="conv", patch_size=8, random_shift_pad=2)
    model = Pi05Model(cfg)
    assert cfg.image_tokens_per_camera == (cfg.image_size // 8) ** 2
    images = torch.randint(0, 256, (3, cfg.image_size, cfg.image_size, 3), dtype=torch.uint8)
    assert model.vision.eval()(images).shape == (3, cfg.image_tokens_per_camera, cfg.width)
    proc = Pi05Processor(cfg, processor.tok, processor.stats)
    loss, _ = model.train()(make_batch(proc))
    loss.backward()
    assert model.vision.patch.net[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="power-of-two"):
        dataclasses.replace(cfg, image_size=48, patch_size=12).validate()


def test_camera_input_scales_to_unit_range_and_shifts_only_while_training():
    images = torch.tensor([0, 255], dtype=torch.uint8).repeat_interleave(8).view(1, 4, 4, 1).expand(2, 4, 4, 3)
    x = camera_input(images, torch.float32, shift_pad=2, training=False)
    assert x.shape == (2, 3, 4, 4) and x.min() == -1.0 and x.max() == 1.0
    assert torch.equal(camera_input(images, torch.float32, shift_pad=0, training=True), x)
    torch.manual_seed(0)
    shifted = [camera_input(images, torch.float32, shift_pad=2, training=True) for _ in range(8)]
    assert any(not torch.equal(s, x) for s in shifted)


def test_a_planner_only_config_skips_the_action_expert_and_refuses_to_act(processor, tmp_path):
    cfg = dataclasses.replace(processor.cfg, flow_loss_weight=0.0, action_token_stride=0)
    model = Pi05Model(cfg)
    proc = Pi05Processor(cfg, processor.tok, processor.stats)
    loss, info = model(make_batch(proc))
    loss.backward()
    assert info["flow_loss"] == 0.0 and info["text_loss"] > 0
    assert all(p.grad is None for p in model.expert.parameters()), "the expert is not run"
    save_checkpoint(tmp_path / "planner", model, proc.tok, proc.stats)
    with pytest.raises(CheckpointError, match="planner only"):
        Pi05LowLevel(load_pi05(tmp_path / "planner"))
