"""The control loop's old address: it lives in agent.runtime now (loop, planning, corrections, acting,
events, observers). Callers that import from here keep working."""

from agent.runtime.acting import HOLD_ACTION, NUDGE_STEPS
from agent.runtime.events import ReplanReason
from agent.runtime.loop import ControlLoop
from agent.runtime.recording import plan_data
from agent.runtime.state import (
    CONTROL_HZ,
    EpisodeResult,
    LoopSnapshot,
    PlanChange,
    episode_over_reply,
)
from policies.planning import record_completion

__all__ = ["CONTROL_HZ", "HOLD_ACTION", "NUDGE_STEPS", "ControlLoop", "EpisodeResult", "LoopSnapshot", "PlanChange",
           "ReplanReason", "episode_over_reply", "plan_data", "record_completion"]
