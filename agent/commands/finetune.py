"""`hivla finetune`: train the high level on base data ∪ coaching corrections (low level frozen), or
LoRA-tune a local transformers VLM / LM (`--base hf:DIR`) on an SFT export.

    hivla export runs/coached --format sft --out exports/round1
    hivla finetune --base policies/checkpoints/small --data exports/round1 --out runs/ckpt_round1 \\
                   --base-data runs/datagen_small [--correction-share 0.1] [--steps 400] [--lora] [--resume]

    # the same on two processes (DDP; with no GPU, accelerate uses gloo on the CPU):
    accelerate launch --multi_gpu --num_processes 2 -m agent.commands.finetune --base ... --data ... --out ...

--data takes sft, pairs or LeRobot v3 exports, read alone (their coaching table holds, computed at
export, what each correction teaches, the approved plans, and the states and contexts, with the frames
as PNG or, in a LeRobot export, in its videos: the sessions may be gone; an export made before the
table existed is refused with "export again"), or the coached session directories themselves (the
same table built in memory). Prints the
correction agreement (held-out and training corrections) and the base plan accuracy before and
after; OUT is a checkpoint usable as `pi05:OUT` (see agent/training/finetune.py).

    hivla export runs/coached --format sft --out exports/round1
    hivla finetune --base hf:models/qwen --data exports/round1 --out runs/qwen_round1 \\
                   [--steps 1000] [--lr 3e-4] [--lora-rank 16] [--device cuda] [--dtype bf16] [--merge] [--resume]
    hivla coach --high-level hf:runs/qwen_round1

With `--base hf:DIR` the examples are the export's rows rendered through prompts/hf_planner.toml and
the model's chat template (what `hf:DIR` sees in the loop), the loss on the recorded answer; OUT is a
peft LoRA adapter (see agent/training/hf_finetune.py). The options marked "pi05" do not apply there.

    hivla export runs/facts/sessions --format sft --kind fact --out exports/facts
    hivla finetune --base policies/checkpoints/grounded --data exports/facts --readout-facts \
                   --base-data runs/grounded_frames --out runs/grounded_facts [--fact-share 0.25] \
                   [--readout-scope heads|readout] [--steps 300] [--resume]

With `--readout-facts` a grounded planner's object read-out learns what people said was true (`fact`
corrections: the frame it was said at, the named object's place as the label, every other object's
label left out), mixed with planner frames (`--base-data`, `hivla datagen --mode planner`) under their
full labels. By default only the read-out's heads learn, so the object tokens, and every decision
given a scene line, stay the base checkpoint's; OUT is a grounded checkpoint usable as `pi05:OUT`
(see agent/training/facts_finetune.py). `--fact-share 0` is its control arm: the same fine-tune on
planner frames alone (no fact row in any batch), the facts still chosen and read before and after, so
the two arms' checkpoint_info.json compare side by side. The plan fine-tune's own options
(--correction-share, --lora, --anchor-weight, ...) are refused there.
"""

from __future__ import annotations

import argparse
import sys

from agent.commands.devices import add_device_arguments

# Options only the pi05 fine-tune reads, with their defaults: `--base hf:DIR` refuses them when changed.
PI05_ONLY = {"base_data": None, "correction_share": 0.1, "lora": False, "anchor_weight": 1.0, "approved_plans": True,
             "with_corrections": 0.5, "held_out_fraction": 0.2, "max_base_samples": 20_000, "base_stride": 5}
# ... and the hf: fine-tune's own.
HF_ONLY = {"lora_alpha": None, "lora_targets": "all-linear", "merge": False, "eval_samples": 32}
# --readout-facts's own options, with their defaults: refused without it when changed
FACTS_ONLY = {"fact_share": 0.25, "readout_scope": "heads", "fact_span": 0, "fact_span_stride": 3,
              "fact_weight": 1.0, "labelled_frames": None, "fact_unsaid": "ignore", "readout_belief": False,
              "readout_memory": False}
# the pi05 plan fine-tune's options that --readout-facts does not read (it trains no plan)
PLANS_ONLY = {"correction_share": 0.1, "lora": False, "lora_rank": 16, "anchor_weight": 1.0, "approved_plans": True,
              "with_corrections": 0.5, "base_stride": 5}
# the schedule flags default by recipe (None: the recipe's own): the plan fine-tunes', and --readout-facts'
PLAN_SCHEDULE = {"steps": 1000, "batch_size": 32, "lr": 3e-4, "warmup_steps": 20}


def changed_flags(args: argparse.Namespace, defaults: dict) -> list[str]:
    """The flags among `defaults` that were given other values, as the user typed them."""
    return sorted(f"--{k.replace('_', '-')}".replace("--approved-plans", "--no-approved-plans")
                  for k, default in defaults.items() if getattr(args, k) != default)


def default_schedule(args: argparse.Namespace) -> None:
    """The plan fine-tunes' schedule for the schedule flags left unset."""
    for k, default in PLAN_SCHEDULE.items():
        if getattr(args, k) is None:
            setattr(args, k, default)


def run_pi05(run, settings) -> int:
    """A pi05 fine-tune (plans or read-out): its data and checkpoint mistakes end in one line, exit 2."""
    from agent.training.corrections import CorrectionDataError
    from policies.pi05.policy import CheckpointError

    try:
        run(settings)
    except (CorrectionDataError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True,
                        help="the base checkpoint directory (pi05), or hf:DIR, a local transformers VLM or LM")
    parser.add_argument("--data", nargs="+", required=True, metavar="EXPORT",
                        help="sft/pairs/lerobot exports (read alone) or session directories holding the coached "
                             "sessions (hf: sft exports)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write (and resume from)")
    parser.add_argument("--base-data", nargs="+", default=None, metavar="DIR",
                        help="the base training data: `hivla datagen` sessions, or a directory holding a cached "
                             "dataset (default: the base checkpoint's data cache or the data it records)")
    parser.add_argument("--correction-share", type=float, default=0.1, help="share of every batch from corrections")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1000; --readout-facts 300)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="samples per optimizer step, over all processes (default 32; --readout-facts 64)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (default 3e-4; --readout-facts 1e-3)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="linear warm-up before the cosine decay (default 20)")
    parser.add_argument("--lora", action="store_true", help="pi05: train LoRA adapters (peft) instead of the backbone "
                                                             "(hf: always LoRA)")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-alpha", type=float, default=None, help="hf: LoRA scale numerator (default 2 x rank)")
    parser.add_argument("--lora-targets", default="all-linear",
                        help="hf: modules given adapters: all-linear, or names such as q_proj,v_proj")
    parser.add_argument("--merge", action="store_true",
                        help="hf: also write OUT/merged, the merged weights as a standalone model directory")
    parser.add_argument("--eval-samples", type=int, default=32,
                        help="hf: examples of each split evaluated before and after (0: no evaluation)")
    parser.add_argument("--anchor-weight", type=float, default=1.0,
                        help="keep the low level's inputs (backbone keys/values of image+task+subtask) at the base "
                             "checkpoint's; 0 turns it off")
    parser.add_argument("--no-approved-plans", dest="approved_plans", action="store_false",
                        help="train on the corrections only, not also on the model's plans the coach let stand")
    parser.add_argument("--with-corrections", type=float, default=0.5,
                        help="share of coaching samples whose context holds the corrections said so far (the rest: "
                             "none, as in an uncoached run)")
    parser.add_argument("--held-out-fraction", type=float, default=0.2,
                        help="correction (or fact) episodes kept for evaluation")
    parser.add_argument("--max-base-samples", type=int, default=20_000,
                        help="base samples (--readout-facts: planner frames) kept in memory")
    parser.add_argument("--base-stride", type=int, default=5, help="keep every Nth step of the base sessions")
    facts = parser.add_argument_group("the read-out on facts (pi05 grounded checkpoints)")
    facts.add_argument("--readout-facts", action="store_true",
                       help="train the grounded planner's object read-out on the fact corrections in --data (the "
                            "frame each was said at, the named object's place), mixed with the planner frames of "
                            "--base-data; no plan is trained")
    facts.add_argument("--fact-share", type=float, default=0.25,
                       help="--readout-facts: share of every batch from facts, in [0, 1] (the rest: planner "
                            "frames); 0: the control arm, the same fine-tune on planner frames alone, the facts "
                            "only evaluated")
    facts.add_argument("--readout-scope", choices=["heads", "readout"], default="heads",
                       help="--readout-facts: heads (default) trains only the read-out's heads, so the object "
                            "tokens and every decision given a scene line stay the base's; readout trains the "
                            "features too")
    facts.add_argument("--fact-span", type=int, default=0,
                       help="--readout-facts: also learn each fact on the frames within this many steps of its "
                            "own while it still holds (until the robot moves what it is about); session "
                            "directories only, an export keeps one frame a fact")
    facts.add_argument("--fact-weight", type=float, default=1.0,
                       help="--readout-facts: weight of the fact rows' mean loss against the planner frames' (1: "
                            "the two terms equal, whatever the share)")
    facts.add_argument("--labelled-frames", nargs="+", default=None,
                       help="--readout-facts: planner frames with every label known, drawn into the fact rows' "
                            "share (a ceiling to compare facts with: benchmarks/closed_loop_frames.py)")
    facts.add_argument("--fact-span-stride", type=int, default=3, help="--readout-facts: every Nth step of the span")
    facts.add_argument("--fact-unsaid", choices=["ignore", "base"], default="ignore",
                       help="--readout-facts: what a fact row's other objects are labelled: ignore (no loss) or "
                            "base (the base read-out's own reading of that frame)")
    facts.add_argument("--readout-belief", action="store_true",
                       help="--readout-facts --readout-scope readout: the read-out also learns to carry what it read "
                            "at the episode's previous plan (object permanence: a block the arm hides, one shut in "
                            "the drawer), added to a base without it with its gate shut")
    facts.add_argument("--readout-memory", action="store_true",
                       help="--readout-facts --readout-scope readout: the belief also keeps a block read at an "
                            "earlier plan and not at the last one, marked carried (a block hidden for several "
                            "plans in a row); implies --readout-belief")
    parser.add_argument("--resume", action="store_true", help="continue from the state saved in --out")
    add_device_arguments(parser, dtype="bf16", dtype_help="bf16 (default): autocast for pi05, bf16 base weights "
                                                           "for hf: (the LoRA adapters stay fp32)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=float, default=240.0, help="seconds between resumable checkpoints")


def main(args: argparse.Namespace) -> int:
    from agent.commands.devices import device_problem
    from agent.errors import UserError

    problem = device_problem(args.device)
    if problem:
        raise UserError(problem)
    if args.readout_facts and args.base.startswith("hf:"):
        raise UserError(f"--readout-facts trains a grounded pi05 planner's object read-out; --base {args.base} is a "
                        f"transformers model (pass a grounded checkpoint, e.g. policies/checkpoints/grounded)")
    changed = changed_flags(args, FACTS_ONLY)
    if changed and not args.readout_facts:
        raise UserError(f"{', '.join(changed)} apply to --readout-facts only; add --readout-facts to train the "
                        f"read-out on facts")
    if args.base.startswith("hf:"):
        return main_hf(args)
    changed = changed_flags(args, HF_ONLY)
    if changed:
        raise UserError(f"{', '.join(changed)} apply to --base hf:DIR only; {args.base} is a pi05 checkpoint")
    if args.readout_facts:
        return main_facts(args)
    default_schedule(args)
    from agent.training.finetune import FinetuneSettings, finetune

    settings = FinetuneSettings(
        base=args.base, data=args.data, out=args.out, base_data=args.base_data, correction_share=args.correction_share,
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps, lora=args.lora,
        lora_rank=args.lora_rank,
        anchor_weight=args.anchor_weight, held_out_fraction=args.held_out_fraction,
        approved_plans=args.approved_plans, with_corrections=args.with_corrections,
        max_base_samples=args.max_base_samples, base_stride=args.base_stride, resume=args.resume,
        device=args.device, dtype=args.dtype, threads=args.threads, seed=args.seed, save_every_s=args.save_every,
    )
    return run_pi05(finetune, settings)


def main_facts(args: argparse.Namespace) -> int:
    """The read-out of a grounded checkpoint on people's facts (agent/training/facts_finetune.py)."""
    from agent.errors import UserError

    changed = changed_flags(args, PLANS_ONLY)
    if changed:
        raise UserError(f"{', '.join(changed)} apply to the plan fine-tune only; --readout-facts trains the read-out "
                        f"on facts and no plan")
    from agent.training.facts_finetune import FactsFinetuneSettings, finetune_readout_on_facts

    schedule = {k: getattr(args, k) for k in PLAN_SCHEDULE if getattr(args, k) is not None}
    settings = FactsFinetuneSettings(
        base=args.base, data=args.data, out=args.out, base_data=args.base_data, fact_share=args.fact_share,
        scope=args.readout_scope, held_out_fraction=args.held_out_fraction, max_base_frames=args.max_base_samples,
        span=args.fact_span, span_stride=args.fact_span_stride, unsaid=args.fact_unsaid,
        fact_weight=args.fact_weight, labelled_frames=args.labelled_frames,
        belief=args.readout_belief or args.readout_memory, memory=args.readout_memory, resume=args.resume,
        device=args.device, dtype=args.dtype, threads=args.threads, seed=args.seed, save_every_s=args.save_every, **schedule,
    )
    return run_pi05(finetune_readout_on_facts, settings)


def main_hf(args: argparse.Namespace) -> int:
    """LoRA on a local transformers model (agent/training/hf_finetune.py)."""
    from agent.errors import UserError

    default_schedule(args)
    path = args.base[len("hf:"):]
    if not path:
        raise UserError("--base hf: names no model directory; write --base hf:DIR (a local transformers VLM or LM)")
    changed = changed_flags(args, PI05_ONLY)
    if changed:
        raise UserError(f"{', '.join(changed)} apply to pi05 checkpoints only; --base hf: trains LoRA adapters on "
                        f"the SFT export alone")
    from agent.training.hf_finetune import HfFinetuneSettings, finetune_hf

    settings = HfFinetuneSettings(
        base=path, data=args.data, out=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        warmup_steps=args.warmup_steps,
        lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_targets=args.lora_targets, merge=args.merge,
        eval_samples=args.eval_samples, device=args.device, dtype=args.dtype, resume=args.resume,
        save_every_s=args.save_every, seed=args.seed, threads=args.threads,
    )
    try:
        finetune_hf(settings)
    except ValueError as err:  # CorrectionDataError and HfModelError among them: each names the fix
        raise UserError(str(err)) from err
    return 0


if __name__ == "__main__":  # `accelerate launch -m agent.commands.finetune ...`
    from agent.cli import main as cli_main

    sys.exit(cli_main(["finetune", *sys.argv[1:]]))
