"""The low-level VLA's speed beside the π0.5-style model's, side by side in one run (medians, ratios).

  1. training throughput (samples/s, one optimizer step at each model's recipe batch size) for the
     pi05 `small` model (its recipe: bf16 autocast) and the VLA `small` model in fp32 and bf16
  2. the control step with the learned low level: `ControlLoop.step()` with both cameras rendered at
     128 px and the VLA acting (a chunk every n_action_steps), the oracle planning; median and p90 ms

    python benchmarks/vla_speed.py [--checkpoint policies/checkpoints/vla] [--threads 1] [--repeats 7]
Writes benchmarks/results/vla_speed.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.model_speed import step_throughput  # noqa: E402
from benchmarks.report import publish  # noqa: E402
from benchmarks.model_speed import train_throughput as pi05_throughput  # noqa: E402
from policies.pi05.configuration import make_config as pi05_config  # noqa: E402
from policies.vla.configuration import make_config as vla_config  # noqa: E402
from policies.vla.modeling import VlaModel, count_parameters  # noqa: E402


def vla_batch(cfg, b: int) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "images": torch.randint(0, 256, (b, len(cfg.cameras), cfg.image_size, cfg.image_size, 3), dtype=torch.uint8, generator=g),
        "state": torch.rand(b, cfg.state_dim, generator=g) * 2 - 1,
        "subtask_ids": torch.randint(300, cfg.vocab_size, (b, cfg.max_subtask_tokens), generator=g),
        "subtask_mask": torch.ones(b, cfg.max_subtask_tokens, dtype=torch.bool),
        "actions": torch.rand(b, cfg.chunk_size, cfg.action_dim, generator=g) * 2 - 1,
        "action_mask": torch.ones(b, cfg.chunk_size, dtype=torch.bool),
    }


def vla_throughput(cfg, dtype: str, batch: int, repeats: int) -> float:
    return step_throughput(VlaModel(cfg).train(), vla_batch(cfg, batch), batch, dtype, 1e-3, repeats)


def control_steps(low_spec: str, steps: int) -> dict:
    from agent.envs import make_env
    from agent.envs.oracle import OraclePlanner
    from agent.runtime.factory import build_loop

    env = make_env(suite="base", image_size=128)
    loop = build_loop(env, OraclePlanner(seed=0), low_spec, compute_model_plan=False)
    times: list[float] = []
    seed = 0
    loop.reset(seed=seed, options={"family": "stack_three"})
    for _ in range(steps):
        t0 = time.perf_counter()
        loop.step()
        times.append(time.perf_counter() - t0)
        if loop.snapshot().episode_over:
            seed += 1
            loop.reset(seed=seed, options={"family": "stack_three"})
    loop.close()
    ms = np.asarray(times) * 1000
    return {"steps": steps, "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "max_ms": float(ms.max())}


def main() -> int:
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="a VLA checkpoint for the control-step timing "
                        "(default: the shipped one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--control-steps", type=int, default=400)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "vla_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pcfg, vcfg = pi05_config("small"), vla_config("small", vocab_size=1024)
    rows = [
        ("pi05 small, bf16, batch 32", pi05_throughput(pcfg, "bf16", 32, args.repeats)),
        ("vla small, fp32, batch 64", vla_throughput(vcfg, "fp32", 64, args.repeats)),
        ("vla small, bf16, batch 64", vla_throughput(vcfg, "bf16", 64, args.repeats)),
    ]
    from agent.specs import SHIPPED_VLA

    low_spec = f"vla:{args.checkpoint or SHIPPED_VLA}"
    control = control_steps(low_spec, args.control_steps)
    results = {
        "threads": args.threads, "repeats": args.repeats,
        "parameters": {"vla_small": count_parameters(VlaModel(vcfg))},
        "train_samples_per_s": {name: rate for name, rate in rows},
        "vla_fp32_over_pi05": rows[1][1] / rows[0][1],
        "vla_bf16_over_fp32": rows[2][1] / rows[1][1],
        "control_step": {"low_level": low_spec, **control},
    }
    table = Table(title=f"VLA vs pi05 speed ({args.threads} thread(s), medians of {args.repeats})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("ratio", justify="right")
    for name, rate in rows:
        table.add_row(f"train {name}", f"{rate:.0f} samples/s", f"{rate / rows[0][1]:.1f}x pi05")
    table.add_row("control step, VLA + 2 cameras at 128 px", f"median {control['median_ms']:.1f} ms",
                  f"p90 {control['p90_ms']:.1f} ms")
    return publish(table, results, args.out)


if __name__ == "__main__":
    sys.exit(main())
