"""Read a recorded session directory back (see sessions.recorder for the layout).

`read_session(path)` checks that the directory is a hivla session of a schema version this code
knows, parses every event, and keeps only steps whose images are on disk for every camera, so
`EpisodeData.frames(camera)[i]` is always the image of `EpisodeData.steps[i]`.

Damage costs only what is damaged, never the session: a torn or corrupt line of events.jsonl
drops that record, a damaged frame record drops the step it belongs to, a crash tail drops the
steps whose frames never reached the disk. An episode that lost steps at its end is marked
`truncated` and its outcome becomes unknown (`end` is None; what was recorded stays in
`recorded_end`). Every loss is noted per episode in `EpisodeData.dropped` and in
`Session.warnings`. Corrections and plans recorded after an episode ended (older hivla versions
recorded them) are dropped too: nobody saw a step to attach them to. Only a foreign directory,
a missing or unreadable header, a newer schema or a missing event log raise SessionError.
"""

from __future__ import annotations

import bisect
import json
import os
import re
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
    QuestionAnswered,
    RuleForgotten,
    RuleRemembered,
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
    questions: list[QuestionAnswered] = field(default_factory=list)  # /ask and its answers
    rules: list[RuleRemembered | RuleForgotten] = field(default_factory=list)  # session memory changes here
    memory_at_start: list[RuleRemembered] = field(default_factory=list)  # rules kept from earlier episodes
    end: EpisodeEnd | None = None  # None: not finished, or its outcome is unknown (truncated)
    dropped_steps: int = 0  # steps read from events.jsonl but lost their frames
    dropped: list[str] = field(default_factory=list)  # what the reader dropped, for people
    truncated: bool = False  # steps at the end were lost: the recorded outcome is not trusted
    recorded_end: EpisodeEnd | None = None  # the episode_end as recorded, even when truncated
    session_path: Path | None = None
    _frame_indexes: dict[str, FrameIndex] = field(default_factory=dict, repr=False)

    @property
    def episode(self) -> int:
        return self.start.episode

    @property
    def success(self) -> bool | None:
        """The episode's outcome; None when it did not finish or its end was lost."""
        return None if self.end is None else self.end.success

    def note(self, what: str, warnings: list[str]) -> None:
        self.dropped.append(what)
        warnings.append(f"episode {self.episode}: {what}")

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
        if (path / EVENTS_FILE).is_file() or (path / "frames").is_dir():
            raise SessionError(f"{path}: session header {HEADER_FILE} is missing; the folder holds a recording that cannot be read without it")
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
    events_file = path / EVENTS_FILE
    events, damaged = _read_events(events_file, warnings)

    episodes: dict[int, EpisodeData] = {}
    orphans: dict[int, int] = {}  # episode -> records whose episode_start is missing
    corrections_by_id: dict[tuple[int, int], int] = {}
    for lineno, event in events:
        if isinstance(event, EpisodeStart):
            if event.episode in episodes:
                warnings.append(f"{EVENTS_FILE}:{lineno}: episode {event.episode} starts a second time; record dropped")
            else:
                episodes[event.episode] = EpisodeData(start=event, session_path=path)
            continue
        episode = episodes.get(event.episode)
        if episode is None:
            orphans[event.episode] = orphans.get(event.episode, 0) + 1
            continue
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
        elif isinstance(event, QuestionAnswered):
            episode.questions.append(event)
        elif isinstance(event, (RuleRemembered, RuleForgotten)):
            episode.rules.append(event)
        elif isinstance(event, EpisodeEnd):
            if episode.end is None:
                episode.end = event
    for number, count in sorted(orphans.items()):
        if number in episodes:  # most likely a damaged episode number pointing at a later episode
            episodes[number].note(f"dropped {count} records found before its episode_start", warnings)
        else:
            warnings.append(f"episode {number}: no readable episode_start (its record is damaged); dropped its {count} records")

    frames_dir = path / "frames"
    for ep_dir in sorted(frames_dir.glob("ep*")) if frames_dir.is_dir() else []:
        number = ep_dir.name[2:]
        if number.isdigit() and int(number) not in episodes and int(number) not in orphans and any(ep_dir.iterdir()):
            warnings.append(f"frames/{ep_dir.name}: frames of an episode with no readable record in {EVENTS_FILE}; "
                            "dropped")
    for lineno, number, what in damaged:
        if number in episodes:
            episodes[number].note(f"{EVENTS_FILE}:{lineno}: damaged {what} record dropped", warnings)
        elif number is None or number not in orphans:
            warnings.append(f"{EVENTS_FILE}:{lineno}: damaged {what} record dropped")
    for episode in episodes.values():
        _order_steps(episode, warnings)
        _drop_after_end(episode, warnings)
        lost_after = _attach_frames(path, header, episode, warnings)
        _mark_truncation(episode, warnings, lost_after)
    ordered = sorted(episodes.values(), key=lambda e: e.episode)
    _carry_memory(ordered)
    return Session(path=path, header=header, episodes=ordered, warnings=warnings)


def _carry_memory(episodes: list[EpisodeData]) -> None:
    """Each episode's `memory_at_start`: the rules remembered in earlier episodes and not forgotten."""
    kept: dict[int, RuleRemembered] = {}
    for episode in episodes:
        episode.memory_at_start = list(kept.values())
        for event in episode.rules:
            if isinstance(event, RuleRemembered):
                kept[event.rule_id] = event
            else:
                kept.pop(event.rule_id, None)


_EPISODE_FIELD = re.compile(rb'"episode"\s*:\s*(\d{1,9})')
_TYPE_FIELD = re.compile(rb'"type"\s*:\s*"([a-z_]{1,32})"')


def _read_events(events_file: Path, warnings: list[str]) -> tuple[list[tuple[int, object]], list[tuple[int, int | None, str]]]:
    """(events, damaged lines as (line number, episode if legible, record type if legible))."""
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
    damaged = []
    last_episode = None
    for lineno, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            event = _EVENT.validate_json(line)
        except ValidationError:
            # Only this record is lost. It is charged to the episode it names if that is still
            # legible, else to the episode of the record before it (episodes are written in turn).
            episode = _EPISODE_FIELD.search(line)
            kind = _TYPE_FIELD.search(line)
            damaged.append((lineno, int(episode.group(1)) if episode else last_episode,
                            kind.group(1).decode() if kind else "unreadable"))
            continue
        events.append((lineno, event))
        last_episode = event.episode
    return events, damaged


def _order_steps(episode: EpisodeData, warnings: list[str]) -> None:
    """Steps in step order, each once (a damaged digit can repeat or reorder a step number)."""
    by_number: dict[int, Step] = {}
    for s in episode.steps:
        by_number.setdefault(s.step, s)
    if len(by_number) != len(episode.steps):
        episode.note(f"dropped {len(episode.steps) - len(by_number)} repeated step records", warnings)
    episode.steps = [by_number[k] for k in sorted(by_number)]


def _drop_after_end(episode: EpisodeData, warnings: list[str]) -> None:
    """Nothing recorded after the episode ended is kept: no step was live to attach it to."""
    end = episode.end
    if end is None:
        return
    late_steps = [s for s in episode.steps if s.step >= end.steps]
    late_corrections = [c for c in episode.corrections if c.step >= end.steps]
    late_plans = [p for p in episode.plans if p.step >= end.steps and p.step > 0]
    if late_steps:
        episode.steps = [s for s in episode.steps if s.step < end.steps]
        episode.note(f"dropped {len(late_steps)} steps numbered after the episode's end (step {end.steps})", warnings)
    if late_corrections:
        episode.corrections = [c for c in episode.corrections if c.step < end.steps]
        episode.note(f"dropped {len(late_corrections)} corrections said after the episode ended at step {end.steps}", warnings)
    if late_plans:
        episode.plans = [p for p in episode.plans if p.step < end.steps or p.step == 0]


def _attach_frames(path: Path, header: SessionHeader, episode: EpisodeData, warnings: list[str]) -> int | None:
    """Keep the steps whose frames are intact on every camera; returns the first lost step number."""
    indexes = {cam: scan_frames(frame_path(path, episode.episode, cam)) for cam in sorted(header.cameras)}
    episode._frame_indexes = indexes
    for cam, index in indexes.items():
        name = index.path.relative_to(path)
        for lo, hi in index.damaged:
            episode.note(f"{name}: skipped {hi - lo} damaged bytes at byte {lo}", warnings)
        if index.torn:
            episode.note(f"{name}: dropped a torn record after byte {index.valid_bytes}", warnings)
    kept, missing = [], []
    for s in episode.steps:
        (kept if all(s.frame in index.entries for index in indexes.values()) else missing).append(s)
    missing = [s.step for s in missing]
    episode.dropped_steps = len(missing)
    if episode.dropped_steps:
        episode.note(f"dropped {episode.dropped_steps} steps whose frames are missing or damaged ({_ranges(missing)})", warnings)
    episode.steps = kept
    return missing[0] if episode.dropped_steps else None


def _mark_truncation(episode: EpisodeData, warnings: list[str], lost_after: int | None) -> None:
    """Steps lost at the end (frames or step records): the episode is truncated, outcome unknown.

    `lost_after`: the number of the first step that lost its frames, if any.
    """
    last = episode.steps[-1].step if episode.steps else -1
    end = episode.end
    if end is not None and last < end.steps - 1:
        episode.truncated = True
        episode.recorded_end, episode.end = end, None
        episode.note(f"truncated after step {last} of {end.steps}: outcome unknown (recorded: {end.reason})", warnings)
    elif end is None and lost_after is not None and lost_after > last:
        episode.truncated = True  # an unfinished episode's crash tail
    if episode.truncated:
        # Plans and corrections after the last intact step have no images to pair with.
        episode.plans = [p for p in episode.plans if p.step <= max(last, 0)]
        episode.corrections = [c for c in episode.corrections if c.step <= last]


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 7] -> 'steps 1-3, 7'."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and spans[-1][1] == n - 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    text = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in spans[:8])
    return "steps " + text + (", ..." if len(spans) > 8 else "")


def find_sessions(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand each path: a session directory as is, any other directory into the sessions below it.

    A folder below that looks like a session but has no header (an events.jsonl or frames/
    without session.json) is returned too, so reading it reports it by name instead of it being
    skipped without a word. A path holding no session at all is returned as is, so reading it
    raises a clear SessionError.
    """
    found: list[Path] = []
    for p in map(Path, paths):
        if (p / HEADER_FILE).is_file() or not p.is_dir():
            found.append(p)
            continue
        below = {h.parent for h in p.rglob(HEADER_FILE)}
        for marker in (*p.rglob(EVENTS_FILE), *(d for d in p.rglob("frames") if d.is_dir())):
            candidate = marker.parent
            if not any(s == candidate or s in candidate.parents for s in below):
                below.add(candidate)
        found.extend(sorted(below) if below else [p])
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
