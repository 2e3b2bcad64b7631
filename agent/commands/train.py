"""`hivla train`: train a model on recorded sessions.

    hivla train --data runs/datagen --preset small --out runs/ckpt_small --steps 4000 --dtype bf16
    hivla train --model vla --data runs/vla_data --out runs/vla_small --steps 30000   # the low-level VLA
    hivla train ... --out runs/ckpt_small --resume     # continue after a stop
    hivla train --model vla --init-from policies/checkpoints/vla --data runs/expert \
                --nudge-data runs/coached/sessions --out runs/vla_nudged --steps 1000   # learn from nudges

Defaults depend on --model (pi05: the high level's recipe; vla: the low level's, see its model card).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from agent.errors import UserError

if TYPE_CHECKING:
    from agent.training.loop import PresetSettings

# The flags left unset take the recipe's own defaults: its settings class in agent/training/ owns them.
MODELS = ("pi05", "readout", "vla")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="pi05", choices=MODELS,
                        help="pi05: the π0.5-style model (high level); readout: the grounded planner's object "
                             "read-out alone (its stage 1, on planner frames); vla: the low-level VLA")
    parser.add_argument("--data", nargs="+", required=True, help="session directories (or folders holding them)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write (and resume from)")
    parser.add_argument("--preset", default="small", help="pi05: tiny | small | small_conv | planner | grounded | pi05; readout: grounded; vla: tiny | small")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (pi05 4000, vla 30000)")
    parser.add_argument("--batch-size", type=int, default=None, help="pi05 32, vla 64")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (pi05 5e-4, vla 1e-3)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16"],
                        help="bf16 = autocast (pi05 default: ≈2x faster on this CPU; vla default fp32: see its model card)")
    parser.add_argument("--resume", action="store_true", help="continue from the state saved in --out")
    parser.add_argument("--eval-every", type=int, default=None, help="steps between held-out evaluations")
    parser.add_argument("--closed-loop-every", type=int, default=5000,
                        help="vla: steps between closed-loop evaluations in the simulator (0: never)")
    parser.add_argument("--closed-loop-trials", type=int, default=5, help="vla: trials per primitive in each")
    parser.add_argument("--data-cache", default=None, metavar="RUN",
                        help="vla: reuse the tensors and tokenizer an earlier run on the same --data cached in RUN")
    parser.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                        help="stop (resumably) at this step; the learning-rate schedule still spans --steps")
    parser.add_argument("--save-every", type=float, default=None, help="seconds between resumable checkpoints")
    parser.add_argument("--init-from", default=None, metavar="CKPT",
                        help="pi05: start from this checkpoint's weights, tokenizer and norm stats; readout: from an "
                             "earlier read-out's weights (tensors the new config adds or reshapes start fresh); vla: fine-tune "
                             "this checkpoint (its config, tokenizer, norm stats and weights; --set may change only "
                             "its inference-time fields)")
    parser.add_argument("--readout", default=None, metavar="RUN",
                        help="pi05 --preset grounded: the object read-out trained by `--model readout` (stage 1), "
                             "loaded and frozen while the backbone learns the grounded thought")
    parser.add_argument("--nudge-data", nargs="+", default=[], metavar="DIR",
                        help="vla: coached sessions read for their nudge samples only, beside --data: each step a "
                             "nudge moved the arm, with what ran from there as its chunk, where the subtask was then "
                             "completed (agent/training/vla_data.py; all kept whatever --stride says)")
    parser.add_argument("--all-nudges", action="store_true",
                        help="vla --nudge-data: keep every nudge, also those after which the subtask was not completed")
    parser.add_argument("--stride", type=int, default=1, help="keep every Nth control step as a sample")
    parser.add_argument("--scene-questions", type=float, default=0.4, metavar="N",
                        help="pi05 on planner frames: scene questions co-trained per frame, on average (0: none)")
    parser.add_argument("--question-weight", action="append", default=[], metavar="TYPE=W",
                        help="pi05 on planner frames: ask scene questions of TYPE W times as often as the "
                             "others (repeatable; e.g. where=4)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (pi05 2, vla 1); use 1 when other jobs share the cores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a config field of the preset (JSON value), e.g. --set depth=4")


def parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def check_args(args: argparse.Namespace) -> str | None:
    """The first problem visible before training starts (data that is not there, bad counts), or None."""
    from sessions.reader import find_sessions
    from sessions.recorder import HEADER_FILE

    for name in ("steps", "batch_size", "eval_every", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return f"--{name.replace('_', '-')} must be at least 1, got {value}"
    if args.stride < 1:
        return f"--stride must be at least 1, got {args.stride}"
    if args.lr is not None and not args.lr > 0:
        return f"--lr must be positive, got {args.lr}"
    for path in map(Path, args.data):
        if not path.exists():
            return f"--data {path}: no such file or directory"
    if (args.nudge_data or args.all_nudges) and args.model != "vla":
        return "--nudge-data and --all-nudges are for --model vla (nudges teach the low level)"
    if args.all_nudges and not args.nudge_data:
        return "--all-nudges keeps every nudge of --nudge-data DIR: give the coached sessions with --nudge-data"
    for path in map(Path, args.nudge_data):
        if not path.exists():
            return f"--nudge-data {path}: no such file or directory"
    if args.init_from is not None:
        if args.data_cache is not None:
            return "--init-from reads the data with the checkpoint's tokenizer and norm stats: drop --data-cache"
        needs = ("model.safetensors",) if args.model == "readout" else ("model.safetensors", "tokenizer.json", "norm_stats.json")
        needs += ("config.json",) if args.model == "vla" else ()
        missing = [f for f in needs
                   if not (Path(args.init_from) / f).is_file()]
        if missing:
            kind = ("an object read-out (`hivla train --model readout` OUT)" if args.model == "readout"
                    else f"a {args.model} checkpoint directory")
            return f"--init-from {args.init_from}: not {kind} (no {', '.join(missing)})"
    if args.scene_questions < 0:
        return f"--scene-questions must not be negative, got {args.scene_questions}"
    try:
        question_weights(args.question_weight)
    except ValueError as e:
        return f"--question-weight: {e}"
    from agent.training.planner_frames import is_planner_frames

    if args.readout is not None and not (Path(args.readout) / "model.safetensors").is_file():
        return f"--readout {args.readout}: no read-out there; train one with `hivla train --model readout --out {args.readout}`"
    if all(is_planner_frames(p) for p in args.data):
        return None if args.model in ("pi05", "readout") else "planner frames (datagen --mode planner) train --model pi05 or readout"
    if args.model == "readout":
        return "--model readout trains on planner frames: record them with `hivla datagen --mode planner`"
    if not any((p / HEADER_FILE).is_file() for p in find_sessions(args.data)):
        return (f"--data {' '.join(args.data)} holds no recorded session; record some with "
                "`hivla datagen --out DIR` and pass that DIR")
    return None


def question_weights(given: list[str]) -> dict[str, float] | None:
    """`--question-weight TYPE=W` flags as {type: weight}; None when none are given. ValueError names the fix."""
    from agent.training.scene_questions import type_probabilities

    weights = {}
    for item in given:
        kind, sep, value = item.partition("=")
        try:
            weights[kind.strip()] = float(value)
        except ValueError:
            raise ValueError(f"{item!r} is not TYPE=W (e.g. where=4)") from None
        if not sep:
            raise ValueError(f"{item!r} is not TYPE=W (e.g. where=4)")
    type_probabilities(weights)  # checks the types and weights
    return weights or None


def recipe(args: argparse.Namespace) -> tuple[Callable[[PresetSettings], object], PresetSettings]:
    """The training function `--model` names and its settings from the flags; a flag left unset (None) takes
    the default of the recipe's settings class."""
    if args.model == "readout":
        from agent.training.readout_trainer import ReadoutSettings, train_readout

        train, settings_class, own = train_readout, ReadoutSettings, dict(init_from=args.init_from)
        if args.preset == "small":  # the flag's default is the high level's
            args.preset = "grounded"
    elif args.model == "vla":
        from agent.training.vla_data import ALL_NUDGES, NUDGES
        from agent.training.vla_trainer import VlaTrainSettings, train_vla

        train, settings_class = train_vla, VlaTrainSettings
        # the data reader takes the nudge sessions as --data entries that say what to read of them
        args.data = [*args.data, *(f"{ALL_NUDGES if args.all_nudges else NUDGES}{d}" for d in args.nudge_data)]
        own = dict(stride=args.stride, closed_loop_every=args.closed_loop_every,
                   closed_loop_trials=args.closed_loop_trials, data_cache=args.data_cache, init_from=args.init_from)
    else:
        from agent.training.trainer import TrainSettings, train

        settings_class = TrainSettings
        own = dict(stride=args.stride, init_from=args.init_from, scene_questions=args.scene_questions,
                   readout=args.readout, question_weights=question_weights(args.question_weight))
    if args.preset not in settings_class.presets:
        raise SystemExit(f"--preset {args.preset!r} is not a {args.model} preset; "
                         f"choose from {', '.join(settings_class.presets)}")
    given = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "dtype": args.dtype,
             "eval_every": args.eval_every, "save_every_s": args.save_every, "threads": args.threads}
    return train, settings_class(data=args.data, out=args.out, preset=args.preset, device=args.device,
                                 resume=args.resume, seed=args.seed, overrides=parse_overrides(args.set),
                                 stop_at=args.stop_at, **{k: v for k, v in given.items() if v is not None}, **own)


def main(args: argparse.Namespace) -> int:
    import os

    # On a shared machine, OpenMP threads that spin at barriers while another process holds the core
    # slow a 2-thread step down ~6x (measured: 20 s vs 3.2 s a step with one thread); sleep instead.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    problem = check_args(args)
    if problem:
        raise UserError(problem)
    train, settings = recipe(args)
    from agent.training.loop import sigterm_as_interrupt

    with sigterm_as_interrupt():  # `kill PID` saves a resumable checkpoint, as Ctrl-C does
        train(settings)
    return 0


if __name__ == "__main__":  # `accelerate launch -m agent.commands.train ...`
    import sys

    from agent.cli import main as cli_main

    sys.exit(cli_main(["train", *sys.argv[1:]]))
