"""`hivla coach`: watch the robot in the terminal and correct it in plain English.

Interactive by default (needs a terminal): the robot waits at the first frame until Enter, moves
at half real time (--speed), and one episode follows another until /quit (--episodes). Headless
with `--script FILE` (or lines piped on stdin): the same commands and corrections, said at
scripted control steps, no terminal needed, as fast as the machine steps unless --speed is given.
Every session is recorded to runs/coach-<timestamp> (or --out) and read back on exit.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from pathlib import Path

from agent.commands.devices import add_device_arguments, device_problem


EPILOG = """\
in the console: Enter (or /go) starts the robot; type a correction ("no, the blue one first",
"a bit more to the left", "never touch the drawer") or a command: /pause /resume /reset /task TEXT
/undo /good /speed X /slow /fast /ask QUESTION /save /help /quit (Tab completes; /override /not /rule
/nudge /stop force a kind). A typed question goes to the high level, "slower"/"faster" change the pace.
A reading the console is unsure of is asked back (y / n / rephrase). Ctrl-C saves and quits.

headless: hivla coach --script FILE (or lines piped on stdin), one line per thing said;
"@STEP text" says it at that control step, other lines follow 1 s after the previous one;
--steps N runs exactly N control steps; --confirm asks unsure readings back (the next line answers).
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--task", help="free-text task, e.g. 'put the red block in the blue bowl'")
    what.add_argument("--family", help="task family to sample a task from (default: any)")
    parser.add_argument("--seed", type=int, default=0, help="episode seed (default 0)")
    parser.add_argument("--suite", default="base", help="task suite (default 'base')")
    parser.add_argument("--high-level", metavar="SPEC", help="high-level policy spec: oracle | pi05:PATH (default: shipped)")
    parser.add_argument("--low-level", metavar="SPEC", help="low-level policy spec: expert | pi05:PATH (default: shipped)")
    parser.add_argument("--out", metavar="DIR", help="session directory (default runs/coach-<timestamp>)")
    parser.add_argument("--image-size", type=int, default=128, metavar="N", help="camera resolution (default 128)")
    parser.add_argument("--camera-width", type=int, default=48, metavar="COLS", help="columns for the camera view (default 48)")
    parser.add_argument("--refresh-hz", type=float, default=10.0, help="view refresh rate (default 10)")
    parser.add_argument("--replan-period", type=float, default=2.0, metavar="S", help="high-level re-plan timer (default 2 s)")
    parser.add_argument(
        "--speed", metavar="X",
        help="simulated seconds per wall second, or 'max' (default 0.5 in the console, max headless)",
    )
    parser.add_argument(
        "--start-paused", action=argparse.BooleanOptionalAction, default=None,
        help="show the first frame and wait for Enter or /go (default: on in the console)",
    )
    parser.add_argument("--episodes", type=int, metavar="N",
                        help="episodes in the session (default: until /quit in the console, 1 headless)")
    parser.add_argument("--pause-between", type=float, metavar="S",
                        help="seconds the ended episode stays on screen before the next (default 5; 0 headless)")
    parser.add_argument("--rerun", metavar="OUT.rrd",
                        help="also log the live session for the rerun viewer: a .rrd file, or a rerun+http:// URL")
    parser.add_argument(
        "--history-file", metavar="PATH",
        help="input history file (default <runs>/coach_history.txt; 'none' keeps it in memory)",
    )
    parser.add_argument("--script", metavar="FILE", help="headless: say the lines of FILE ('-' = stdin; '@STEP text' schedules a line)")
    parser.add_argument("--steps", type=int, metavar="N", help="headless: run exactly N control steps")
    parser.add_argument("--confirm", action="store_true",
                        help="headless: ask unsure readings back as the console does; the next script line answers "
                             "(y / n / a rephrased line). The console always asks back.")
    add_device_arguments(parser)


def _stdin_has_lines() -> bool:
    """True when stdin is a pipe or a file (headless input), False for a terminal or /dev/null."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _check_args(args: argparse.Namespace) -> str | None:
    if args.image_size < 16:
        return f"--image-size must be at least 16, got {args.image_size}"
    if args.camera_width < 8:
        return f"--camera-width must be at least 8, got {args.camera_width}"
    if not 1.0 <= args.refresh_hz <= 60.0:
        return f"--refresh-hz must be between 1 and 60, got {args.refresh_hz}"
    if args.replan_period <= 0:
        return f"--replan-period must be positive, got {args.replan_period}"
    if args.steps is not None and args.steps < 1:
        return f"--steps must be at least 1, got {args.steps}"
    if args.task is not None and not args.task.strip():
        return "--task is empty"
    if args.episodes is not None and args.episodes < 1:
        return f"--episodes must be at least 1, got {args.episodes}"
    if args.pause_between is not None and not 0 <= args.pause_between <= 600:
        return f"--pause-between must be between 0 and 600 seconds, got {args.pause_between}"
    if args.speed is not None:
        from agent.console.pace import parse_speed
        from agent.errors import UserError

        try:
            parse_speed(args.speed)
        except UserError as err:
            return f"--speed: {err}"
    return device_problem(args.device)


def _resolve_pace_defaults(args: argparse.Namespace, interactive: bool) -> None:
    """A person gets a slow robot that waits to start and episodes that follow on; a script gets
    one episode as fast as the machine steps (tests and scripted runs must not wait on a clock)."""
    from agent.console.episodes import DEFAULT_PAUSE_S
    from agent.console.pace import DEFAULT_INTERACTIVE_SPEED, parse_speed

    if args.speed is None:
        args.speed = DEFAULT_INTERACTIVE_SPEED if interactive else None
    else:
        args.speed = parse_speed(args.speed)  # checked in _check_args
    if args.start_paused is None:
        args.start_paused = interactive
    if args.episodes is None and not interactive:
        args.episodes = 1
    if args.pause_between is None:
        args.pause_between = DEFAULT_PAUSE_S if interactive else 0.0


def main(args: argparse.Namespace) -> int:
    problem = _check_args(args)
    if problem:
        print(f"hivla coach: {problem}", file=sys.stderr)
        return 2
    script_path = args.script
    interactive = script_path is None and sys.stdin.isatty() and sys.stdout.isatty()
    if script_path is None and not interactive:
        if not _stdin_has_lines():
            print(
                "hivla coach: needs a terminal (stdin and stdout must be a TTY). For a headless run, "
                "pass --script FILE or pipe the lines to say on stdin (see `hivla coach --help`).",
                file=sys.stderr,
            )
            return 2
        script_path = "-"
    if script_path is not None and args.start_paused:
        print("hivla coach: --start-paused waits for a person pressing Enter; a script starts at once "
              "(say '/pause' at @0 to hold the robot instead)", file=sys.stderr)
        return 2
    _resolve_pace_defaults(args, interactive=script_path is None)
    script = None
    if script_path is not None:
        from agent.console.script import ScriptError, parse_script

        try:
            if script_path == "-":
                script = parse_script(sys.stdin.readlines())
            else:
                script = parse_script(Path(script_path).read_text(encoding="utf-8", errors="replace").splitlines())
        except (OSError, ScriptError) as err:
            print(f"hivla coach: cannot read script {script_path}: {err}", file=sys.stderr)
            return 2

    if args.rerun:
        from sessions.rerun_log import import_rerun

        import_rerun()  # before the slow build: a missing rerun-sdk is one line naming the fix
    from agent.console.session import CoachSessionError, open_coach_session

    try:
        session = open_coach_session(args)
    except CoachSessionError as err:
        print(f"hivla coach: {err}", file=sys.stderr)
        return 2
    session.controller.ask_back = script is None or args.confirm
    with session:
        if script is not None:
            return session.run_headless(script, max_steps=args.steps)
        return session.run_interactive(history_file=args.history_file)
