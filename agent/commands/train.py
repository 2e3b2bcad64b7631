"""`hivla train`: train the π0.5-style model on recorded sessions.

    hivla train --data runs/datagen --preset small --out runs/ckpt_small --steps 4000 --dtype bf16
    hivla train --data runs/datagen --out runs/ckpt_small --resume     # continue after a stop
"""

from __future__ import annotations

import argparse
import json


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", required=True, help="session directories (or folders holding them)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write (and resume from)")
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "pi05"])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"], help="bf16 = autocast (≈2x faster on this CPU)")
    parser.add_argument("--resume", action="store_true", help="continue from the state saved in --out")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--save-every", type=float, default=240.0, help="seconds between resumable checkpoints")
    parser.add_argument("--stride", type=int, default=1, help="keep every Nth control step as a sample")
    parser.add_argument("--threads", type=int, default=2, help="torch threads; use 1 when other jobs share the cores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field of the preset (JSON value), e.g. --set depth=4")


def main(args: argparse.Namespace) -> int:
    import os

    # On a shared machine, OpenMP threads that spin at barriers while another process holds the core
    # slow a 2-thread step down ~6x (measured: 20 s vs 3.2 s a step with one thread); sleep instead.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from agent.training.trainer import TrainSettings, train

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    settings = TrainSettings(
        data=args.data, out=args.out, preset=args.preset, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        device=args.device, dtype=args.dtype, resume=args.resume, eval_every=args.eval_every,
        save_every_s=args.save_every, stride=args.stride, threads=args.threads, seed=args.seed, overrides=overrides,
    )
    train(settings)
    return 0
