"""`hivla` command line. Each verb lives in its own module under agent.commands, exposing
`configure(parser)` and `main(args) -> int`; heavy imports (torch, mujoco) stay inside `main`
so `hivla --help` is instant."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "coach": ("agent.commands.coach", "interactive coaching console"),
    "run": ("agent.commands.run", "scripted runs over a task suite, with an optional scripted coach"),
    "export": ("agent.commands.export", "export recorded sessions as datasets"),
    "datagen": ("agent.commands.datagen", "record expert demonstrations with oracle plans"),
    "train": ("agent.commands.train", "train a model: the pi05-style high level or the low-level VLA"),
    "finetune": ("agent.commands.finetune", "fine-tune the high level on corrections"),
    "replay": ("agent.commands.replay", "print or render a recorded session"),
    "serve": ("agent.commands.serve", "serve a learned low level over openpi's websocket protocol"),
    "bench": ("agent.commands.bench", "run a benchmark script from benchmarks/"),
}


DEBUG_HELP = "on an error, show the full traceback too"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hivla", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, (module_name, help_text) in VERBS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue  # verb not built yet
        verb_parser = sub.add_parser(verb, help=help_text, description=help_text)
        module.configure(verb_parser)
        # also after the verb (`hivla run ... --debug`); SUPPRESS keeps the top-level value otherwise
        verb_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        verb_parser.set_defaults(_main=module.main)
    return parser


def quiet_openmp() -> None:
    """Idle OpenMP workers sleep instead of spinning (unless OMP_WAIT_POLICY is set already). Must run
    before torch is imported. On 2 cores shared with another job, a spinning worker takes the core the
    calling thread needs: a 30-token plan on 2 intra-op threads took 3 s instead of 76 ms (measured
    side by side, benchmarks/model_speed.py). On a machine of your own, OMP_WAIT_POLICY=ACTIVE."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    quiet_openmp()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 2
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except SystemExit as exit_:
        if not isinstance(exit_.code, str):
            raise
        return _user_error(args, exit_.code, exit_)  # `raise SystemExit("--x must be ...")` in a verb
    except Exception as err:
        from agent.errors import is_user_error, one_line

        if not is_user_error(err):
            raise
        return _user_error(args, one_line(err), err)


def _user_error(args: argparse.Namespace, message: str, err: BaseException) -> int:
    """One line naming the problem (and the fix), exit code 2; the traceback only with --debug."""
    if getattr(args, "debug", False):
        import traceback

        traceback.print_exception(err)
    print(f"hivla {args.verb}: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
