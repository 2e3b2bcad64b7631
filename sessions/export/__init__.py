"""Recorded sessions -> datasets: LeRobotDataset v3.0 (with language columns), chat SFT, pairs.

    from sessions.export import ExportOptions, export_sessions
    report = export_sessions(["runs/"], "datasets/corrections", ExportOptions(format="sft"))

Unreadable sessions are skipped (listed in `report.skipped`); what the reader dropped from a
damaged session (records, steps, a lost outcome) is listed per episode in `report.dropped` and in
the manifest. The export fails with ExportError only when nothing at all could be exported. Output is built beside `out` and moved into place
when complete, so `out` never holds a half-written dataset.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from sessions.export.common import FORMATS, ExportError, ExportOptions, ExportReport, StagedOutput
from sessions.reader import Session, SessionError, find_sessions, read_session

__all__ = ["FORMATS", "ExportError", "ExportOptions", "ExportReport", "export_sessions", "load_sessions"]


def load_sessions(
    paths: Iterable[str | os.PathLike], report: ExportReport, on_skip: Callable[[str, str], None] | None = None
) -> list[Session]:
    sessions = []
    seen: set[str] = set()
    for path in find_sessions(paths):
        try:
            session = read_session(path)
        except SessionError as err:
            report.skipped.append((str(path), str(err)))
            if on_skip:
                on_skip(str(path), str(err))
            continue
        except OSError as err:
            report.skipped.append((str(path), f"unreadable: {err}"))
            if on_skip:
                on_skip(str(path), f"unreadable: {err}")
            continue
        if session.header.session_id in seen:
            report.skipped.append((str(path), f"duplicate of session {session.header.session_id} already included"))
            continue
        seen.add(session.header.session_id)
        report.note_damage(session)
        sessions.append(session)
    return sessions


def export_sessions(
    paths: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    options: ExportOptions,
    on_skip: Callable[[str, str], None] | None = None,
) -> ExportReport:
    options.validate()
    t0 = time.perf_counter()
    report = ExportReport(format=options.format)
    sessions = load_sessions(paths, report, on_skip)
    if not sessions:
        raise ExportError("no readable session to export" + (f" ({len(report.skipped)} skipped)" if report.skipped else ""))
    target = Path(out).resolve()
    for s in sessions:
        src = s.path.resolve()
        if target == src or target in src.parents or src in target.parents:
            raise ExportError(f"refusing to export into {out}: it holds the sessions being exported, or lies inside one ({s.path})")
    staged = StagedOutput(out, options.force)
    try:
        if options.format == "lerobot":
            from sessions.export.lerobot import export_lerobot

            export_lerobot(sessions, staged.tmp, options, report)
        elif options.format == "sft":
            from sessions.export.sft import export_sft

            export_sft(sessions, staged.tmp, options, report)
        else:
            from sessions.export.pairs import export_pairs

            export_pairs(sessions, staged.tmp, options, report)
        report.out = staged.commit()
    except BaseException:
        staged.abort()
        raise
    report.seconds = time.perf_counter() - t0
    return report
