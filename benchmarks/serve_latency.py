"""Serving latency: one action chunk over openpi's websocket protocol on loopback vs the local call.

Side by side in one run, interleaved call by call (this machine is noisy):
  local         VlaLowLevel.act(obs, subtask): resize two 128-px cameras, run the model
  thread        OpenpiLowLevel.act against a PolicyServer on a thread of this process (shares the GIL)
  hivla serve   OpenpiLowLevel.act against `hivla serve` in its own process (what a robot would use)
For the remote rows, the server's own timing (`server_timing.infer_ms`: decode + checks + model) and
the policy's (`policy_timing.infer_ms`) split the round trip into network/serialisation and compute.

    python benchmarks/serve_latency.py [--checkpoint policies/checkpoints/vla] [--repeats 200]
Without a checkpoint (and none shipped), a random-weight `small` VLA is built in a temporary folder
(the same shapes and compute as a trained one). Writes benchmarks/results/serve_latency.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import publish  # noqa: E402
from policies.openpi.client import OpenpiLowLevel  # noqa: E402
from policies.openpi.server import PolicyServer, ServedPolicy  # noqa: E402
from policies.types import Observation  # noqa: E402
from policies.vla.policy import VlaLowLevel, load_vla  # noqa: E402

SUBTASK = "pick up the red block"


def random_checkpoint(out: Path, preset: str) -> Path:
    from policies.pi05.processor import NormStats
    from policies.vla.configuration import make_config
    from policies.vla.modeling import VlaModel
    from policies.vla.policy import save_checkpoint
    from policies.vla.processor import VlaProcessor, train_subtask_tokenizer

    tok = train_subtask_tokenizer([SUBTASK, "open the drawer", "place it in the blue bowl"], vocab_size=1024)
    cfg = make_config(preset, vocab_size=tok.get_vocab_size())
    rng = np.random.default_rng(0)
    stats = NormStats.from_data(rng.normal(size=(64, cfg.state_dim)), rng.normal(scale=0.01, size=(64, cfg.action_dim)))
    torch.manual_seed(0)
    save_checkpoint(out, VlaModel(cfg).eval(), VlaProcessor(cfg, tok, stats))
    return out


def start_hivla_serve(spec: str, threads: int) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "serve", "--policy", spec, "--port", "0",
                             "--threads", str(threads)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if "ws://127.0.0.1:" not in line:
        proc.kill()
        raise SystemExit(f"hivla serve did not start: {line!r}")
    return proc, int(line.split("ws://127.0.0.1:")[1].split()[0])


def timed_remote(low: OpenpiLowLevel, obs: Observation) -> tuple[float, float, float]:
    """(round trip, server's infer_ms, policy's infer_ms), all ms; what `act` does, with the timings kept."""
    size = int(low.metadata["image_shape"][0])
    started = time.perf_counter()
    reply = low.infer(low.mapping.request(obs, SUBTASK, size))
    low.mapping.actions(reply)
    total = (time.perf_counter() - started) * 1000.0
    return total, reply["server_timing"]["infer_ms"], reply["policy_timing"]["infer_ms"]


def summary(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)), "mean_ms": float(a.mean())}


def main() -> int:
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="a VLA checkpoint (default: the shipped one, else random small)")
    parser.add_argument("--preset", default="small", help="preset of the random checkpoint (default small)")
    parser.add_argument("--repeats", type=int, default=200, help="calls per setting (default 200)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the server (default 1)")
    parser.add_argument("--image-size", type=int, default=128, help="camera resolution sent (default 128)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_latency.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from agent.specs import SHIPPED_VLA

    tmp = tempfile.TemporaryDirectory(prefix="serve_latency_")
    if args.checkpoint:
        ckpt, what = Path(args.checkpoint), args.checkpoint
    elif (SHIPPED_VLA / "model.safetensors").is_file():
        ckpt, what = SHIPPED_VLA, str(SHIPPED_VLA.relative_to(ROOT))
    else:
        ckpt, what = random_checkpoint(Path(tmp.name) / "vla", args.preset), f"random-weight {args.preset} VLA"
    policy = load_vla(ckpt)
    local = VlaLowLevel(policy)
    rng = np.random.default_rng(0)
    obs = Observation(images={c: rng.integers(0, 255, (args.image_size, args.image_size, 3), dtype=np.uint8)
                              for c in ("front", "wrist")},
                      state=rng.normal(size=policy.cfg.state_dim).astype(np.float32), task="t", time=0.0)

    proc, port = start_hivla_serve(f"vla:{ckpt}", args.threads)
    try:
        with PolicyServer(ServedPolicy(policy, f"vla:{ckpt}"), "127.0.0.1", 0).running() as server:
            remotes = {"thread": OpenpiLowLevel("127.0.0.1", server.port),
                       "hivla serve": OpenpiLowLevel("127.0.0.1", port)}
            times: dict[str, list[float]] = {"local": [], "thread": [], "hivla serve": []}
            server_ms: dict[str, list[float]] = {k: [] for k in remotes}
            policy_ms: dict[str, list[float]] = {k: [] for k in remotes}
            for i in range(args.warmup + args.repeats):
                started = time.perf_counter()
                local.act(obs, SUBTASK)
                local_ms = (time.perf_counter() - started) * 1000.0
                results = {name: timed_remote(low, obs) for name, low in remotes.items()}
                if i < args.warmup:
                    continue
                times["local"].append(local_ms)
                for name, (total, srv, pol) in results.items():
                    times[name].append(total)
                    server_ms[name].append(srv)
                    policy_ms[name].append(pol)
            for low in remotes.values():
                low.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    cfg = policy.cfg
    results = {
        "policy": what, "preset": cfg.preset, "repeats": args.repeats, "threads": args.threads,
        "camera_px": args.image_size, "model_image_px": cfg.image_size, "chunk": [cfg.chunk_size, cfg.action_dim],
        "settings": {name: summary(ms) for name, ms in times.items()},
        "server_infer": {name: summary(ms) for name, ms in server_ms.items()},
        "policy_infer": {name: summary(ms) for name, ms in policy_ms.items()},
    }
    base = results["settings"]["local"]["p50_ms"]
    for name in remotes:
        results["settings"][name]["p50_over_local"] = results["settings"][name]["p50_ms"] / base
        results["settings"][name]["p50_overhead_ms"] = results["settings"][name]["p50_ms"] - base

    table = Table(title=f"one {cfg.chunk_size}x{cfg.action_dim} chunk, {what}, two {args.image_size}-px cameras, "
                        f"{args.repeats} calls, {args.threads} thread(s)")
    for col in ("setting", "p50 ms", "p95 ms", "p50 / local", "server infer p50", "policy infer p50"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for name, row in results["settings"].items():
        remote = name in remotes
        table.add_row(f"{name} (loopback)" if remote else "local call", f"{row['p50_ms']:.2f}", f"{row['p95_ms']:.2f}",
                      f"{row['p50_over_local']:.2f}x" if remote else "1.00x",
                      f"{results['server_infer'][name]['p50_ms']:.2f}" if remote else "-",
                      f"{results['policy_infer'][name]['p50_ms']:.2f}" if remote else "-")
    publish(table, results, args.out)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
