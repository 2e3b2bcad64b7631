"""One thread that owns the simulator for the whole session: it builds it, steps it, closes it.

Why not simply build the environment on the main thread and step it from a loop thread: MuJoCo's
offscreen renderer makes its GL context current on the thread that created it, and EGL refuses
to render from another one (EGL_BAD_ACCESS from eglMakeCurrent). So every call that may touch
the environment -- construction, reset, step, close -- runs here, through `call()` (or `submit()`)
for one-off work and `start_stepping()` for the paced loop (agent.console.pace: real time by
default, slower for a person, held at the first frame until they say go).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    from agent.runtime.loop import ControlLoop

T = TypeVar("T")


class SimWorker:
    """A single thread running queued calls and, once started, `loop.step()` at the pace's rate."""

    def __init__(self, name: str = "hivla-sim") -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self._loop: ControlLoop | None = None
        self._pace: Any = None
        self._stop = threading.Event()
        self.error: BaseException | None = None  # what stopped the stepping, shown by the console
        self.steps = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run `fn` on the worker thread and return its result (its exception is re-raised here)."""
        if threading.current_thread() is self._thread:
            return fn()
        if not self._thread.is_alive():
            raise RuntimeError("the simulator thread has stopped")
        return self.submit(fn).result(timeout)

    def submit(self, fn: Callable[[], T]) -> Future:
        """Queue `fn` to run on the worker thread between steps; returns at once (for the UI thread,
        which must not wait for a reset that renders and re-plans)."""
        future: Future = Future()
        self._calls.put((fn, future))
        return future

    def start_stepping(self, loop: ControlLoop, pace: Any = None) -> None:
        """From now on, call `loop.step()` as `pace` (agent.console.pace.Pace) allows: every
        1 / (10 Hz x speed) s, never waiting for input, not at all while it is held."""
        from agent.console.pace import Pace

        pace = pace if pace is not None else Pace(1.0)

        def start() -> None:
            self._pace, self._loop = pace, loop

        self.call(start)

    def stop_stepping(self) -> None:
        self.call(lambda: setattr(self, "_loop", None))

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._calls.put((lambda: None, Future()))  # wake the thread
        self._thread.join(timeout)

    def _run_calls(self, wait: float) -> None:
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            try:
                fn, future = self._calls.get(timeout=max(0.0, remaining)) if remaining > 0 else self._calls.get_nowait()
            except queue.Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as err:  # handed to the caller of call()
                    future.set_exception(err)
            if self._stop.is_set():
                return

    def _run(self) -> None:
        while not self._stop.is_set():
            pace = self._pace
            if self._loop is None or pace is None or pace.held:
                self._run_calls(wait=0.05)
                continue
            self._run_calls(wait=pace.seconds_to_next_step())
            if self._loop is None or self._stop.is_set() or pace.held or pace.seconds_to_next_step() > 0:
                continue  # stopped, held, or the speed changed while the calls ran: ask again
            try:
                self._loop.step()
                self.steps += 1
            except BaseException as err:  # the console shows it; the session is still saved
                self.error = err
                self._loop = None
                continue
            pace.stepped()
