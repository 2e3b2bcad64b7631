"""`hivla export SESSION... --format lerobot|sft|pairs --out DIR`: recorded sessions as datasets."""

from __future__ import annotations

import argparse

KINDS = ["plan", "override", "negation", "constraint", "nudge", "fact", "stop", "pause", "resume", "confirm"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sessions", nargs="+", metavar="SESSION", help="session directories, or directories holding sessions (e.g. runs/)")
    parser.add_argument("--format", "-f", required=True, choices=["lerobot", "sft", "pairs"], help="dataset format")
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory (must be new or empty unless --force)")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory once the new export is complete")
    filters = parser.add_argument_group("filters")
    filters.add_argument("--kind", action="append", choices=KINDS, help="keep these correction kinds ('plan' = plan rows); repeatable")
    filters.add_argument("--family", action="append", help="keep episodes of these task families; repeatable")
    filters.add_argument("--source", action="append", help="keep rows from these sources: model|human|oracle plans, human|scripted corrections")
    filters.add_argument("--only-corrections", action="store_true", help="only episodes / rows with a correction")
    filters.add_argument("--include-withdrawn", action="store_true", help="keep corrections that were taken back")
    split = parser.add_argument_group("split and windows")
    split.add_argument("--val-fraction", type=float, default=0.0, help="share of episodes for the validation split (default 0)")
    split.add_argument("--seed", type=int, default=0, help="seed of the episode split")
    split.add_argument("--max-frames-before", type=int, help="frames kept before each correction (lerobot: crop episodes to windows; sft: history images)")
    split.add_argument("--max-frames-after", type=int, help="frames kept after each correction (lerobot, pairs)")
    parser.add_argument("--correction-weight", type=float, default=1.0, help="weight column of correction rows (sft)")
    parser.add_argument("--video-codec", default="h264", choices=["h264", "av1", "lossless"], help="lerobot videos (default h264)")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from sessions.export import ExportError, ExportOptions, export_sessions

    console = Console()
    err = Console(stderr=True)
    options = ExportOptions(
        format=args.format, kinds=args.kind, families=args.family, sources=args.source,
        only_corrections=args.only_corrections, val_fraction=args.val_fraction, seed=args.seed,
        max_frames_before=args.max_frames_before, max_frames_after=args.max_frames_after,
        include_withdrawn=args.include_withdrawn, correction_weight=args.correction_weight,
        video_codec=args.video_codec, force=args.force,
    )

    def on_skip(path: str, reason: str) -> None:
        # one unwrapped line per session, so logs stay greppable
        err.print(f"[yellow]skipped[/yellow] {escape(path)}: {escape(reason)}", soft_wrap=True, highlight=False)

    import signal
    import threading

    def on_term(signum, frame):  # `kill` (SIGTERM) unwinds like Ctrl-C, so the staging folder is removed
        raise KeyboardInterrupt

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_term) if main_thread else None
    try:
        report = export_sessions(args.sessions, args.out, options, on_skip=on_skip)
    except ExportError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True, highlight=False)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    for path, reason in report.skipped:
        if "cannot share" in reason or "duplicate" in reason:
            on_skip(path, reason)
    for damage in report.dropped:  # what a damaged session lost, per episode (also in the manifest)
        where = escape(damage["session"]) + (f" episode {damage['episode']}" if damage["episode"] is not None else "")
        outcome = " (truncated: outcome unknown)" if damage["truncated"] else ""
        err.print(f"[yellow]note[/yellow] {where}{outcome}: {escape('; '.join(damage['dropped']) or 'steps at the end')}",
                  soft_wrap=True, highlight=False)

    table = Table(title=f"hivla export ({report.format})", title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("output", escape(str(report.out)))
    table.add_row("sessions exported", str(len(report.sessions)))
    table.add_row("sessions skipped", str(len(report.skipped)))
    table.add_row("episodes", str(report.episodes))
    table.add_row("frames" if report.format == "lerobot" else "images" if report.format == "sft" else "window frames", str(report.frames))
    unit = "episodes" if report.format == "lerobot" else "rows"
    for split_name, n in sorted(report.rows.items()):
        table.add_row(f"{split_name} {unit}", str(n))
    for kind, n in sorted(report.by_kind.items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {kind}", str(n))
    table.add_row("seconds", f"{report.seconds:.2f}")
    console.print(table)
    return 0
