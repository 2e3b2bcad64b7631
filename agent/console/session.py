"""One coaching session: environment, policies, recorder and control loop, set up and torn down.

`open_coach_session(args)` builds everything from `hivla coach` arguments; the session then runs
either the interactive console or a headless script, and on close stops the loop, closes the
recorder and reads the session back to report what was saved, every episode listed (so a broken
session is noticed at once, not when someone tries to export it).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.console.controller import CoachController
from agent.console.episodes import EpisodeSequencer, verdict
from agent.console.pace import Pace
from agent.console.worker import SimWorker

if TYPE_CHECKING:
    from agent.runtime.loop import ControlLoop
    from sessions.recorder import SessionRecorder

HISTORY_FILE_NAME = "coach_history.txt"
ACTION_NAMES_DEFAULT = ["dx", "dy", "dz", "dyaw", "grip"]  # the env's action layout, if it names none


class CoachSessionError(RuntimeError):
    """The session cannot start (bad spec, unknown family, unwritable output directory...)."""


def _runs_root() -> Path:
    from sessions.recorder import RUNS_DIR_ENV

    return Path(os.environ.get(RUNS_DIR_ENV, "runs"))


def default_history_file() -> Path:
    return _runs_root() / HISTORY_FILE_NAME


@dataclass
class SavedSummary:
    path: Path
    episodes: int
    steps: int
    paused_steps: int
    corrections: int
    withdrawn: int
    episode_lines: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"session saved to {self.path} ({self.episodes} episode{'s' * (self.episodes != 1)}, "
            f"{self.steps} steps of which {self.paused_steps} paused, {self.corrections} correction"
            f"{'s' * (self.corrections != 1)}" + (f", {self.withdrawn} withdrawn" if self.withdrawn else "") + ")"
        )

    def text(self) -> str:
        """The saved line, then one line per episode."""
        return "\n".join([self.line(), *(f"  {line}" for line in self.episode_lines)])


def episode_line(ep: Any) -> str:
    """One recorded episode as the session summary lists it (read back from disk, not from memory)."""
    corrections = len(ep.active_corrections)
    end = ep.end
    if end is None:
        what, subtasks = "outcome unknown (cut off)", ""
    else:
        what = verdict("success" if end.success else end.reason)
        subtasks = f"{end.subtasks_completed}/{end.subtasks_total} subtasks, "
    return (f"episode {ep.episode} {what}: {subtasks}{corrections} correction{'s' * (corrections != 1)}, "
            f"{len(ep.steps)} steps  {ep.task!r}" + (f" ({ep.start.family})" if ep.start.family else ""))


def summarize_session(path: Path) -> SavedSummary:
    from sessions.reader import read_session

    session = read_session(path)
    corrections = [c for ep in session.episodes for c in ep.corrections]
    return SavedSummary(
        path=path,
        episodes=len(session.episodes),
        steps=session.num_steps,
        paused_steps=sum(s.paused for ep in session.episodes for s in ep.steps),
        corrections=len(corrections),
        withdrawn=sum(c.withdrawn for c in corrections),
        episode_lines=[episode_line(ep) for ep in session.episodes],
    )


class CoachSession:
    """A loop and its recorder, run interactively or from a script, then closed and summarized.

    `worker` is the thread that owns the simulator (see agent.console.worker); every call that
    may touch the environment goes through it.
    """

    def __init__(
        self,
        loop: ControlLoop,
        recorder: SessionRecorder,
        meta: dict[str, str],
        camera_width: int = 48,
        refresh_hz: float = 10.0,
        worker: SimWorker | None = None,
        pace: Pace | None = None,
        sequence: dict | None = None,
        observers: list | None = None,
    ):
        self.loop = loop
        self.recorder = recorder
        self.worker = worker or SimWorker()
        self.meta = meta
        self.camera_width = camera_width
        self.refresh_hz = refresh_hz
        self.pace = pace or Pace(1.0)
        # EpisodeSequencer keywords (episodes, pause_s, seed, family, task); None: one episode, then
        # the console waits for /reset or /task as before.
        self.sequence = sequence
        self.observers = observers or []  # closed with the session (e.g. the live rerun log)
        self.controller = CoachController(loop, recorder, pace=self.pace)
        self._closed = False

    def _sequencer(self, start_next: Any, say: Any) -> EpisodeSequencer | None:
        if self.sequence is None:
            return None
        return EpisodeSequencer(start_next, say=say, **self.sequence)

    # ------------------------------------------------------------------ modes

    def run_interactive(self, history_file: str | None = None, input: Any = None, output: Any = None) -> int:
        from agent.console.app import CoachApp, history_for

        if history_file is None:
            history_path: Path | None = default_history_file()
        elif history_file.lower() == "none":
            history_path = None
        else:
            history_path = Path(history_file)
        app = CoachApp(
            self.loop, self.controller, runner=self.worker, meta=self.meta, camera_width=self.camera_width,
            refresh_hz=self.refresh_hz, history=history_for(history_path), input=input, output=output,
        )
        loop = self.loop
        # The next episode's reset renders and re-plans: queued on the simulator thread, so the
        # UI thread that notices the end never waits for it.
        self.controller.sequencer = self._sequencer(
            lambda seed, options: self.worker.submit(lambda: loop.reset(seed=seed, options=options)),
            self.controller.say,
        )
        self.worker.start_stepping(self.loop, self.pace)
        reason = "error"
        previous = _quit_on_signals(app)
        try:
            reason = app.run()
        except KeyboardInterrupt:  # SIGINT from outside the terminal (kill -INT): still save
            reason = "interrupted"
        finally:
            _restore_signals(previous)
            self.worker.stop_stepping()
        print(f"coach: stopped ({reason})")
        error = self.worker.error
        if error is not None:
            print(f"hivla coach: the control loop failed: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
        return 0

    def run_headless(self, script: list, max_steps: int | None = None) -> int:
        from agent.console.script import run_script
        from agent.console.view import render_plain

        started = time.monotonic()
        loop = self.loop
        self.controller.sequencer = self._sequencer(lambda seed, options: loop.reset(seed=seed, options=options), print)
        reason = self.worker.call(
            lambda: run_script(self.loop, self.controller, script, max_steps=max_steps, pace=self.pace)
        )
        self.controller.sequencer = None  # the script is over: closing the last episode starts no next one
        self.worker.call(self.loop.close)
        snap = self.loop.snapshot()
        if snap is not None:
            from agent.console.app import StatusTracker

            status = StatusTracker(self.controller, self.meta).status(snap)
            status.front, status.messages, status.wall_time = None, [], time.monotonic() - started
            print(render_plain(status, width=100))
        print(f"coach: stopped ({reason})")
        return 0

    # ------------------------------------------------------------------ teardown

    def close(self) -> SavedSummary | None:
        """Stop recording and report what was saved (printed; also returned)."""
        if self._closed:
            return None
        self._closed = True
        try:
            self.worker.call(self.loop.close, timeout=30)
        except Exception as err:  # the episode end is a nicety; the recorder must still close
            print(f"hivla coach: could not end the episode cleanly: {err}", file=sys.stderr)
        env_close = getattr(self.loop.env, "close", None)
        if env_close is not None:
            try:  # on the thread that owns the GL context; from any other, EGL refuses
                self.worker.call(env_close, timeout=30)
            except Exception as err:
                print(f"hivla coach: could not close the simulator cleanly: {err}", file=sys.stderr)
        self.worker.close()
        for observer in self.observers:
            try:
                observer.close()
            except Exception as err:  # a viewer log is a copy; the session itself must still close
                print(f"hivla coach: could not close {observer}: {err}", file=sys.stderr)
        if self.recorder is None:
            return None
        self.recorder.close()
        try:
            summary = summarize_session(self.recorder.path)
        except Exception as err:
            print(f"hivla coach: session written to {self.recorder.path} but could not be read back: {err}", file=sys.stderr)
            return None
        print(summary.text())
        return summary

    def __enter__(self) -> "CoachSession":
        return self

    def __exit__(self, *exc: Any) -> None:
        from agent.coaching.understand import finish_loading

        try:
            self.close()
        finally:
            finish_loading()  # after the session is saved: torch must not be mid-load when the process exits


def _quit_on_signals(app: Any) -> dict:
    """SIGTERM / SIGHUP (terminal closed) end the console like /quit, so the session is saved."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, _frame) -> None:
        event_loop = app.app.loop
        if event_loop is not None:
            event_loop.call_soon_threadsafe(app.quit, signal.Signals(signum).name)

    previous = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None:
            previous[sig] = signal.signal(sig, handler)
    return previous


def _restore_signals(previous: dict) -> None:
    for sig, old in previous.items():
        signal.signal(sig, old)


def _env_options(args: Any) -> dict | None:
    if getattr(args, "task", None):
        return {"task": args.task.strip()}
    if getattr(args, "family", None):
        return {"family": args.family}
    return None


def _names(env: Any, state_dim: int) -> tuple[list[str], list[str]]:
    """State and action names for the session header: the simulator's own, else generic ones."""
    module = sys.modules.get(type(getattr(env, "unwrapped", env)).__module__)
    state = getattr(module, "STATE_NAMES", None)
    action = getattr(module, "ACTION_NAMES", None)
    if not state or len(state) != state_dim:
        state = [f"state_{i}" for i in range(state_dim)]
    return list(state), list(action or ACTION_NAMES_DEFAULT)


def open_coach_session(args: Any) -> CoachSession:
    """Build env, policies, recorder and loop from `hivla coach` arguments (on the simulator
    thread); the first episode is reset."""
    worker = SimWorker()
    try:
        loop, recorder, meta, observers = worker.call(lambda: _build(args))
    except BaseException:
        worker.close()
        raise
    pace = Pace(getattr(args, "speed", 1.0), held=bool(getattr(args, "start_paused", False)))
    sequence = {
        "episodes": getattr(args, "episodes", 1), "pause_s": getattr(args, "pause_between", 0.0), "seed": args.seed,
        "family": getattr(args, "family", None), "task": (getattr(args, "task", None) or "").strip() or None,
    }
    return CoachSession(loop, recorder, meta, camera_width=args.camera_width, refresh_hz=args.refresh_hz, worker=worker,
                        pace=pace, sequence=sequence, observers=observers)


def _build(args: Any) -> tuple[Any, Any, dict[str, str]]:
    from agent.envs import make_env
    from agent.runtime.factory import build_loop
    from agent.specs import SpecError, default_high_level_spec, default_low_level_spec, make_high_level, make_low_level
    from sessions.recorder import RecorderError, SessionRecorder, default_session_dir, make_header

    out_dir = Path(args.out) if args.out else default_session_dir("coach")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        # Checked before the (slow) simulator and policies are built; sessions are never overwritten.
        raise CoachSessionError(f"cannot record to {out_dir}: it exists and is not an empty directory")
    high_spec = args.high_level or default_high_level_spec()
    low_spec = args.low_level or default_low_level_spec()
    try:
        high = make_high_level(high_spec, seed=args.seed, device=args.device, dtype=args.dtype)
        low = make_low_level(low_spec, seed=args.seed, device=args.device, dtype=args.dtype)
    except (SpecError, OSError, ValueError) as err:
        raise CoachSessionError(f"cannot build the policies: {err}") from None
    options = _env_options(args)
    try:
        env = make_env(family=args.family, suite=args.suite, image_size=args.image_size, seed=args.seed)
        # A probe reset tells the recorder the camera sizes before the loop's first episode.
        raw_obs, _info = env.reset(seed=args.seed, options=options)
    except (KeyError, ValueError) as err:
        raise CoachSessionError(f"cannot build the environment: {err}") from None
    cameras = {name: tuple(img.shape[:2]) for name, img in raw_obs["images"].items()}
    state_dim = len(raw_obs["state"])
    state_names, action_names = _names(env, state_dim)
    header = make_header(
        high_level=high_spec,
        low_level=low_spec,
        cameras=cameras,
        state_names=state_names,
        action_names=action_names,
        env={"suite": args.suite, "image_size": args.image_size, "seed": args.seed, "options": options or {}},
        notes="hivla coach",
    )
    observers = []
    if getattr(args, "rerun", None):
        from sessions.rerun_log import RerunLogger

        # Before the recorder exists, so a missing rerun-sdk or a bad target leaves no empty session.
        observers.append(RerunLogger.open(args.rerun, header))
    try:
        recorder = SessionRecorder(out_dir, header)
    except (RecorderError, OSError) as err:
        for observer in observers:
            observer.close()
        raise CoachSessionError(f"cannot record to {out_dir}: {err}") from None
    # Paced (a person watching): the high level plans on its own thread, so the robot never waits
    # for a plan. Unpaced headless scripts plan in the step, deterministic under the seed (agent/loop.py).
    paced = getattr(args, "speed", None) is not None
    if paced:
        from agent.planner_thread import set_inference_threads

        set_inference_threads()
    # The loop records to one place; observers (the live rerun log) see the same records after it,
    # and one that fails is dropped with one message while the recording goes on.
    loop = build_loop(env, high, low, recorder=recorder, logs=observers, log_label="hivla coach",
                      replan_period_s=args.replan_period, async_planning=paced)
    try:
        loop.reset(seed=args.seed, options=options)
    except Exception:
        recorder.close()
        raise
    meta = {"high_level": high_spec, "low_level": low_spec, "session_dir": str(out_dir)}
    return loop, recorder, meta, observers

