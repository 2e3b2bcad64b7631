"""Sessions as rerun recordings, for people who look at sessions rather than read timelines.

One logger serves both ways in: `hivla coach --rerun` hands it the loop's events as they are
recorded (it has the recorder's `record` / `record_step` methods), and `hivla replay --rerun`
feeds it a session read back from disk in the same order, so a live log and a replay of the same
session hold the same entities:

    cameras/<name>          the camera image of every step (JPEG)
    state, action           one series per state / action dimension (named from the header)
    plan                    a text entry per plan: subtask, why it was made, the thought
    corrections             a text entry per correction: kind, words, the plan before -> after
    detectors               the success detectors: a reference subtask done, the task's outcome
    detectors/subtask_index which reference subtask the detectors say is being worked on
    episode                 the task of each episode as it starts

Timelines: `frame` (every step of the session, episodes one after another), `episode`,
`step` (control step within the episode) and `sim_time` (simulated seconds in the episode).
rerun-sdk is optional (`pip install -e '.[viz]'`); without it the logger says so in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sessions.schema import (
    CorrectionRecord,
    CorrectionWithdrawn,
    EpisodeEnd,
    EpisodeStart,
    PlanEmitted,
    SessionHeader,
    Step,
)

INSTALL_HINT = "pip install -e '.[viz]'"
JPEG_QUALITY = 90  # a 128x128 frame is ~5 kB instead of 48 kB raw; the viewer decodes it


class RerunError(RuntimeError):
    """rerun-sdk is missing or the target cannot be written; the message names the fix."""


def import_rerun() -> Any:
    try:
        import rerun as rr
    except ImportError:
        raise RerunError(f"rerun-sdk is not installed; install it with {INSTALL_HINT}") from None
    if not hasattr(rr, "Scalars"):  # rr.Scalars and set_time(sequence=) arrived in 0.23
        raise RerunError(f"rerun-sdk {getattr(rr, '__version__', '?')} is too old (0.23 or newer is needed); "
                         f"upgrade it with {INSTALL_HINT}")
    return rr


class RerunLogger:
    """Logs session events to one rerun recording (a .rrd file or a viewer at a URL)."""

    def __init__(self, rec: Any, header: SessionHeader, rr: Any, target: str) -> None:
        self.rr = rr
        self.rec = rec
        self.header = header
        self.target = target
        self.frames = 0  # steps logged so far: the `frame` timeline's next value
        self._episode = 0
        self._subtasks: dict[int, list[str]] = {}
        self._last_index: dict[int, int | None] = {}
        self._closed = False
        self._log_static()

    @classmethod
    def open(cls, target: str | Path, header: SessionHeader) -> "RerunLogger":
        """`target`: a path (written as .rrd) or a rerun+http:// / grpc URL of a running viewer."""
        rr = import_rerun()
        rec = rr.RecordingStream("hivla", recording_id=header.session_id)
        text = str(target)
        if "://" in text:
            rec.connect_grpc(text)
        else:
            path = Path(text)
            if path.parent and not path.parent.is_dir():
                raise RerunError(f"cannot write {path}: folder {path.parent} does not exist")
            rec.save(str(path))
        return cls(rec, header, rr, text)

    def __repr__(self) -> str:
        return f"rerun log {self.target}"

    # ------------------------------------------------------------------ the recorder's interface

    def record(self, event: Any) -> None:
        rr = self.rr
        if isinstance(event, EpisodeStart):
            self._episode = event.episode
            self._subtasks[event.episode] = list(event.subtasks)
            self._last_index[event.episode] = None
            self._at(event.episode, 0, 0.0)
            subtasks = "; ".join(event.subtasks) or "-"
            self.rec.log("episode", rr.TextLog(f"episode {event.episode}: {event.task}  (family {event.family or '-'}, "
                                               f"seed {event.seed}; subtasks: {subtasks})", level="INFO"))
        elif isinstance(event, PlanEmitted):
            self._at(event.episode, event.step)
            plan = event.plan
            text = f"{plan.subtask}   ({event.reason}, {plan.source})" + (f" -- {plan.thought}" if plan.thought else "")
            self.rec.log("plan", rr.TextLog(text, level="INFO"))
        elif isinstance(event, CorrectionRecord):
            self._at(event.episode, event.step)
            before = event.replaced_plan.subtask if event.replaced_plan else "-"
            after = event.resulting_plan.subtask if event.resulting_plan else "-"
            text = f'[{event.kind.value}] "{event.text}" ({event.speaker})   {before} -> {after}'
            if event.withdrawn:
                text += "   (withdrawn later)"
            self.rec.log("corrections", rr.TextLog(text, level="WARN"))
        elif isinstance(event, CorrectionWithdrawn):
            self._at(event.episode, event.step)
            self.rec.log("corrections", rr.TextLog(f"withdrawn: correction {event.correction_id}", level="WARN"))
        elif isinstance(event, EpisodeEnd):
            self._at(event.episode, event.steps)
            verdict = "task succeeded" if event.success else f"episode ended without success ({event.reason})"
            self.rec.log("detectors", rr.TextLog(
                f"{verdict}: {event.subtasks_completed}/{event.subtasks_total} subtasks done",
                level="INFO" if event.success else "ERROR"))

    def record_step(self, step: Step, images: dict) -> None:
        rr = self.rr
        self._at(step.episode, step.step, step.time)
        for name in sorted(images):
            self.rec.log(f"cameras/{name}", rr.Image(images[name]).compress(jpeg_quality=JPEG_QUALITY))
        self.rec.log("state", rr.Scalars([float(x) for x in step.state]))
        self.rec.log("action", rr.Scalars([float(x) for x in step.action]))
        self._detectors(step)
        self.frames += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.rec.flush()
        self.rec.disconnect()

    # ------------------------------------------------------------------ internals

    def _log_static(self) -> None:
        rr, h = self.rr, self.header
        self.rec.log("state", rr.SeriesLines(names=list(h.state_names)), static=True)
        self.rec.log("action", rr.SeriesLines(names=list(h.action_names)), static=True)
        about = (f"hivla session {h.session_id}, created {h.created}\nhigh level: {h.high_level}\n"
                 f"low level: {h.low_level}\ncameras: {', '.join(sorted(h.cameras))}\n{h.notes}")
        self.rec.log("session", rr.TextDocument(about), static=True)

    def _at(self, episode: int, step: int, sim_time: float | None = None) -> None:
        """Events without a frame of their own sit at the frame of the step they come before."""
        self.rec.set_time("frame", sequence=self.frames)
        self.rec.set_time("episode", sequence=episode)
        self.rec.set_time("step", sequence=step)
        if sim_time is not None:
            self.rec.set_time("sim_time", duration=sim_time)

    def _detectors(self, step: Step) -> None:
        """The detectors' view: the first reference subtask not done moved on, so the ones it
        passed are done (the env reports progress as that index)."""
        index = step.subtask_index
        if index is None:
            return
        self.rec.log("detectors/subtask_index", self.rr.Scalars([float(index)]))
        previous = self._last_index.get(step.episode)
        self._last_index[step.episode] = index
        if previous is None or index <= previous:
            return
        names = self._subtasks.get(step.episode, [])
        for i in range(previous, index):
            name = names[i] if i < len(names) else f"subtask {i}"
            self.rec.log("detectors", self.rr.TextLog(f"subtask done: {name}", level="INFO"))


def log_session(session: Any, target: str | Path, episodes: list[int] | None = None) -> int:
    """Replay a session read back from disk (sessions.reader) into a rerun recording, in the order
    it happened; returns the number of frames logged."""
    from sessions.replay import select_episodes

    chosen = select_episodes(session, episodes)
    logger = RerunLogger.open(target, session.header)
    try:
        for ep in chosen:
            logger.record(ep.start)
            frames = {camera: ep.frames(camera) for camera in ep.cameras}
            # At one step: plans first, then corrections (a plan made because of one comes after
            # it), then the step itself -- the order the loop records them in.
            events: list[tuple[int, int, Any]] = []
            for p in ep.plans:
                events.append((p.step, 2 if p.reason == "correction" else 0, p))
            events += [(c.step, 1, c) for c in ep.corrections]
            events += [(s.step, 3, (position, s)) for position, s in enumerate(ep.steps)]
            events.sort(key=lambda e: (e[0], e[1]))
            for _, order, event in events:
                if order == 3:
                    position, step = event
                    logger.record_step(step, {camera: frames[camera][position] for camera in frames})
                else:
                    logger.record(event)
            if ep.end is not None:
                logger.record(ep.end)
    finally:
        logger.close()
    return logger.frames
