"""How fast the robot moves for the person watching it: simulated seconds per wall second, and
whether it is held at the first frame until the person says go.

A person types a correction in 2-5 s, so at real time most of a short task is over before the
first one lands; the console therefore runs slower than real time by default (0.5: one control
step every 0.2 s). Headless scripts run unpaced (`speed=None`) unless asked, so tests and
scripted runs never wait on a clock.

One Pace is shared by the thread that steps the loop (it asks `wait_for_next_step`) and the UI
thread that changes it (/speed, /slow, /fast, /go); its fields are set atomically, so no lock.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from agent.errors import UserError
from agent.loop import CONTROL_HZ

DEFAULT_INTERACTIVE_SPEED = 0.5
MIN_SPEED, MAX_SPEED = 0.05, 20.0
# /slow and /fast walk this ladder (a person thinks in halves and doubles, not in 0.1 steps).
SPEED_LADDER = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
UNPACED_WORDS = ("max", "full", "unpaced")


def parse_speed(text: str) -> float | None:
    """'0.25', '0.25x', '2' -> the speed; 'max' -> None (as fast as the machine steps).
    Anything else is a UserError naming what is accepted."""
    word = text.strip().lower()
    if word in UNPACED_WORDS:
        return None
    word = word.removesuffix("x").removesuffix("×").strip()  # "2x" as people write it
    try:
        value = float(word)
    except ValueError:
        raise UserError(f"speed {text.strip()!r} is not a number; give simulated seconds per wall second, "
                        f"e.g. 0.5 (half real time), 1, 2, or 'max'") from None
    if not MIN_SPEED <= value <= MAX_SPEED:  # also refuses nan and inf
        raise UserError(f"speed {value:g} is out of range; give a value from {MIN_SPEED:g} to {MAX_SPEED:g}, or 'max'")
    return value


def describe_speed(speed: float | None) -> str:
    return "max" if speed is None else f"{speed:g}×"


class Pace:
    """When the next control step may run."""

    def __init__(self, speed: float | None = 1.0, *, held: bool = False, control_hz: float = CONTROL_HZ,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.control_hz = control_hz
        self.clock = clock
        self._speed = speed
        self._next_tick: float | None = None
        self._released = threading.Event()
        if not held:
            self._released.set()

    # ------------------------------------------------------------------ what the person changes

    @property
    def speed(self) -> float | None:
        return self._speed

    def set_speed(self, speed: float | None) -> None:
        self._speed = speed
        self._next_tick = None  # restart the schedule: no burst to "catch up" with the old speed

    def slower(self) -> float | None:
        current = self._speed if self._speed is not None else SPEED_LADDER[-1] * 2
        self.set_speed(next((s for s in reversed(SPEED_LADDER) if s < current - 1e-9), SPEED_LADDER[0]))
        return self._speed

    def faster(self) -> float | None:
        if self._speed is None:
            return None
        self.set_speed(next((s for s in SPEED_LADDER if s > self._speed + 1e-9), None))  # past the top: max
        return self._speed

    @property
    def held(self) -> bool:
        """True while the robot waits at the first frame for Enter or /go."""
        return not self._released.is_set()

    def hold(self) -> None:
        self._released.clear()

    def release(self) -> None:
        self._next_tick = None
        self._released.set()

    # ------------------------------------------------------------------ what the stepping thread asks

    def period(self) -> float:
        """Wall seconds between control steps (0: as fast as possible)."""
        return 0.0 if self._speed is None else 1.0 / (self.control_hz * self._speed)

    def seconds_to_next_step(self) -> float:
        """How long until the next step is due (0 when it is due now); call `stepped()` after it."""
        now = self.clock()
        if self._next_tick is None:
            self._next_tick = now
        return max(0.0, self._next_tick - now)

    def stepped(self) -> None:
        """A step ran: schedule the next one."""
        now = self.clock()
        period = self.period()
        base = self._next_tick if self._next_tick is not None else now
        self._next_tick = base + period
        if self._next_tick < now - 2 * max(period, 1e-3):
            # Far behind (a stall, or a machine slower than the speed asks): start afresh rather
            # than burst. Smaller lags (scheduling delays) are made up, so the average holds.
            self._next_tick = now

    def wait_for_next_step(self, sleep: Callable[[float], None] = time.sleep) -> None:
        """Block until the next step is due (headless use; the console's worker interleaves calls)."""
        self._released.wait()
        delay = self.seconds_to_next_step()
        if delay > 0:
            sleep(delay)
