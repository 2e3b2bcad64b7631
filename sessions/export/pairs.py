"""Compact correction pairs: what the model planned, what the person said instead.

One row per selected correction (no images):
  context            what the high level reads at the correction, as text (task, subtasks done,
                     the subtask in force, the corrections it reads, this one last)
  model_thought/model_subtask   the model's own plan (model_plan, else the plan it replaced)
  replaced_subtask   the plan in force when the correction came
  correction, kind, speaker     what was said and how it was classified
  human_subtask      the subtask adopted because of it (None for kinds that do not name one)
  window_start_step/window_end_step   the frames around it (--max-frames-before/after, default 0)
  plus session, session_id, episode, step, task, family, mistake, suspect_from_step, split
Beside the split files: coaching.parquet, what each exported episode teaches a pi05 fine-tune
(sessions/export/coaching.py).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from sessions.export.coaching import CoachingWriter
from sessions.export.common import (
    ExportOptions,
    ExportReport,
    context_text,
    decision_points,
    episode_selected,
    planner_context,
    split_of,
)
from sessions.export.sft import write_split_files
from sessions.reader import Session

PAIRS_SCHEMA = pa.schema([
    ("session", pa.string()), ("session_id", pa.string()), ("episode", pa.int64()), ("step", pa.int64()),
    ("task", pa.string()), ("family", pa.string()), ("context", pa.string()),
    ("model_thought", pa.string()), ("model_subtask", pa.string()), ("replaced_subtask", pa.string()),
    ("correction", pa.string()), ("kind", pa.string()), ("speaker", pa.string()),
    ("human_thought", pa.string()), ("human_subtask", pa.string()), ("mistake", pa.string()),
    ("suspect_from_step", pa.int64()), ("window_start_step", pa.int64()), ("window_end_step", pa.int64()),
    ("withdrawn", pa.bool_()), ("split", pa.string()),
])


def export_pairs(sessions: list[Session], root: Path, options: ExportOptions, report: ExportReport) -> None:
    pair_options = ExportOptions(**{**options.to_json(), "only_corrections": True})
    rows: dict[str, list[dict]] = {"train": [], "validation": []}
    before, after = options.max_frames_before or 0, options.max_frames_after or 0
    coaching = CoachingWriter(root, pair_options)
    for session in sessions:
        used = False
        for ep in session.episodes:
            if not episode_selected(ep, pair_options):
                continue
            split = split_of(session.header.session_id, ep.episode, options.val_fraction, options.seed)
            n = len(ep.steps)
            exported_here = False
            for point in decision_points(session, ep, pair_options):
                c = point.correction
                model = c.model_plan or c.replaced_plan
                human = c.resulting_plan if c.resulting_plan is not None else (point.target if point.target is not c.replaced_plan else None)
                rows[split].append({
                    "session": str(session.path), "session_id": session.header.session_id, "episode": ep.episode,
                    "step": c.step, "task": ep.task, "family": ep.start.family,
                    "context": context_text(planner_context(ep, point)),
                    "model_thought": model.thought if model else None, "model_subtask": model.subtask if model else None,
                    "replaced_subtask": c.replaced_plan.subtask if c.replaced_plan else None,
                    "correction": c.text, "kind": c.kind.value, "speaker": c.speaker,
                    "human_thought": human.thought if human else None, "human_subtask": human.subtask if human else None,
                    "mistake": c.mistake, "suspect_from_step": c.suspect_from_step,
                    "window_start_step": ep.steps[max(0, point.position - before)].step,
                    "window_end_step": ep.steps[min(n - 1, point.position + after)].step,
                    "withdrawn": c.withdrawn, "split": split,
                })
                report.count_kind(c.kind.value)
                report.frames += min(n - 1, point.position + after) - max(0, point.position - before) + 1
                exported_here = used = True
            if exported_here:
                report.episodes += 1
                coaching.add(session, ep)
        if used:
            report.sessions.append(str(session.path))
    write_split_files(root, rows, PAIRS_SCHEMA, report, "pairs", options, coaching.close())
