"""Crash-safe session recorder.

Layout of a session directory (see sessions.schema for the records):

    session.json                       SessionHeader, written atomically (tmp + rename)
    events.jsonl                       one record per line, append-only
    frames/ep000003/front.bin          per episode and camera, append-only (sessions.frames)

The control loop calls `record_step` / `record` from its own thread; those calls only validate
cheaply, copy the images and enqueue, so they cost microseconds. One background writer thread
compresses and writes. It hands its buffers to the OS whenever the queue runs dry (so a kill -9
loses only what was still queued) and fsyncs at least every `sync_interval_s` (so even a power
loss costs at most about a second).

Queue policy: the queue is bounded (`max_pending` items, default 600 = one minute at 10 Hz).
When it is full the caller blocks until the writer catches up -- recorded data is never
dropped silently; the time spent blocked is counted in `stats`. If the writer thread fails (disk
full, permissions), the next call raises RecorderError carrying the cause instead of blocking.
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from sessions.frames import encode_frame, frame_path
from sessions.schema import EPISODE_EVENTS, EpisodeEvent, EpisodeStart, SessionHeader, Step

HEADER_FILE = "session.json"
EVENTS_FILE = "events.jsonl"
RUNS_DIR_ENV = "HIVLA_RUNS_DIR"


class RecorderError(RuntimeError):
    """The recorder cannot accept more data (closed, misused, or its writer thread failed)."""


def default_session_dir(prefix: str = "session", root: str | os.PathLike | None = None) -> Path:
    """runs/<prefix>-<UTC timestamp> (root: $HIVLA_RUNS_DIR or ./runs); never an existing path."""
    base = Path(root if root is not None else os.environ.get(RUNS_DIR_ENV, "runs"))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    candidate = base / f"{prefix}-{stamp}"
    n = 1
    while candidate.exists():
        n += 1
        candidate = base / f"{prefix}-{stamp}-{n}"
    return candidate


def make_header(
    *,
    high_level: str,
    low_level: str,
    cameras: dict[str, tuple[int, int]],
    state_names: list[str],
    action_names: list[str],
    **fields: Any,
) -> SessionHeader:
    """A SessionHeader with a fresh id, the creation time and the installed hivla version."""
    try:
        from importlib.metadata import version

        hivla_version = version("hivla")
    except Exception:  # not installed as a distribution (e.g. running from a source tree)
        hivla_version = "0+unknown"
    return SessionHeader(
        session_id=fields.pop("session_id", uuid.uuid4().hex[:12]),
        created=fields.pop("created", datetime.now(timezone.utc).isoformat(timespec="seconds")),
        hivla_version=fields.pop("hivla_version", hivla_version),
        high_level=high_level,
        low_level=low_level,
        cameras={k: tuple(v) for k, v in cameras.items()},
        state_names=list(state_names),
        action_names=list(action_names),
        **fields,
    )


def write_json_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    # Makes a new or renamed directory entry durable; not supported everywhere (e.g. Windows).
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class RecorderStats:
    events: int = 0
    steps: int = 0
    frames_written: int = 0
    bytes_written: int = 0
    syncs: int = 0
    blocked_s: float = 0.0  # caller time spent waiting on a full queue
    max_backlog: int = 0


_LiveRecorders: "weakref.WeakSet[SessionRecorder]" = weakref.WeakSet()


@atexit.register
def _close_live_recorders() -> None:
    # A recorder left open at interpreter exit still gets its queue drained and files synced.
    for rec in list(_LiveRecorders):
        try:
            rec.close()
        except Exception:
            pass


_STOP = object()


class SessionRecorder:
    """Records one session directory; see the module docstring for the format and guarantees.

    >>> with SessionRecorder(default_session_dir("coach"), header) as rec:
    ...     rec.start_episode(EpisodeStart(episode=0, task="...", wall_time=time.time()))
    ...     rec.record_step(step, {"front": img, "wrist": img2})
    ...     rec.record(EpisodeEnd(...))
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        header: SessionHeader,
        *,
        sync_interval_s: float = 0.5,
        max_pending: int = 600,
    ) -> None:
        self.path = Path(out_dir)
        self.header = header
        if self.path.exists():
            if not self.path.is_dir():
                raise RecorderError(f"session path {self.path} exists and is not a directory")
            if any(self.path.iterdir()):
                raise RecorderError(
                    f"session directory {self.path} already exists and is not empty; "
                    "choose a new directory (sessions are never overwritten)"
                )
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path / HEADER_FILE, header.model_dump_json(indent=2) + "\n")
        self._events = open(self.path / EVENTS_FILE, "ab")
        _fsync_dir(self.path)

        self.stats = RecorderStats()
        self._sync_interval_s = sync_interval_s
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._cameras = set(header.cameras)
        self._episode: int | None = None
        self._closed = False
        self._close_lock = threading.Lock()
        self._error: BaseException | None = None
        # Writer-thread state: open frame files of the current episode.
        self._frame_files: dict[str, Any] = {}
        self._frame_episode: int | None = None
        self._thread = threading.Thread(target=self._writer_loop, name="session-writer", daemon=True)
        self._thread.start()
        _LiveRecorders.add(self)

    # ---------------------------------------------------------------- caller side (cheap)

    def start_episode(self, start: EpisodeStart) -> None:
        if not isinstance(start, EpisodeStart):
            raise TypeError(f"start_episode needs an EpisodeStart, got {type(start).__name__}")
        self._episode = start.episode
        self._put(("event", start))

    def record_step(self, step: Step, images: dict[str, np.ndarray]) -> None:
        """Queue one control step and its camera images (copied here, written in the background)."""
        if not isinstance(step, Step):
            raise TypeError(f"record_step needs a Step, got {type(step).__name__}")
        if self._episode is None or step.episode != self._episode:
            raise RecorderError(
                f"step of episode {step.episode} recorded but the current episode is {self._episode}; "
                "call start_episode first"
            )
        if set(images) != self._cameras:
            raise RecorderError(f"step images {sorted(images)} do not match the header's cameras {sorted(self._cameras)}")
        copies = {}
        for name, img in images.items():
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                shape = getattr(img, "shape", None)
                raise RecorderError(f"camera {name!r} image must be uint8 [H, W, 3], got {getattr(img, 'dtype', type(img))} {shape}")
            copies[name] = img.copy()  # the caller may reuse its buffers
        self._put(("step", step, copies))

    def record(self, event: EpisodeEvent | EpisodeStart) -> None:
        """Queue a plan, correction, withdrawal, question, rule kept or forgotten, or episode end (an
        EpisodeStart also works)."""
        if isinstance(event, EpisodeStart):
            return self.start_episode(event)
        if isinstance(event, Step):
            raise TypeError("steps carry images: use record_step(step, images)")
        if not isinstance(event, EPISODE_EVENTS):
            raise TypeError(f"cannot record a {type(event).__name__}")
        self._put(("event", event))

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything queued so far is written and fsynced."""
        done = threading.Event()
        self._put(("sync", done))
        if not done.wait(timeout):
            raise RecorderError(f"session writer did not catch up within {timeout} s")
        self._raise_if_failed()

    def close(self) -> None:
        """Drain the queue, sync and close the files. Safe to call more than once."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            if self._thread.is_alive():
                self._queue.put(_STOP)
                self._thread.join()
            _LiveRecorders.discard(self)
        self._raise_if_failed()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def __enter__(self) -> "SessionRecorder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _put(self, item: tuple) -> None:
        if self._closed:
            raise RecorderError(f"recorder for {self.path} is closed")
        self._raise_if_failed()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            t0 = time.perf_counter()
            while True:  # block, but wake up to notice a dead writer instead of hanging forever
                self._raise_if_failed()
                try:
                    self._queue.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue
            self.stats.blocked_s += time.perf_counter() - t0
        size = self._queue.qsize()
        if size > self.stats.max_backlog:
            self.stats.max_backlog = size

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RecorderError(f"session writer for {self.path} failed: {self._error!r}") from self._error

    # ---------------------------------------------------------------- writer thread

    def _writer_loop(self) -> None:
        last_sync = time.monotonic()
        dirty = False
        try:
            while True:
                timeout = max(0.0, self._sync_interval_s - (time.monotonic() - last_sync))
                try:
                    item = self._queue.get(timeout=timeout if dirty else None)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    break
                if item is not None:
                    if item[0] == "sync":
                        self._sync()
                        last_sync, dirty = time.monotonic(), False
                        item[1].set()
                        continue
                    self._write(item)
                    dirty = True
                    if self._queue.empty():
                        self._flush()  # hand buffers to the OS: survives kill -9 from here on
                if dirty and time.monotonic() - last_sync >= self._sync_interval_s:
                    self._sync()
                    last_sync, dirty = time.monotonic(), False
        except BaseException as err:  # surfaced to the caller by _raise_if_failed
            self._error = err
            # Unblock callers waiting on flush(): drain whatever is queued.
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP and item[0] == "sync":
                    item[1].set()
        finally:
            try:
                self._sync()
            except Exception:
                pass
            self._close_files()

    def _write(self, item: tuple) -> None:
        if item[0] == "step":
            _, step, images = item
            files = self._files_for(step.episode)
            for name, img in images.items():
                record = encode_frame(step.frame, img)
                files[name].write(record)
                self.stats.bytes_written += len(record)
                self.stats.frames_written += 1
            # Frames go first: a step line on disk then (almost always) has its images; the
            # reader drops the rare step whose frames were lost anyway.
            self._write_event(step)
            self.stats.steps += 1
        else:
            event = item[1]
            if isinstance(event, EpisodeStart):
                self._files_for(event.episode)
            self._write_event(event)

    def _write_event(self, event: Any) -> None:
        line = event.model_dump_json().encode("utf-8") + b"\n"
        self._events.write(line)
        self.stats.bytes_written += len(line)
        self.stats.events += 1

    def _files_for(self, episode: int) -> dict[str, Any]:
        if self._frame_episode != episode:
            self._sync()
            for f in self._frame_files.values():
                f.close()
            self._frame_files = {}
            for name in sorted(self._cameras):
                path = frame_path(self.path, episode, name)
                path.parent.mkdir(parents=True, exist_ok=True)
                self._frame_files[name] = open(path, "ab")
            _fsync_dir(path.parent)
            _fsync_dir(path.parent.parent)
            self._frame_episode = episode
        return self._frame_files

    def _flush(self) -> None:
        self._events.flush()
        for f in self._frame_files.values():
            f.flush()

    def _sync(self) -> None:
        self._flush()
        os.fsync(self._events.fileno())
        for f in self._frame_files.values():
            os.fsync(f.fileno())
        self.stats.syncs += 1

    def _close_files(self) -> None:
        for f in [self._events, *self._frame_files.values()]:
            try:
                f.close()
            except Exception:
                pass
        self._frame_files = {}
