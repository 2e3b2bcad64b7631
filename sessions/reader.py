"""Read a recorded session directory back (see sessions.recorder for the layout).

`read_session(path)` checks that the directory is a hivla session of a schema version this code
knows, parses every event, and keeps only steps whose images are on disk for every camera, so
`EpisodeData.frames(camera)[i]` is always the image of `EpisodeData.steps[i]`. What a crash can
leave behind -- a torn last line, a torn last frame record, steps whose frames never reached
the disk -- is dropped silently (and noted in `Session.warnings`). Anything else that is wrong
(a foreign directory, a newer schema, a damaged line in the middle) raises SessionError naming
the file and the problem.
"""

from __future__ import annotations

import bisect
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import TypeAdapter, ValidationError

from sessions.frames import FrameIndex, frame_path, scan_frames
from sessions.recorder import EVENTS_FILE, HEADER_FILE
from sessions.schema import (
    SCHEMA_VERSION,
    CorrectionRecord,
    CorrectionWithdrawn,
    EpisodeEnd,
    EpisodeStart,
    Event,
    PlanEmitted,
    SessionHeader,
    Step,
)

_EVENT = TypeAdapter(Event)


class SessionError(Exception):
    """A directory that cannot be read as a hivla session; the message names the file and why."""


@dataclass
class EpisodeData:
    start: EpisodeStart
    steps: list[Step] = field(default_factory=list)
    plans: list[PlanEmitted] = field(default_factory=list)
    corrections: list[CorrectionRecord] = field(default_factory=list)  # withdrawn ones flagged
    end: EpisodeEnd | None = None
    dropped_steps: int = 0  # steps read from events.jsonl but lost their frames (crash tail)
    session_path: Path | None = None
    _frame_indexes: dict[str, FrameIndex] = field(default_factory=dict, repr=False)

    @property
    def episode(self) -> int:
        return self.start.episode

    @property
    def task(self) -> str:
        return self.start.task

    @property
    def cameras(self) -> list[str]:
        return sorted(self._frame_indexes)

    @property
    def active_corrections(self) -> list[CorrectionRecord]:
        return [c for c in self.corrections if not c.withdrawn]

    def frames(self, camera: str) -> np.ndarray:
        """uint8 [T, H, W, 3]: frame i is the image of steps[i]."""
        return self._index(camera).read_many([s.frame for s in self.steps])

    def frame(self, camera: str, position: int) -> np.ndarray:
        """uint8 [H, W, 3]: the image of steps[position]."""
        return self._index(camera).read(self.steps[position].frame)

    def position_of_step(self, step: int) -> int:
        """Index into `steps` of the last kept step whose number is <= `step` (0 if none is)."""
        numbers = [s.step for s in self.steps]
        return max(0, bisect.bisect_right(numbers, step) - 1)

    def _index(self, camera: str) -> FrameIndex:
        if camera not in self._frame_indexes:
            raise KeyError(f"episode {self.episode} has no camera {camera!r}; cameras: {self.cameras}")
        return self._frame_indexes[camera]


@dataclass
class Session:
    path: Path
    header: SessionHeader
    episodes: list[EpisodeData]
    warnings: list[str] = field(default_factory=list)

    @property
    def num_steps(self) -> int:
        return sum(len(ep.steps) for ep in self.episodes)

    @property
    def truncated(self) -> bool:
        """True when a crash tail was dropped somewhere."""
        return bool(self.warnings)


def read_header(path: str | os.PathLike) -> SessionHeader:
    """The validated SessionHeader of a session directory."""
    path = Path(path)
    header_file = path / HEADER_FILE
    if not path.exists():
        raise SessionError(f"{path}: no such session directory")
    if not header_file.is_file():
        raise SessionError(f"{path}: not a hivla session (no {HEADER_FILE})")
    try:
        raw = json.loads(header_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SessionError(f"{header_file}: corrupt header, not valid JSON ({err})") from None
    if not isinstance(raw, dict) or raw.get("format") != "hivla-session":
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise SessionError(f"{header_file}: not a hivla session header (format {found!r}, expected 'hivla-session')")
    version = raw.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise SessionError(f"{header_file}: bad schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise SessionError(
            f"{header_file}: written with session schema {version}, newer than this hivla reads "
            f"({SCHEMA_VERSION}); upgrade hivla to read it"
        )
    try:
        return SessionHeader.model_validate(raw)
    except ValidationError as err:
        raise SessionError(f"{header_file}: invalid header: {_short(err)}") from None


def read_session(path: str | os.PathLike) -> Session:
    path = Path(path)
    header = read_header(path)
    warnings: list[str] = []
    events = _read_events(path / EVENTS_FILE, warnings)

    episodes: dict[int, EpisodeData] = {}
    corrections_by_id: dict[tuple[int, int], int] = {}
    for lineno, event in events:
        if isinstance(event, EpisodeStart):
            if event.episode in episodes:
                raise SessionError(f"{path / EVENTS_FILE}:{lineno}: episode {event.episode} starts twice")
            episodes[event.episode] = EpisodeData(start=event, session_path=path)
            continue
        episode = episodes.get(event.episode)
        if episode is None:
            raise SessionError(
                f"{path / EVENTS_FILE}:{lineno}: {event.type} for episode {event.episode} before its episode_start"
            )
        if isinstance(event, Step):
            episode.steps.append(event)
        elif isinstance(event, PlanEmitted):
            episode.plans.append(event)
        elif isinstance(event, CorrectionRecord):
            corrections_by_id[(event.episode, event.correction_id)] = len(episode.corrections)
            episode.corrections.append(event)
        elif isinstance(event, CorrectionWithdrawn):
            k = corrections_by_id.get((event.episode, event.correction_id))
            if k is not None:
                episode.corrections[k] = episode.corrections[k].model_copy(update={"withdrawn": True})
        elif isinstance(event, EpisodeEnd):
            episode.end = event

    for episode in episodes.values():
        _attach_frames(path, header, episode, warnings)
    return Session(path=path, header=header, episodes=sorted(episodes.values(), key=lambda e: e.episode), warnings=warnings)


def _read_events(events_file: Path, warnings: list[str]) -> list[tuple[int, object]]:
    try:
        data = events_file.read_bytes()
    except FileNotFoundError:
        raise SessionError(f"{events_file}: missing (the session has a header but no event log)") from None
    # A power loss can leave zero-filled blocks at the end of a file; they are a torn tail too.
    stripped = data.rstrip(b"\x00")
    lines = stripped.split(b"\n")
    if lines and lines[-1]:
        warnings.append(f"{events_file.name}: dropped a torn last line ({len(lines[-1])} bytes)")
    complete = lines[:-1]  # everything before the last newline
    events = []
    for lineno, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            events.append((lineno, _EVENT.validate_json(line)))
        except ValidationError as err:
            raise SessionError(f"{events_file}:{lineno}: corrupt record: {_short(err)}") from None
    return events


def _attach_frames(path: Path, header: SessionHeader, episode: EpisodeData, warnings: list[str]) -> None:
    indexes = {cam: scan_frames(frame_path(path, episode.episode, cam)) for cam in sorted(header.cameras)}
    episode._frame_indexes = indexes
    for cam, index in indexes.items():
        if index.torn:
            warnings.append(f"{index.path.relative_to(path)}: dropped a torn record after byte {index.valid_bytes}")
    kept = [s for s in episode.steps if all(s.frame in index.entries for index in indexes.values())]
    episode.dropped_steps = len(episode.steps) - len(kept)
    if episode.dropped_steps:
        warnings.append(f"episode {episode.episode}: dropped {episode.dropped_steps} steps whose frames are missing")
        # Plans and corrections after the last intact step have no images to pair with.
        last = kept[-1].step if kept else -1
        episode.plans = [p for p in episode.plans if p.step <= last]
        episode.corrections = [c for c in episode.corrections if c.step <= last]
    episode.steps = kept


def find_sessions(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand each path: a session directory as is, any other directory into the sessions below it.

    A path holding no session at all is returned as is, so reading it raises a clear SessionError.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / HEADER_FILE).is_file() or not p.is_dir():
            found.append(p)
            continue
        below = sorted(h.parent for h in p.rglob(HEADER_FILE))
        found.extend(below if below else [p])
    seen: set[Path] = set()
    return [p for p in found if not (p.resolve() in seen or seen.add(p.resolve()))]


def iter_sessions(
    paths: Iterable[str | os.PathLike],
    on_error: Callable[[Path, SessionError], None] | None = None,
) -> Iterator[Session]:
    """Read every session under `paths`, one at a time. With `on_error`, an unreadable session is
    reported to it and skipped; without, its SessionError propagates."""
    for p in find_sessions(paths):
        try:
            yield read_session(p)
        except SessionError as err:
            if on_error is None:
                raise
            on_error(p, err)


def _short(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(x) for x in first.get("loc", ())) or "record"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {first.get('msg')}{more}"
