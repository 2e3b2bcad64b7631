"""The interactive coaching console: a live status view above an input line.

Three things run at once and none waits for another:
  - the control loop, on its own thread at the person's pace (agent.console.worker.SimWorker,
    agent.console.pace: 10 Hz x speed, held at the first frame until Enter or /go);
  - a refresh task on the UI event loop that copies the loop's snapshot, renders the view
    (agent.console.view) and redraws, about `refresh_hz` times a second;
  - prompt-toolkit's input line (history, slash-command completion); Enter hands the line to the
    CoachController, which submits it to the loop and answers in the view.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from prompt_toolkit.application import Application
from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.layout import Dimension, Float, FloatContainer, HSplit, Layout, Window
from prompt_toolkit.layout.controls import FormattedTextControl
from prompt_toolkit.layout.menus import CompletionsMenu
from prompt_toolkit.output import ColorDepth
from prompt_toolkit.styles import Style
from prompt_toolkit.widgets import TextArea

from agent.console.controller import FORCING_COMMANDS, SLASH_COMMANDS, WRITTEN_PREFIXES, CoachController
from agent.console.view import CorrectionLine, StatusSnapshot, render_fragments
from policies.scene_line import split_scene

if TYPE_CHECKING:
    from agent.runtime.loop import ControlLoop

PROMPT = "coach> "
PLAN_CHANGE_SHOW_S = 4.0  # how long the view shows "old -> new" after a correction changed the plan
MESSAGE_LINES = 14  # at most this many console replies shown above the input line
STYLE = Style.from_dict(
    {
        "rule": "fg:#555555",
        "prompt": "bold fg:#5fd7ff",
        "dim": "fg:#888888",
        "echo": "fg:#888888",
        "reply": "fg:#ffd75f",
        "completion-menu": "bg:#303030 fg:#dddddd",
        "completion-menu.completion.current": "bg:#5fd7ff fg:#000000",
    }
)


class CoachCompleter(Completer):
    """Completes slash commands and forcing prefixes (/override, /not, ...) with their help.

    The written prefixes ("override:", "not:") start with letters, so they are offered only on
    Tab: ordinary typing ("open the drawer") should not keep popping a menu up.
    """

    def __init__(self) -> None:
        self.slash = {**SLASH_COMMANDS, **FORCING_COMMANDS}
        self.takes_text = {"/task", "/override", "/not", "/rule", "/nudge"}

    def get_completions(self, document, complete_event):
        text = document.text_before_cursor.lstrip()
        if " " in text:
            return
        if text.startswith("/"):
            for name, meta in self.slash.items():
                if name.startswith(text.lower()):
                    completion = name + (" " if name in self.takes_text else "")
                    yield Completion(completion, -len(text), display=name, display_meta=meta)
        elif complete_event.completion_requested:
            for prefix in WRITTEN_PREFIXES:
                if prefix.startswith(text.lower()):
                    yield Completion(prefix + " ", -len(text), display=prefix, display_meta="force this kind")


class RateMeter:
    """Events per second over a sliding window (for the view's loop Hz and view fps)."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self.marks: deque[tuple[float, float]] = deque()

    def add(self, count: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.marks.append((now, count))
        while self.marks and now - self.marks[0][0] > self.window_s:
            self.marks.popleft()

    def rate(self) -> float | None:
        if len(self.marks) < 2:
            return None
        (t0, c0), (t1, c1) = self.marks[0], self.marks[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else None


class StatusTracker:
    """Builds StatusSnapshots from the loop's snapshots, adding what only the console knows:
    wall time per episode, measured rates, the console's messages and end-of-episode hints."""

    def __init__(self, controller: CoachController, meta: dict[str, str]) -> None:
        self.controller = controller
        self.meta = meta
        self.loop_rate = RateMeter()
        self.sim_rate = RateMeter()  # simulated seconds per wall second: the speed as measured
        self.view_rate = RateMeter()
        self.frames = 0
        self._episode: int | None = None
        self._episode_wall_start = time.monotonic()
        self._announced_end: int | None = None
        self._error_reported = False
        self._last_seen = ""  # the episode's last scene line: kept while a person's plan (no line) is in force

    def frame_drawn(self) -> None:
        self.frames += 1
        self.view_rate.add(self.frames)

    def status(self, snap: Any, runner_error: BaseException | None = None) -> StatusSnapshot:
        now = time.monotonic()
        if snap is None:
            return StatusSnapshot(task="starting...", messages=list(self.controller.messages), **self.meta)
        if snap.episode != self._episode:
            self._episode, self._episode_wall_start = snap.episode, now
            self._last_seen = ""
            self.loop_rate, self.sim_rate = RateMeter(), RateMeter()  # steps restart at 0 in a new episode
        self.loop_rate.add(snap.step, now)
        self.sim_rate.add(snap.sim_time, now)
        self.controller.loop_replied(snap.last_reply)  # e.g. "withdrew: ...", "nothing to undo"
        pace, sequencer = self.controller.pace, self.controller.sequencer
        if sequencer is not None:
            sequencer.observe(snap)  # says the episode's summary; starts the next after the pause
        elif snap.episode_over and self._announced_end != snap.episode:
            self._announced_end = snap.episode
            outcome = "success" if snap.success else "ended"
            self.controller.say(f"episode {snap.episode} {outcome}: /reset for a new one, /task TEXT for another, /quit to leave")
        if runner_error is not None and not self._error_reported:
            self._error_reported = True
            self.controller.say(f"control loop stopped: {type(runner_error).__name__}: {runner_error}")
            self.controller.say("the session so far is kept: /quit saves it")
        plan = snap.plan
        seen, _ = split_scene(plan.thought) if plan else (None, "")
        self._last_seen = seen or self._last_seen
        waiting = None
        if pace is not None and pace.held:
            waiting = "press Enter or /go to start"
            self._episode_wall_start = now  # the episode's wall clock starts with the robot
        elif sequencer is not None and sequencer.pausing:
            waiting = f"next episode in {sequencer.seconds_left():.0f} s (Enter: now)"
        change = snap.plan_change
        if change is not None and now - change.at > PLAN_CHANGE_SHOW_S:
            change = None
        corrections = [CorrectionLine(kind=c.kind.value, text=c.text, step=c.step) for c in snap.corrections]
        corrections += [CorrectionLine(kind=c.kind.value, text=c.text, step=c.step, withdrawn=True)
                        for c in snap.withdrawn]
        corrections.sort(key=lambda c: c.step)
        return StatusSnapshot(
            task=snap.task,
            thought=plan.thought if plan else "",
            last_seen=self._last_seen,
            subtask=plan.subtask if plan else None,
            source=plan.source if plan else None,
            episode=snap.episode,
            step=snap.step,
            sim_time=snap.sim_time,
            wall_time=now - self._episode_wall_start,
            paused=snap.paused or snap.stopped,
            finished=("success" if snap.success else "ended") if snap.episode_over else None,
            subtasks=list(snap.subtasks),
            subtasks_done=list(snap.subtasks_done),
            corrections=corrections,
            messages=list(self.controller.messages),
            front=snap.front_image,
            loop_hz=self.loop_rate.rate(),
            view_fps=self.view_rate.rate(),
            speed=None if pace is None else pace.speed,
            paced=pace is not None,
            measured_speed=None if waiting or snap.episode_over else self.sim_rate.rate(),
            waiting=waiting,
            plan_change=change,
            memory=list(snap.memory),
            **self.meta,
        )


class CoachApp:
    """The console's prompt-toolkit application (full screen; exits on /quit, Ctrl-C or Ctrl-D)."""

    def __init__(
        self,
        loop: ControlLoop,
        controller: CoachController,
        *,
        runner: Any = None,
        meta: dict[str, str] | None = None,
        camera_width: int = 48,
        refresh_hz: float = 10.0,
        history: History | None = None,
        input: Any = None,
        output: Any = None,
    ) -> None:
        self.loop = loop
        self.controller = controller
        controller.prepare()  # the intent model loads while the person reads the task
        self.runner = runner
        self.camera_width = camera_width
        self.refresh_period = 1.0 / refresh_hz
        self.tracker = StatusTracker(controller, meta or {})
        self.exit_reason = ""
        self.render_seconds: list[float] = []  # time spent building the view, per refresh
        self._fragments: list[tuple[str, str]] = [("", "starting...")]

        self.input_field = TextArea(
            prompt=[("class:prompt", PROMPT)],
            multiline=False,
            wrap_lines=False,
            completer=CoachCompleter(),
            complete_while_typing=True,
            history=history or InMemoryHistory(),
            accept_handler=self._accept,
        )
        status = Window(
            FormattedTextControl(lambda: self._fragments, focusable=False), wrap_lines=False, dont_extend_height=True
        )
        replies = Window(
            FormattedTextControl(self._message_fragments, focusable=False),
            height=self._message_height,
            wrap_lines=False,
            dont_extend_height=True,
        )
        body = HSplit([
            status,
            Window(),  # spare rows go here, so the replies stay just above the input line
            Window(height=1, char="─", style="class:rule"),
            replies,
            Window(height=1, char="─", style="class:rule"),
            self.input_field,
        ])
        root = FloatContainer(
            body, floats=[Float(xcursor=True, ycursor=True, content=CompletionsMenu(max_height=10, scroll_offset=1))]
        )
        # Truecolor unless the person chose a depth (PROMPT_TOOLKIT_COLOR_DEPTH) or asked for none.
        depth = None if os.environ.get("PROMPT_TOOLKIT_COLOR_DEPTH") else (
            ColorDepth.DEPTH_1_BIT if os.environ.get("NO_COLOR") else ColorDepth.TRUE_COLOR
        )
        self.app: Application = Application(
            layout=Layout(root, focused_element=self.input_field),
            key_bindings=self._key_bindings(),
            style=STYLE,
            full_screen=True,
            color_depth=depth,
            mouse_support=False,
            input=input,
            output=output,
        )
        self.app.after_render += lambda _app: self.tracker.frame_drawn()

    # ------------------------------------------------------------------ input

    def _key_bindings(self) -> KeyBindings:
        kb = KeyBindings()

        @kb.add("c-c")
        def _interrupt(event) -> None:
            self.quit("Ctrl-C")

        @kb.add("c-d")
        def _end_of_input(event) -> None:
            if not self.input_field.text:
                self.quit("Ctrl-D")

        return kb

    def _accept(self, buffer) -> bool:
        outcome = self.controller.handle(buffer.text)
        if outcome.quit:
            self.quit("/quit")
        self.refresh()
        return False  # clear the line (it is already in the history)

    def quit(self, reason: str) -> None:
        if not self.app.is_done:
            self.exit_reason = reason
            self.app.exit(result=reason)

    # ------------------------------------------------------------------ view

    def _message_room(self) -> int:
        # The replies get what the status view leaves (at least 2 lines, at most MESSAGE_LINES).
        try:
            rows = self.app.output.get_size().rows
        except Exception:
            rows = 50
        status_rows = 1 + sum(text.count("\n") for _, text in self._fragments)
        return max(2, min(MESSAGE_LINES, rows - status_rows - 3))

    def _message_height(self) -> Dimension:
        room = self._message_room()
        return Dimension(min=1, max=room, preferred=min(room, len(self.controller.messages)))

    def _message_fragments(self) -> list[tuple[str, str]]:
        lines = list(self.controller.messages)[-self._message_room():]  # the newest that fit
        fragments: list[tuple[str, str]] = []
        for i, line in enumerate(lines):
            style = "class:echo" if line.startswith("› ") else "class:reply"
            fragments += [("", "\n")] if i else []
            fragments.append((style, line))
        if not fragments and self.controller.pace is not None and self.controller.pace.held:
            return [("class:reply", "read the task, then press Enter (or type /go) to start the robot")]
        return fragments or [("class:dim", "type a correction, or /help for the commands")]

    def refresh(self) -> None:
        started = time.perf_counter()
        snap = self.loop.snapshot()
        status = self.tracker.status(snap, getattr(self.runner, "error", None))
        try:
            columns = self.app.output.get_size().columns
        except Exception:
            columns = 160
        camera_width = max(8, min(self.camera_width, columns // 3))
        self._fragments = render_fragments(
            status, width=max(40, columns), camera_width=camera_width, with_messages=False
        )
        self.render_seconds.append(time.perf_counter() - started)
        self.app.invalidate()

    async def _refresh_forever(self) -> None:
        next_tick = time.monotonic()
        while True:
            try:
                self.refresh()
            except Exception as err:  # a view bug must not take the session down; show it instead
                self._fragments = [("fg:red", f"view error: {type(err).__name__}: {err}")]
            next_tick += self.refresh_period
            delay = next_tick - time.monotonic()
            if delay < 0:  # fell behind (slow terminal): skip ahead rather than burst
                next_tick, delay = time.monotonic(), 0.0
            await asyncio.sleep(delay)

    def run(self) -> str:
        """Run until /quit, Ctrl-C or Ctrl-D; returns the reason."""

        def start_refresh() -> None:
            self.app.create_background_task(self._refresh_forever())

        return self.app.run(pre_run=start_refresh, handle_sigint=False) or self.exit_reason


def history_for(path: str | os.PathLike | None) -> History:
    """File-backed history when a path is given (its folder is created), else in memory."""
    if path is None:
        return InMemoryHistory()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return FileHistory(str(path))
