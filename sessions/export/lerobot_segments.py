"""Which recorded steps become which LeRobot dataset episodes (sessions/export/lerobot.py): every
session must share the first one's cameras, state, actions and fps; each selected episode becomes
one dataset episode, or (with a frame window) one per merged window around its corrections."""

from __future__ import annotations

from dataclasses import dataclass

from sessions.export.common import (
    ExportOptions, ExportReport, episode_selected, safe_name, selected_corrections, split_of,
)
from sessions.reader import EpisodeData, Session


@dataclass
class Segment:
    """A run of consecutive steps of one recorded episode that becomes one dataset episode."""

    session: Session
    episode: EpisodeData
    start: int  # position in episode.steps
    end: int  # exclusive
    split: str


@dataclass
class Schema:
    cameras: dict[str, tuple[int, int]]
    state_names: list[str]
    action_names: list[str]
    fps: int

    @classmethod
    def of(cls, session: Session) -> "Schema":
        h = session.header
        return cls({k: tuple(v) for k, v in h.cameras.items()}, list(h.state_names), list(h.action_names), int(round(h.fps)))

    def mismatch(self, other: "Schema") -> str | None:
        for name in ("cameras", "state_names", "action_names", "fps"):
            if getattr(self, name) != getattr(other, name):
                return f"its {name.replace('_', ' ')} {getattr(other, name)} differ from the first session's {getattr(self, name)}"
        return None


def plan_segments(sessions: list[Session], options: ExportOptions, report: ExportReport) -> tuple[Schema | None, list[Segment]]:
    schema: Schema | None = None
    segments: list[Segment] = []
    for session in sessions:
        this = Schema.of(session)
        if schema is None:
            schema = this
        elif (why := schema.mismatch(this)) is not None:
            report.skipped.append((str(session.path), f"cannot share one LeRobot dataset: {why}"))
            continue
        for cam in this.cameras:
            safe_name(cam, "camera name")
        used = False
        for ep in session.episodes:
            if not episode_selected(ep, options):
                continue
            split = split_of(session.header.session_id, ep.episode, options.val_fraction, options.seed)
            for start, end in _windows(ep, options):
                segments.append(Segment(session, ep, start, end, split))
                used = True
        if used:
            report.sessions.append(str(session.path))
    # Train episodes first, then validation, so each split is one contiguous index range.
    segments.sort(key=lambda s: s.split != "train")
    return schema, segments


def _windows(ep: EpisodeData, options: ExportOptions) -> list[tuple[int, int]]:
    """Whole episode, or (with a frame window) the merged windows around its selected corrections."""
    n = len(ep.steps)
    if options.max_frames_before is None and options.max_frames_after is None:
        return [(0, n)]
    before = options.max_frames_before if options.max_frames_before is not None else 0
    after = options.max_frames_after if options.max_frames_after is not None else 0
    spans = sorted(
        (max(0, ep.position_of_step(c.step) - before), min(n, ep.position_of_step(c.step) + after + 1))
        for c in selected_corrections(ep, options)
    )
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged
