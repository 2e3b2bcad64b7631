"""The one place a control loop is assembled: `hivla run`, `coach`, `datagen`, the benchmarks and
the console session all call `build_loop`, so what a loop is made of (its policies from their specs,
its recorder, its observers) is decided here and nowhere else.

    loop = build_loop(env, "oracle", "expert", seed=0, recorder=rec)
    loop = build_loop(env, high, low, recorder=rec, logs=[rerun_logger], async_planning=True)
"""

from __future__ import annotations

from typing import Sequence

from agent.runtime.loop import ControlLoop
from agent.runtime.planning import REPLAN_PERIOD_S
from agent.runtime.protocols import Coach, Env, HighLevel, LoopObserver, LowLevel, Recorder
from agent.runtime.recording import Guarded, RecordingObserver


def build_loop(
    env: Env,
    high: HighLevel | str,
    low: LowLevel | str,
    *,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "fp32",
    recorder: Recorder | None = None,
    logs: Sequence[Recorder] = (),
    log_label: str = "hivla",
    observers: Sequence[LoopObserver] = (),
    coach: Coach | None = None,
    replan_period_s: float = REPLAN_PERIOD_S,
    execute_steps: int | None = None,
    compute_model_plan: bool = True,
    async_planning: bool = False,
    remember: bool = True,
) -> ControlLoop:
    """A ControlLoop over `env`. `high` / `low`: a policy, or a spec string (agent.specs: "oracle",
    "expert", "pi05:PATH", ...) built with `seed`, `device` and `dtype`. `recorder` gets every
    record; each of `logs` (the live rerun log) gets the same records after it, and is dropped with
    one message naming `log_label` if it fails, while the recording goes on. `observers` see the raw
    events (agent.runtime.events). The rest are ControlLoop's own options."""
    if isinstance(high, str) or isinstance(low, str):
        from agent.specs import make_high_level, make_low_level

        if isinstance(high, str):
            high = make_high_level(high, seed=seed, device=device, dtype=dtype)
        if isinstance(low, str):
            low = make_low_level(low, seed=seed, device=device, dtype=dtype)
    guarded = [Guarded(RecordingObserver(log), label=log_label) for log in logs]
    return ControlLoop(env, high, low, recorder=recorder, replan_period_s=replan_period_s, execute_steps=execute_steps,
                       compute_model_plan=compute_model_plan, coach=coach, async_planning=async_planning,
                       remember=remember, observers=[*guarded, *observers])
