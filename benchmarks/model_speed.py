"""Inference speed of the π0.5-style model (random weights, `small` preset unless --preset).

Side by side in one run, medians over repeats, ratios printed:
  1. subtask decoding (greedy, fixed length) with the KV cache vs recomputing the sequence each token
  2. an action chunk (10 Euler steps) with [prefix | subtask] keys/values computed once vs every step
  3. transformers' PI0ForConditionalGeneration.sample_actions at the same dims, as an outside reference
  4. training throughput (samples/s) in fp32 vs bf16 autocast

    python benchmarks/model_speed.py [--preset small] [--repeats 5] [--threads 2]
Writes benchmarks/results/model_speed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from policies.pi05.configuration import make_config  # noqa: E402
from policies.pi05.modeling import Pi05Model, count_parameters  # noqa: E402


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def random_inputs(cfg, b: int = 1) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(300, cfg.vocab_size, (b, n), generator=g)
    ones = lambda n: torch.ones(b, n, dtype=torch.bool)
    return {
        "images": torch.randint(0, 256, (b, len(cfg.cameras), cfg.image_size, cfg.image_size, 3), dtype=torch.uint8, generator=g),
        "prefix_ids": ids(cfg.prefix_text_len), "prefix_mask": ones(cfg.prefix_text_len),
        "context_ids": ids(cfg.max_context_tokens), "context_mask": ones(cfg.max_context_tokens),
        "subtask_ids": ids(cfg.max_subtask_tokens), "subtask_mask": ones(cfg.max_subtask_tokens),
        "target_ids": ids(cfg.max_target_tokens), "target_mask": ones(cfg.max_target_tokens),
        "actions": torch.randn(b, cfg.action_horizon, cfg.action_dim, generator=g),
        "action_mask": ones(cfg.action_horizon),
    }


def transformers_pi0(cfg):
    """PI0ForConditionalGeneration at our dims, or None if this transformers has no pi0."""
    try:
        from transformers import PI0Config, PI0ForConditionalGeneration
    except ImportError:
        return None
    n_img = cfg.image_tokens_per_camera
    pcfg = PI0Config(
        vlm_config={
            "model_type": "paligemma",
            "text_config": {"model_type": "gemma", "hidden_size": cfg.width, "num_hidden_layers": cfg.depth,
                            "intermediate_size": cfg.mlp_dim, "num_attention_heads": cfg.num_heads,
                            "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
                            "vocab_size": cfg.vocab_size + 1},
            "vision_config": {"model_type": "siglip_vision_model", "hidden_size": cfg.vision_width,
                              "intermediate_size": cfg.vision_mlp_dim, "patch_size": cfg.patch_size,
                              "image_size": cfg.image_size, "num_hidden_layers": cfg.vision_depth,
                              "num_attention_heads": cfg.vision_heads, "vision_use_head": False},
            "projection_dim": cfg.width, "image_token_id": cfg.vocab_size,
        },
        dit_config={"model_type": "gemma", "hidden_size": cfg.expert_width, "num_hidden_layers": cfg.depth,
                    "intermediate_size": cfg.expert_mlp_dim, "num_attention_heads": cfg.num_heads,
                    "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim},
        chunk_size=cfg.action_horizon, max_state_dim=cfg.state_dim, max_action_dim=cfg.action_dim,
        num_inference_steps=cfg.flow_steps,
    )
    model = PI0ForConditionalGeneration(pcfg).eval()
    n_cam = len(cfg.cameras)
    text_len = cfg.prefix_text_len + cfg.max_subtask_tokens  # same prefix length as our low level
    input_ids = torch.cat([torch.full((1, n_cam * n_img), cfg.vocab_size),
                           torch.randint(300, cfg.vocab_size, (1, text_len))], 1)
    inputs = {
        "state": torch.randn(1, cfg.state_dim),
        "input_ids": input_ids,
        "pixel_values": torch.randn(1, n_cam, 3, cfg.image_size, cfg.image_size),
        "pixel_attention_mask": torch.ones(1, n_cam, dtype=torch.bool),
        "attention_mask": torch.ones_like(input_ids),
    }
    return model, inputs


def train_throughput(cfg, dtype: str, batch: int, repeats: int) -> float:
    model = Pi05Model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    data = random_inputs(cfg, batch)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss, _ = model(data)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return batch / median_time(step, repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-tokens", type=int, default=30)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "model_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = make_config(args.preset)
    cfg.eos_id = -1  # never stop early: every decode runs the full --decode-tokens
    model = Pi05Model(cfg).eval()
    x = random_inputs(cfg)
    results: dict = {"preset": args.preset, "threads": args.threads, "parameters": count_parameters(model),
                     "decode_tokens": args.decode_tokens, "flow_steps": cfg.flow_steps}
    with torch.no_grad():
        gen = lambda cache: model.generate(x["images"], x["prefix_ids"], x["prefix_mask"], x["context_ids"],
                                           x["context_mask"], max_new_tokens=args.decode_tokens, use_cache=cache)
        results["decode_cached_s"] = median_time(lambda: gen(True), args.repeats)
        results["decode_uncached_s"] = median_time(lambda: gen(False), args.repeats)
        act = lambda cache: model.sample_actions(x["images"], x["prefix_ids"], x["prefix_mask"], x["subtask_ids"],
                                                 x["subtask_mask"], cache_context=cache)
        results["chunk_cached_s"] = median_time(lambda: act(True), args.repeats)
        results["chunk_recomputed_s"] = median_time(lambda: act(False), args.repeats)
        ref = transformers_pi0(cfg)
        if ref is not None:
            ref_model, ref_inputs = ref
            results["transformers_pi0_chunk_s"] = median_time(lambda: ref_model.sample_actions(**ref_inputs), args.repeats)
    results["decode_cache_speedup"] = results["decode_uncached_s"] / results["decode_cached_s"]
    results["chunk_cache_speedup"] = results["chunk_recomputed_s"] / results["chunk_cached_s"]
    if "transformers_pi0_chunk_s" in results:
        results["ours_vs_transformers_pi0"] = results["transformers_pi0_chunk_s"] / results["chunk_cached_s"]
    train_cfg = make_config(args.preset)
    results["train_samples_per_s_fp32"] = train_throughput(train_cfg, "fp32", args.train_batch, args.repeats)
    results["train_samples_per_s_bf16"] = train_throughput(train_cfg, "bf16", args.train_batch, args.repeats)
    results["train_bf16_speedup"] = results["train_samples_per_s_bf16"] / results["train_samples_per_s_fp32"]

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"pi05 model speed ({args.preset}, {args.threads} threads, medians of {args.repeats})")
    table.add_column("measure")
    table.add_column("A", justify="right")
    table.add_column("B", justify="right")
    table.add_column("ratio B/A", justify="right")
    ms = lambda s: f"{s * 1000:.1f} ms"
    table.add_row(f"decode {args.decode_tokens} tokens: cache (A) vs none (B)", ms(results["decode_cached_s"]),
                  ms(results["decode_uncached_s"]), f"{results['decode_cache_speedup']:.2f}x")
    table.add_row("action chunk: prefix once (A) vs per step (B)", ms(results["chunk_cached_s"]),
                  ms(results["chunk_recomputed_s"]), f"{results['chunk_cache_speedup']:.2f}x")
    if "transformers_pi0_chunk_s" in results:
        table.add_row("action chunk: ours (A) vs transformers PI0 (B)", ms(results["chunk_cached_s"]),
                      ms(results["transformers_pi0_chunk_s"]), f"{results['ours_vs_transformers_pi0']:.2f}x")
    table.add_row("train samples/s: fp32 (A) vs bf16 (B)", f"{results['train_samples_per_s_fp32']:.1f}",
                  f"{results['train_samples_per_s_bf16']:.1f}", f"{results['train_bf16_speedup']:.2f}x")
    Console().print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
