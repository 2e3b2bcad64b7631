"""`hivla finetune`: train the high level on base data ∪ coaching corrections (low level frozen).

    hivla export runs/coached --format sft --out exports/round1
    hivla finetune --base policies/checkpoints/small --data exports/round1 --out runs/ckpt_round1 \\
                   --base-data runs/datagen_small [--correction-share 0.1] [--steps 400] [--lora] [--resume]

    # the same on two processes (DDP; with no GPU, accelerate uses gloo on the CPU):
    accelerate launch --multi_gpu --num_processes 2 -m agent.commands.finetune --base ... --data ... --out ...

--data takes sft/pairs exports (their correction rows choose the corrections and their plan rows of
weight 1 the approved plans; frames and states are read from the sessions they name) or the
coached session directories themselves. Prints the
correction agreement (held-out and training corrections) and the base plan accuracy before and
after; OUT is a checkpoint usable as `pi05:OUT` (see agent/training/finetune.py).
"""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="the base checkpoint directory")
    parser.add_argument("--data", nargs="+", required=True, metavar="EXPORT",
                        help="sft/pairs exports or session directories holding the coached sessions")
    parser.add_argument("--out", required=True, help="checkpoint directory to write (and resume from)")
    parser.add_argument("--base-data", nargs="+", default=None, metavar="DIR",
                        help="the base training data: `hivla datagen` sessions, or a directory holding a cached "
                             "dataset (default: the base checkpoint's data cache or the data it records)")
    parser.add_argument("--correction-share", type=float, default=0.1, help="share of every batch from corrections")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32, help="samples per optimizer step, over all processes")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--lora", action="store_true", help="train LoRA adapters (peft) instead of the backbone")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--anchor-weight", type=float, default=1.0,
                        help="keep the low level's inputs (backbone keys/values of image+task+subtask) at the base "
                             "checkpoint's; 0 turns it off")
    parser.add_argument("--no-approved-plans", dest="approved_plans", action="store_false",
                        help="train on the corrections only, not also on the model's plans the coach let stand")
    parser.add_argument("--with-corrections", type=float, default=0.5,
                        help="share of coaching samples whose context holds the corrections said so far (the rest: "
                             "none, as in an uncoached run)")
    parser.add_argument("--held-out-fraction", type=float, default=0.2, help="correction episodes kept for evaluation")
    parser.add_argument("--max-base-samples", type=int, default=20_000, help="base samples kept in memory")
    parser.add_argument("--base-stride", type=int, default=5, help="keep every Nth step of the base sessions")
    parser.add_argument("--resume", action="store_true", help="continue from the state saved in --out")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=float, default=240.0, help="seconds between resumable checkpoints")


def main(args: argparse.Namespace) -> int:
    from agent.training.corrections import CorrectionDataError
    from agent.training.finetune import FinetuneSettings, finetune
    from policies.pi05.policy import CheckpointError

    settings = FinetuneSettings(
        base=args.base, data=args.data, out=args.out, base_data=args.base_data, correction_share=args.correction_share,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, lora=args.lora, lora_rank=args.lora_rank,
        anchor_weight=args.anchor_weight, held_out_fraction=args.held_out_fraction,
        approved_plans=args.approved_plans, with_corrections=args.with_corrections,
        max_base_samples=args.max_base_samples, base_stride=args.base_stride, resume=args.resume,
        device=args.device, dtype=args.dtype, threads=args.threads, seed=args.seed, save_every_s=args.save_every,
    )
    try:
        finetune(settings)
    except (CorrectionDataError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # `accelerate launch -m agent.commands.finetune ...`
    from agent.cli import main as cli_main

    sys.exit(cli_main(["finetune", *sys.argv[1:]]))
