"""Inference speed of the π0.5-style model against transformers at the same dims (random weights).

Side by side in one run: every measure is timed round-robin (one call of each, then again), so a
load change on a shared machine hits all of them alike; medians and ratios are printed.
  plan    thought + subtask, `--decode-tokens` greedy tokens after [images | task+state | context]:
          ours with the static KV cache (the fast path), ours with the cache grown by concatenation
          (the path before it), transformers' GemmaForCausalLM.generate at the same dims and prefix
          length with its static cache; per decoded token = (n tokens - 1 token) / (n - 1)
  chunk   one action chunk (10 Euler steps): ours fast path, ours through run_expert (the
          reference), transformers' PI0ForConditionalGeneration.sample_actions at the same dims; each
          path's [base | subtask] prefix pass alone too, so the Euler loops are told apart
  The issue's bars are read at one thread (`--threads 1 --out
  benchmarks/results/model_speed_small_cpu_1thread.json`); on a shared machine compare the ratios,
  which the round-robin keeps fair, more than the milliseconds.
  train   (--train) training samples/s in fp32 vs bf16 autocast

  before  (--before REV) our plan and chunk with policies/pi05/modeling.py as it was at git revision
          REV, the same weights loaded into it: the speed-up of the code, not of a different model
    python benchmarks/model_speed.py [--device cpu|cuda] [--preset small|pi05] [--threads 2] [--dtype fp32|bf16]
Writes benchmarks/results/model_speed_{preset}_{device}.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.report import publish  # noqa: E402
from agent.cli import quiet_openmp  # noqa: E402

quiet_openmp()  # before torch loads, as `hivla` does: idle OpenMP workers sleep, not spin

import torch  # noqa: E402

from policies.pi05.configuration import make_config  # noqa: E402
from policies.pi05.modeling import Pi05Model, count_parameters  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def round_robin(fns: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]) -> dict[str, float]:
    """Median wall seconds of each fn, timed one call of each in turn (2 warm-up rounds), and as
    `<name>_cpu` the median CPU seconds of this process: on a shared machine the wall clock counts
    the time other jobs held the core, the CPU time does not (with one thread it is close to what an
    idle core would take; with more it adds the threads up)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for rnd in range(repeats + 2):
        for name, fn in fns.items():
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync()
            if rnd >= 2:
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    out = {name: statistics.median(ts) for name, ts in times.items()}
    out.update({f"{name}_cpu": statistics.median(ts) for name, ts in cpu.items()})
    return out


def random_inputs(cfg, b: int = 1, device: str = "cpu") -> dict:
    g = torch.Generator().manual_seed(0)
    ids = lambda n: torch.randint(300, cfg.vocab_size, (b, n), generator=g)
    ones = lambda n: torch.ones(b, n, dtype=torch.bool)
    out = {
        "images": torch.randint(0, 256, (b, len(cfg.cameras), cfg.image_size, cfg.image_size, 3), dtype=torch.uint8, generator=g),
        "prefix_ids": ids(cfg.prefix_text_len), "prefix_mask": ones(cfg.prefix_text_len),
        "context_ids": ids(cfg.max_context_tokens), "context_mask": ones(cfg.max_context_tokens),
        "subtask_ids": ids(cfg.max_subtask_tokens), "subtask_mask": ones(cfg.max_subtask_tokens),
        "target_ids": ids(cfg.max_target_tokens), "target_mask": ones(cfg.max_target_tokens),
        "actions": torch.randn(b, cfg.action_horizon, cfg.action_dim, generator=g),
        "action_mask": ones(cfg.action_horizon),
    }
    return {k: v.to(device) for k, v in out.items()}


def transformers_gemma(cfg, prefix_len: int, device: str, dtype: torch.dtype):
    """GemmaForCausalLM at our backbone's dims and a prompt as long as our plan prefix."""
    from transformers import GemmaConfig, GemmaForCausalLM

    gcfg = GemmaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.width, intermediate_size=cfg.mlp_dim,
                       num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
                       num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rope_theta=cfg.rope_theta,
                       max_position_embeddings=prefix_len + cfg.max_target_tokens + 8,
                       bos_token_id=cfg.bos_id, pad_token_id=cfg.pad_id, eos_token_id=None)
    with torch.device(device):
        model = GemmaForCausalLM(gcfg)
    model = model.to(dtype).eval()
    ids = torch.randint(300, cfg.vocab_size, (1, prefix_len), device=device)
    return model, ids


def transformers_pi0(cfg, device: str, dtype: torch.dtype):
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
    with torch.device(device):
        model = PI0ForConditionalGeneration(pcfg)
    model = model.to(dtype).eval()
    n_cam = len(cfg.cameras)
    text_len = cfg.prefix_text_len + cfg.max_subtask_tokens  # same prefix length as our low level
    input_ids = torch.cat([torch.full((1, n_cam * n_img), cfg.vocab_size),
                           torch.randint(300, cfg.vocab_size, (1, text_len))], 1).to(device)
    inputs = {
        "state": torch.randn(1, cfg.state_dim, device=device, dtype=dtype),
        "input_ids": input_ids,
        "pixel_values": torch.randn(1, n_cam, 3, cfg.image_size, cfg.image_size, device=device, dtype=dtype),
        "pixel_attention_mask": torch.ones(1, n_cam, dtype=torch.bool, device=device),
        "attention_mask": torch.ones_like(input_ids),
    }
    return model, inputs


def model_at_revision(rev: str, model: Pi05Model) -> torch.nn.Module:
    """Pi05Model as policies/pi05/modeling.py defined it at git revision `rev`, with `model`'s weights."""
    import importlib.util
    import subprocess
    import tempfile

    repo = Path(__file__).resolve().parent.parent
    source = subprocess.run(["git", "show", f"{rev}:policies/pi05/modeling.py"], cwd=repo, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "modeling_before.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("modeling_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = module.Pi05Model(model.cfg).to(next(model.parameters()).device)
    before.load_state_dict(model.state_dict())
    return before.to(next(model.parameters()).dtype).eval()


def step_throughput(model: torch.nn.Module, data: dict, batch: int, dtype: str, lr: float, repeats: int) -> float:
    """Samples a second through one training step (forward with the model's own loss, backward, AdamW)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss, _ = model(data)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return batch / median_time(step, repeats)


def train_throughput(cfg, dtype: str, batch: int, repeats: int) -> float:
    return step_throughput(Pi05Model(cfg), random_inputs(cfg, batch), batch, dtype, 1e-4, repeats)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: fp32 on cpu, bf16 on cuda")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode-tokens", type=int, default=30)
    parser.add_argument("--train", action="store_true", help="also training samples/s, fp32 vs bf16 (cpu)")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--before", metavar="REV", help="also time modeling.py as it was at this git revision")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = args.device
    dtype_name = args.dtype or ("bf16" if device == "cuda" else "fp32")
    dtype = DTYPES[dtype_name]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    cfg = make_config(args.preset)
    cfg.eos_id = -1  # never stop early: every decode runs the full --decode-tokens
    with torch.device(device):
        model = Pi05Model(cfg)
    model = model.to(dtype).eval()
    x = random_inputs(cfg, device=device)
    n = args.decode_tokens
    prefix_len = cfg.prefix_len + cfg.max_context_tokens
    results: dict = {"preset": args.preset, "device": device, "dtype": dtype_name, "threads": args.threads,
                     "parameters": count_parameters(model), "decode_tokens": n, "plan_prefix_tokens": prefix_len,
                     "flow_steps": cfg.flow_steps, "repeats": args.repeats, "torch": torch.__version__,
                     "load_average_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                     "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    plan_args = (x["images"], x["prefix_ids"], x["prefix_mask"], x["context_ids"], x["context_mask"])
    chunk_args = (x["images"], x["prefix_ids"], x["prefix_mask"], x["subtask_ids"], x["subtask_mask"])
    import transformers

    results["transformers"] = transformers.__version__
    gemma, gemma_ids = transformers_gemma(cfg, prefix_len, device, dtype)
    hf_kw = dict(do_sample=False, cache_implementation="static", attention_mask=torch.ones_like(gemma_ids))
    pi0 = transformers_pi0(cfg, device, dtype)
    plan_fns = {
        "plan_ours_static": lambda: model.generate(*plan_args, max_new_tokens=n),
        "plan_ours_1token": lambda: model.generate(*plan_args, max_new_tokens=1),
        "plan_ours_dynamic": lambda: model.generate(*plan_args, max_new_tokens=n, use_cache="dynamic"),
        "plan_hf_gemma_static": lambda: gemma.generate(gemma_ids, max_new_tokens=n, min_new_tokens=n, **hf_kw),
        "plan_hf_gemma_1token": lambda: gemma.generate(gemma_ids, max_new_tokens=1, min_new_tokens=1, **hf_kw),
    }
    if args.before:
        before = model_at_revision(args.before, model)
        results["before_revision"] = args.before
        plan_fns["plan_before_rev"] = lambda: before.generate(*plan_args, max_new_tokens=n)
    chunk_fns = {
        "chunk_ours_fast": lambda: model.sample_actions(*chunk_args),
        "chunk_ours_reference": lambda: model.sample_actions(*chunk_args, fast=False),
        "chunk_ours_prefix_only": lambda: model.encode_action_context(*chunk_args),
        # the fast path's own [base | subtask] pass (fused weights, straight into its static cache)
        "chunk_ours_fast_prefix": lambda: model._fast_prefix(model._inference_weights(dtype),
                                                             model._action_layout(*chunk_args)[0], cfg.action_horizon),
    }
    if pi0 is not None:
        pi0_model, pi0_inputs = pi0
        chunk_fns["chunk_hf_pi0"] = lambda: pi0_model.sample_actions(**pi0_inputs)
    if args.before:
        chunk_fns["chunk_before_rev"] = lambda: before.sample_actions(*chunk_args)
    with torch.inference_mode():
        results.update(round_robin(plan_fns, args.repeats, sync))
        results.update(round_robin(chunk_fns, args.repeats, sync))
    results["load_average_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    r = results
    r["plan_ours_prefix_s"] = r["plan_ours_1token"]
    r["token_ours_s"] = (r["plan_ours_static"] - r["plan_ours_1token"]) / (n - 1)
    r["token_hf_gemma_s"] = (r["plan_hf_gemma_static"] - r["plan_hf_gemma_1token"]) / (n - 1)
    r["plan_static_over_dynamic"] = r["plan_ours_dynamic"] / r["plan_ours_static"]
    r["plan_ours_vs_hf_gemma"] = r["plan_hf_gemma_static"] / r["plan_ours_static"]
    r["token_ours_vs_hf_gemma"] = r["token_hf_gemma_s"] / r["token_ours_s"]
    r["chunk_fast_over_reference"] = r["chunk_ours_reference"] / r["chunk_ours_fast"]
    # the Euler loop alone (chunk minus its [base | subtask] prefix pass), ours fast vs ours before
    r["chunk_ours_euler_s"] = r["chunk_ours_fast"] - r["chunk_ours_fast_prefix"]
    r["chunk_ours_reference_euler_s"] = r["chunk_ours_reference"] - r["chunk_ours_prefix_only"]
    if "chunk_hf_pi0" in r:
        r["chunk_ours_vs_hf_pi0"] = r["chunk_hf_pi0"] / r["chunk_ours_fast"]
    if args.train:
        train_cfg = make_config(args.preset)
        r["train_samples_per_s_fp32"] = train_throughput(train_cfg, "fp32", args.train_batch, args.repeats)
        r["train_samples_per_s_bf16"] = train_throughput(train_cfg, "bf16", args.train_batch, args.repeats)
        r["train_bf16_speedup"] = r["train_samples_per_s_bf16"] / r["train_samples_per_s_fp32"]

    from rich.table import Table

    table = Table(title=f"pi05 inference ({args.preset}, {device} {dtype_name}, {args.threads} threads, medians of "
                        f"{args.repeats} round-robin; load {r['load_average_before']:.1f} -> {r['load_average_after']:.1f})")
    for col, justify in (("measure", "left"), ("A", "right"), ("B", "right"), ("B/A", "right")):
        table.add_column(col, justify=justify)
    ms = lambda s: f"{s * 1000:.2f} ms"
    if args.before:
        r["plan_speedup_over_before_rev"] = r["plan_before_rev"] / r["plan_ours_static"]
        r["chunk_speedup_over_before_rev"] = r["chunk_before_rev"] / r["chunk_ours_fast"]
        table.add_row(f"plan, {n} tokens: ours (A) vs modeling.py at {args.before} (B)", ms(r["plan_ours_static"]),
                      ms(r["plan_before_rev"]), f"{r['plan_speedup_over_before_rev']:.2f}x")
        table.add_row(f"action chunk: ours (A) vs modeling.py at {args.before} (B)", ms(r["chunk_ours_fast"]),
                      ms(r["chunk_before_rev"]), f"{r['chunk_speedup_over_before_rev']:.2f}x")
    table.add_row(f"plan, {n} tokens: ours static cache (A) vs ours concatenating cache (B)", ms(r["plan_ours_static"]),
                  ms(r["plan_ours_dynamic"]), f"{r['plan_static_over_dynamic']:.2f}x")
    table.add_row(f"plan, {n} tokens: ours (A) vs transformers Gemma generate, static cache (B)",
                  ms(r["plan_ours_static"]), ms(r["plan_hf_gemma_static"]), f"{r['plan_ours_vs_hf_gemma']:.2f}x")
    table.add_row("per decoded token: ours (A) vs transformers Gemma (B)", ms(r["token_ours_s"]),
                  ms(r["token_hf_gemma_s"]), f"{r['token_ours_vs_hf_gemma']:.2f}x")
    table.add_row("action chunk: ours fast (A) vs ours through run_expert (B)", ms(r["chunk_ours_fast"]),
                  ms(r["chunk_ours_reference"]), f"{r['chunk_fast_over_reference']:.2f}x")
    table.add_row("  its 10 Euler steps alone (chunk - prefix pass): fast (A) vs run_expert (B)",
                  ms(r["chunk_ours_euler_s"]), ms(r["chunk_ours_reference_euler_s"]),
                  f"{r['chunk_ours_reference_euler_s'] / r['chunk_ours_euler_s']:.2f}x")
    if "chunk_hf_pi0" in r:
        table.add_row("action chunk: ours (A) vs transformers PI0 sample_actions (B)", ms(r["chunk_ours_fast"]),
                      ms(r["chunk_hf_pi0"]), f"{r['chunk_ours_vs_hf_pi0']:.2f}x")
    table.add_row(f"CPU time{' (threads added up)' if args.threads > 1 else ''}: plan ours (A) vs Gemma (B)",
                  ms(r["plan_ours_static_cpu"]), ms(r["plan_hf_gemma_static_cpu"]),
                  f"{r['plan_hf_gemma_static_cpu'] / r['plan_ours_static_cpu']:.2f}x")
    if "chunk_hf_pi0" in r:
        table.add_row("CPU time: chunk ours (A) vs PI0 (B)", ms(r["chunk_ours_fast_cpu"]), ms(r["chunk_hf_pi0_cpu"]),
                      f"{r['chunk_hf_pi0_cpu'] / r['chunk_ours_fast_cpu']:.2f}x")
    if args.train:
        table.add_row("train samples/s: fp32 (A) vs bf16 (B)", f"{r['train_samples_per_s_fp32']:.1f}",
                      f"{r['train_samples_per_s_bf16']:.1f}", f"{r['train_bf16_speedup']:.2f}x")
    out = args.out or Path(__file__).resolve().parent / "results" / f"model_speed_{args.preset}_{device}.json"
    return publish(table, r, out, width=140)


if __name__ == "__main__":
    sys.exit(main())
