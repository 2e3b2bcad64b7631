"""`hivla replay SESSION`: print a recorded session's timeline, render it to an annotated mp4
(--video, for sharing), or log it for the rerun viewer (--rerun, for looking at it closely)."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("session", help="a session directory (e.g. runs/coach-20250101-120000)")
    parser.add_argument("--episode", "-e", type=int, action="append", help="only this episode (repeatable)")
    parser.add_argument("--steps", action="store_true", help="list every control step in the timeline too")
    parser.add_argument("--video", metavar="OUT.mp4", help="write an annotated video instead of only printing")
    parser.add_argument("--camera", default="front", help="camera shown in the video (default: front)")
    parser.add_argument("--codec", default="h264", choices=["h264", "av1", "lossless"], help="video codec")
    parser.add_argument("--width", type=int, default=512, help="approximate video width in pixels (default 512)")
    parser.add_argument("--rerun", metavar="OUT.rrd",
                        help="also write a rerun recording (both cameras, state, plans, corrections, detectors); "
                             "needs pip install -e '.[viz]'")
    parser.add_argument("--force", action="store_true", help="overwrite an existing video or .rrd file")


def _write_whole(out, suffix: str, force: bool, write) -> int:
    """`write(tmp)` into a hidden partial file beside `out`, then move it into place, so an interrupted
    render never leaves a truncated `out`; returns what `write` returns (the frames written)."""
    import os

    if out.exists() and not force:
        raise ValueError(f"{out} exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial{suffix}")
    try:
        frames = write(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return frames


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.markup import escape

    from sessions.reader import SessionError, read_session
    from sessions.replay import print_timeline, render_video

    console = Console()
    err = Console(stderr=True)
    if args.rerun:
        from sessions.rerun_log import import_rerun

        import_rerun()  # before reading the session: a missing rerun-sdk is one line naming the fix
    try:
        session = read_session(args.session)
    except SessionError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True, highlight=False)
        return 2
    try:
        print_timeline(session, console, args.episode, steps=args.steps)
        if args.video:
            out = Path(args.video)
            frames = _write_whole(out, ".mp4", args.force,
                                  lambda tmp: render_video(session, tmp, args.camera, args.episode, args.codec, args.width))
            console.print(f"wrote {escape(str(out))} ({frames} frames, {escape(args.camera)} camera)", soft_wrap=True)
        if args.rerun:
            from sessions.rerun_log import log_session

            out = Path(args.rerun)
            frames = _write_whole(out, ".rrd", args.force, lambda tmp: log_session(session, tmp, args.episode))
            console.print(f"wrote {escape(str(out))} ({frames} frames; open it with `rerun {escape(str(out))}`)",
                          soft_wrap=True)
    except ValueError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True, highlight=False)
        return 2
    return 0
