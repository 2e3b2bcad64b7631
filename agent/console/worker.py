"""One thread that owns the simulator for the whole session: it builds it, steps it, closes it.

Why not simply build the environment on the main thread and step it from a loop thread: MuJoCo's
offscreen renderer makes its GL context current on the thread that created it, and EGL refuses
to render from another one (EGL_BAD_ACCESS from eglMakeCurrent). So every call that may touch
the environment -- construction, reset, step, close -- runs here, through `call()` for one-off
work and `start_stepping()` for the 10 Hz real-time loop.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

T = TypeVar("T")

CONTROL_HZ = 10.0


class SimWorker:
    """A single thread running queued calls and, once started, `loop.step()` at `hz` (real time)."""

    def __init__(self, name: str = "hivla-sim") -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self._loop: Any = None
        self._period = 1.0 / CONTROL_HZ
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
        future: Future = Future()
        self._calls.put((fn, future))
        return future.result(timeout)

    def start_stepping(self, loop: Any, hz: float = CONTROL_HZ) -> None:
        """From now on, call `loop.step()` every 1/hz s (never waiting for input; skips ahead if late)."""
        self._period = 1.0 / hz
        self.call(lambda: setattr(self, "_loop", loop))

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
        next_tick = time.monotonic()
        while not self._stop.is_set():
            if self._loop is None:
                self._run_calls(wait=0.05)
                next_tick = time.monotonic()
                continue
            self._run_calls(wait=max(0.0, next_tick - time.monotonic()))
            if self._loop is None or self._stop.is_set():
                continue
            try:
                self._loop.step()
                self.steps += 1
            except BaseException as err:  # the console shows it; the session is still saved
                self.error = err
                self._loop = None
                continue
            next_tick += self._period
            if next_tick < time.monotonic() - 2 * self._period:
                # Far behind (a stall): start afresh rather than burst. A smaller lag, typical of a
                # busy machine's scheduling delays, is made up so the average stays at `hz`.
                next_tick = time.monotonic()
