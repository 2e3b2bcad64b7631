"""The language columns of a LeRobot dataset episode, as lerobot.datasets.language defines them:

  language_persistent  the episode's `subtask` rows (the subtask) and `plan` rows (the high
                       level's chain of thought ending in the subtask), role "assistant", each
                       stamped with the frame time it came into force; the same list on every frame
                       `memory` rows (role "assistant", the robot's running memory as LeRobot's
                       recipes read it): the rules remembered for the session, joined by "; ", as the
                       planner read them, one row each time they change
  language_events      each correction as an `interjection` row (role "user") on the frame it came,
                       but a fact (a statement about the scene) as a `fact` row: a perception label,
                       its reading as data in `tool_calls` (one JSON call, set_belief with subject /
                       place / where / side, and `frame_index`: the frame whose reading it corrects,
                       the frames the scripted coach's contradicted plan was read from, else this one;
                       common.fact_frame_step) for a read-out fine-tune;
                       each `/ask` as two `vqa` rows (the user's question, the assistant's answer)
                       naming the camera the answer is grounded in
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from sessions.export.common import ExportOptions, assistant_text, fact_frame_step, selected_corrections
from sessions.export.lerobot_segments import Segment
from sessions.schema import CorrectionRecord


def persistent_row_type() -> pa.StructType:
    return pa.struct(
        [
            pa.field("role", pa.string(), nullable=False),
            pa.field("content", pa.string()),
            pa.field("style", pa.string()),
            pa.field("timestamp", pa.float32(), nullable=False),
            pa.field("camera", pa.string()),
            pa.field("tool_calls", pa.list_(pa.json_() if hasattr(pa, "json_") else pa.string())),
        ]
    )


def event_row_type() -> pa.StructType:
    return pa.struct([f for f in persistent_row_type() if f.name != "timestamp"])


def language_rows(seg: Segment, fps: int, options: ExportOptions) -> tuple[list[dict], dict[int, list[dict]], list[CorrectionRecord]]:
    """(persistent rows, event rows by frame index, corrections exported) of one segment."""
    ep = seg.episode
    first_step, last_step = ep.steps[seg.start].step, ep.steps[seg.end - 1].step
    in_force_at: dict[int, object] = {}  # frame index -> last plan adopted at that frame
    for p in ep.plans:
        if p.step > last_step:
            continue
        frame = max(0, ep.position_of_step(p.step) - seg.start) if p.step >= first_step else 0
        in_force_at[frame] = p  # later plans at the same frame replace earlier ones
    persistent = []
    for frame, p in sorted(in_force_at.items()):
        t = float(np.float32(frame / fps))
        persistent.append({"role": "assistant", "content": p.plan.subtask, "style": "subtask", "timestamp": t, "camera": None, "tool_calls": None})
        persistent.append({"role": "assistant", "content": assistant_text(p.plan), "style": "plan", "timestamp": t, "camera": None, "tool_calls": None})
    persistent.extend(_memory_rows(in_force_at, fps))
    persistent.sort(key=lambda r: (r["timestamp"], r["style"], r["role"]))
    events: dict[int, list[dict]] = {}
    exported = []
    for c in selected_corrections(ep, options):
        if not first_step <= c.step <= last_step + 1:
            continue
        frame = min(seg.end - seg.start - 1, ep.position_of_step(c.step) - seg.start)
        seen = ep.position_of_step(fact_frame_step(ep, c)) - seg.start
        seen = seen if 0 <= seen <= frame else frame  # frames before the dataset episode: its own
        events.setdefault(frame, []).append(_event_row(c, seen))
        exported.append(c)
    for q in ep.questions:  # /ask: the question and the high level's answer, grounded in a camera's view
        if not first_step <= q.step <= last_step + 1:
            continue
        frame = min(seg.end - seg.start - 1, ep.position_of_step(q.step) - seg.start)
        camera = f"observation.images.{q.camera}"
        events.setdefault(frame, []).extend(
            {"role": role, "content": text, "style": "vqa", "camera": camera, "tool_calls": None}
            for role, text in (("user", q.question), ("assistant", q.answer)))
    return persistent, events, exported


def _event_row(c: CorrectionRecord, seen_at: int) -> dict:
    """`seen_at`: a fact's frame_index of the frames it refers to."""
    if c.kind.value != "fact":
        return {"role": "user", "content": c.text, "style": "interjection", "camera": None, "tool_calls": None}
    calls = None if c.fact is None else [json.dumps({"type": "function", "function": {
        "name": "set_belief", "arguments": {**c.fact.model_dump(), "frame_index": seen_at}}})]
    return {"role": "user", "content": c.text, "style": "fact", "camera": None, "tool_calls": calls}


def _memory_rows(in_force_at: dict[int, object], fps: int) -> list[dict]:
    """`memory` rows: the session's remembered rules as the planner read them (PlanEmitted.context), one
    row each time they change ("" once all are forgotten); LeRobot's active_at gives the latest."""
    rows, last = [], ""
    for frame, p in sorted(in_force_at.items()):
        memory = "; ".join(p.context.memory) if p.context is not None else ""
        if memory != last:
            rows.append({"role": "assistant", "content": memory, "style": "memory",
                         "timestamp": float(np.float32(frame / fps)), "camera": None, "tool_calls": None})
            last = memory
    return rows


def language_array(rows: list[list[dict]], row_type: pa.StructType) -> pa.Array:
    """pyarrow cannot build JSON-extension values from Python objects: build `tool_calls` as JSON
    strings, then cast to the canonical type."""
    storage = pa.struct([
        pa.field(f.name, pa.list_(pa.string()) if f.name == "tool_calls" else f.type, f.nullable) for f in row_type
    ])
    return pa.array(rows, pa.list_(storage)).cast(pa.list_(row_type))
