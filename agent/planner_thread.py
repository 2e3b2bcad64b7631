"""The high level on its own thread, so a plan never stalls the control step.

π0.5 and Hi Robot run the high level asynchronously at a low rate while the low level keeps acting
on the subtask in force. Here the control loop hands a `PlanRequest` (a copy of the observation and
of the planner context, stamped with the loop's context generation) to one worker thread through a
one-slot mailbox: a newer request replaces one not yet started, because only the newest context
matters. The finished plan waits in a one-slot outbox that the loop polls at the start of each
control step; the loop applies it only if its generation is still current, so a plan asked before a
correction that came after it is never applied.

torch releases the GIL inside its kernels, so the planner's matrix products overlap the control
thread's simulation and low-level inference. The intra-op thread count is process-wide in torch;
the console sets it deliberately (one per thread on two cores), see agent.console.session.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, fields, replace

from policies.base import HighLevelPolicy
from policies.types import Observation, Plan, PlanContext


def copy_context(context: PlanContext) -> PlanContext:
    """A copy the planner thread may read while the loop keeps appending to the original: every list
    field is copied (plan history, corrections, completed subtasks, and any added later)."""
    return replace(context, **{f.name: list(getattr(context, f.name)) for f in fields(context)
                               if isinstance(getattr(context, f.name), list)})


def copy_observation(obs: Observation) -> Observation:
    """The images are copied: an environment may reuse its render buffers for the next frame."""
    return replace(obs, images={name: img.copy() for name, img in obs.images.items()}, state=obs.state.copy())


@dataclass(frozen=True)
class PlanRequest:
    generation: int  # the loop's context generation when asked; a plan of an older one is stale
    reason: str
    obs: Observation
    context: PlanContext
    asked_step: int
    asked_at: float  # time.perf_counter() when asked
    asked_wall: float  # time.time() when asked (recorded)


@dataclass(frozen=True)
class PlanResult:
    request: PlanRequest
    plan: Plan | None
    error: BaseException | None
    landed_at: float  # time.perf_counter() when the plan was ready

    @property
    def latency_s(self) -> float:
        return self.landed_at - self.request.asked_at


class PlannerThread:
    """One daemon thread running `high.plan` for the newest request. Call from the loop's thread:
    `ask()` (never blocks), `poll()` (the finished plan, or None), `busy`, `close()`."""

    def __init__(self, high: HighLevelPolicy, name: str = "hivla-planner") -> None:
        self.high = high
        self._cond = threading.Condition()
        self._pending: PlanRequest | None = None  # the one-slot mailbox
        self._running: PlanRequest | None = None
        self._done: PlanResult | None = None  # the one-slot outbox
        self._closed = False
        self.superseded = 0  # finished plans replaced in the outbox by a newer one before the loop took them
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def ask(self, generation: int, reason: str, obs: Observation, context: PlanContext, step: int) -> PlanRequest:
        request = PlanRequest(generation, reason, copy_observation(obs), copy_context(context), step,
                              time.perf_counter(), time.time())
        with self._cond:
            if self._closed:
                raise RuntimeError("the planner thread is closed")
            self._pending = request  # replaces a request not yet started: only the newest context matters
            self._cond.notify()
        return request

    def poll(self) -> PlanResult | None:
        with self._cond:
            done, self._done = self._done, None
            return done

    def wait(self, timeout: float | None = None) -> PlanResult | None:
        """Block until a plan is ready (a synchronous caller, or a test); None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._done is None and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            done, self._done = self._done, None
            return done

    @property
    def busy(self) -> bool:
        """A request is queued or being planned (its result not yet collected counts as not busy)."""
        with self._cond:
            return self._pending is not None or self._running is not None

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                request, self._pending = self._pending, None
                self._running = request
            plan, error = None, None
            try:
                plan = self.high.plan(request.obs, request.context)
            except Exception as err:  # handed to the loop, which reports it
                error = err
            with self._cond:
                self._running = None
                self.superseded += self._done is not None  # a newer request's plan: the older is moot
                self._done = PlanResult(request, plan, error, time.perf_counter())
                self._cond.notify_all()


def set_inference_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads for a loop whose planner runs beside the control thread.

    Two threads compute at once (the control step: simulator + low level; the planner), so each
    gets half the cores this process may use: on 2 cores, one each. More would oversubscribe, and
    an OpenMP team that spins on a core another job holds (a training run beside the console) stalls
    every parallel region: measured, 2 intra-op threads with one core busy ran the console at 0.2-0.4x."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = threads or max(1, cores // 2)
    torch.set_num_threads(n)
    return n
