"""A coaching session is several episodes: what happens when one ends.

The ended episode stays on screen for a short pause (its last frame, a one-line summary), so a
correction typed just after the end is answered "nothing recorded" about the episode the person
was watching, never applied to a new one they have not seen. Then the next task of the same
family (or, with no family asked for, the same suite) starts in a fresh scene (the next seed).
Enter or /go skips the pause; `--episodes N` stops after N.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Callable

DEFAULT_PAUSE_S = 5.0
# Ends that are the person's doing, not the robot's failure.
CUT_SHORT = ("reset", "task_change", "quit", "stopped")


def verdict(outcome: str) -> str:
    """'success', 'ended (quit)' (the person ended it) or 'failed (timeout)'."""
    if outcome == "success":
        return "success"
    return f"ended ({outcome})" if outcome in CUT_SHORT else f"failed ({outcome})"


@dataclass(frozen=True)
class EpisodeSummary:
    episode: int
    task: str
    family: str | None
    outcome: str  # "success", or why it ended ("timeout", "reset", ...)
    subtasks_done: int
    subtasks_total: int
    corrections: int
    steps: int

    @classmethod
    def from_snapshot(cls, snap: Any) -> "EpisodeSummary":
        return cls(
            episode=snap.episode, task=snap.task, family=snap.family,
            outcome="success" if snap.success else (snap.end_reason or "ended"),
            subtasks_done=sum(bool(d) for d in snap.subtasks_done), subtasks_total=len(snap.subtasks),
            corrections=snap.corrections_given, steps=snap.step,
        )

    def line(self) -> str:
        return (f"episode {self.episode} {verdict(self.outcome)}: {self.subtasks_done}/{self.subtasks_total} subtasks, "
                f"{self.corrections} correction{'s' * (self.corrections != 1)}, {self.steps} steps")


class EpisodeSequencer:
    """Watches the loop's snapshots; after an episode ends, says its summary and, once the pause is
    over (or skipped), starts the next one through `start_next(seed, options)`.

    `start_next` runs the reset where the simulator lives (the console passes the worker's
    non-blocking submit); `options` are the env reset options (None: any task of the suite).
    """

    def __init__(
        self,
        start_next: Callable[[int | None, dict | None], Any],
        *,
        episodes: int | None = None,
        pause_s: float = DEFAULT_PAUSE_S,
        seed: int | None = 0,
        family: str | None = None,
        task: str | None = None,
        say: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.start_next = start_next
        self.episodes = episodes  # None: until the person quits
        self.pause_s = pause_s
        self.seed = seed
        self.family = family
        self.task = task
        self.say = say
        self.clock = clock
        self.summaries: list[EpisodeSummary] = []
        self._seen_end: int | None = None
        self._last: Any = None  # the latest snapshot seen, for an episode ended by /reset or /task
        self._next_at: float | None = None  # when the next episode starts (a pause is running)
        self._starting = False  # asked for the next episode; waiting for the loop to show it

    @property
    def finished(self) -> bool:
        """Every episode asked for has been run."""
        return self.episodes is not None and len(self.summaries) >= self.episodes

    @property
    def pausing(self) -> bool:
        return self._next_at is not None

    def seconds_left(self) -> float | None:
        return None if self._next_at is None else max(0.0, self._next_at - self.clock())

    def hint(self) -> str:
        """What comes next, for replies about the ended episode."""
        left = self.seconds_left()
        if left is not None:
            if self.pause_s <= 0:
                return "the next episode starts now"
            return f"the next episode starts in {left:.0f} s (Enter: now)"
        return "/reset starts a new episode, /task TEXT a new task"

    def observe(self, snap: Any) -> None:
        """Call with every fresh snapshot (the console's refresh, the headless script's step)."""
        if snap is None:
            return
        last, self._last = self._last, snap
        if last is not None and snap.episode != last.episode and self._seen_end != last.episode:
            # /reset or /task ended it between two looks: listed too, with what was last seen of it
            summary = replace(EpisodeSummary.from_snapshot(last), outcome="reset")
            self.summaries.append(summary)
            self.say(summary.line())
        if self._starting and not snap.episode_over:
            self._starting = False
        if snap.episode_over and self._seen_end != snap.episode:
            self._seen_end = snap.episode
            self._next_at = None
            summary = EpisodeSummary.from_snapshot(snap)
            self.summaries.append(summary)
            if not self.finished:
                self._next_at = self.clock() + self.pause_s
            done = f"all {self.episodes} episodes done; " if self.finished and self.episodes > 1 else ""
            self.say(f"{summary.line()}; {done}{self.hint()}")
        elif not snap.episode_over and self._next_at is not None:
            self._next_at = None  # the person started one themselves (/reset, /task)
        if self._next_at is not None and self.clock() >= self._next_at:
            self.next_now()

    def next_now(self) -> bool:
        """Skip the pause (Enter, /go); True if a next episode was started."""
        if self._next_at is None or self._starting:
            return False
        self._next_at = None
        self._starting = True
        if self.seed is not None:
            self.seed += 1  # a fresh scene, as /reset gives
        self.start_next(self.seed, self.next_options())
        return True

    def next_options(self) -> dict | None:
        if self.family:
            return {"family": self.family}
        if self.task:
            return {"task": self.task}  # the person's own task, in a new scene
        return None  # any task of the suite, chosen by the seed

    def session_lines(self) -> list[str]:
        return [s.line() for s in self.summaries]
