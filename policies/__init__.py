"""Models and the policy contracts: HighLevelPolicy / LowLevelPolicy and the data they exchange."""

from policies.types import (
    ActionChunk,
    Correction,
    CorrectionKind,
    Observation,
    Plan,
    PlanContext,
    PlanSource,
)
from policies.base import HighLevelPolicy, LowLevelPolicy

__all__ = [
    "ActionChunk",
    "Correction",
    "CorrectionKind",
    "HighLevelPolicy",
    "LowLevelPolicy",
    "Observation",
    "Plan",
    "PlanContext",
    "PlanSource",
]
