"""TRL-style chat SFT: one row per decision point (each plan, each correction).

Columns
  messages   [{"role": "user", "content": [{"type": "image"}, ..., {"type": "text", "text": context}]},
              {"role": "assistant", "content": [{"type": "text", "text": "<thought> So: <subtask>"}]}]
             the user turn has one image part per entry of `images`, in order
  images     list of {"bytes": PNG, "path": None} (what `datasets.Image` stores): the current front and
             wrist frames, preceded by up to --max-frames-before earlier front frames; declared a
             `Sequence` of `Image` in the parquet metadata, so `datasets.load_dataset("parquet", ...)`
             decodes them as PIL images with no cast (sessions/export/hf_features.py)
  cameras    the cameras of the current frames, which are the last len(cameras) entries of `images`
  context    the decision's context as data: {task, done, in_force, corrections: [{kind, text}], memory,
             facts: [{subject, place, where, side}]}, so a trainer can re-render it with another prompt
             (`hivla finetune --base hf:DIR` does); the user text says the facts in force ("Facts: ...")
  fact       a fact's row (kind "fact"): what the person said is true, as the reader read it
             ({subject, place, where, side}); the user turn has the facts in force, the assistant turn
             the plan made from the corrected belief (a grounded planner's scene line with the fact in
             place of its reading); null on other rows
  fact_step, fact_images
             a fact's row: the step whose frames the fact refers to (the reading it corrects: for the
             scripted coach's, the frames the contradicted plan was read from; common.fact_frame_step)
             and those frames, one per entry of `cameras`; what a read-out fine-tune learns the fact
             on. Null on other rows (and in exports made before they were written: the row's own
             frames are the step it was said at)
  kind       "plan" or the correction kind;  source: plan source or correction speaker
  session, session_id, episode, step, weight, corrected, task, family, subtask, split

Beside the split files: coaching.parquet, what each exported episode teaches a pi05 fine-tune, as
columns (sessions/export/coaching.py).

The assistant turn is the plan in force after the decision: for a correction, the plan adopted
because of it (the human's subtask where the correction replaced the model's). Plans that a
correction replaced, or that fall in a correction's suspect window, get weight 0.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sessions.export.coaching import CoachingWriter
from sessions.export.common import (
    EXPORT_FORMAT_VERSION,
    DecisionPoint,
    ExportError,
    ExportOptions,
    ExportReport,
    assistant_text,
    context_text,
    decision_points,
    episode_selected,
    fact_frame_step,
    planner_context,
    safe_join,
    split_of,
    write_json,
)
from sessions.export.hf_features import IMAGE_TYPE, with_hf_features
from sessions.export.png import encode_png
from sessions.reader import EpisodeData, Session

PROMPT_VERSION = 1
HISTORY_STRIDE = 5  # earlier frames are taken every half second at 10 Hz


def sft_schema() -> pa.Schema:
    part = pa.struct([("type", pa.string()), ("text", pa.string())])
    message = pa.struct([("role", pa.string()), ("content", pa.list_(part))])
    fact = pa.struct([("subject", pa.string()), ("place", pa.string()), ("where", pa.string()), ("side", pa.string())])
    context = pa.struct([("task", pa.string()), ("done", pa.list_(pa.string())), ("in_force", pa.string()),
                         ("corrections", pa.list_(pa.struct([("kind", pa.string()), ("text", pa.string())]))),
                         ("memory", pa.list_(pa.string())), ("facts", pa.list_(fact))])
    return with_hf_features(pa.schema([
        ("messages", pa.list_(message)),
        ("images", pa.list_(IMAGE_TYPE)),
        ("cameras", pa.list_(pa.string())),
        ("context", context),
        ("fact", fact),
        ("kind", pa.string()), ("source", pa.string()), ("session", pa.string()), ("session_id", pa.string()),
        ("episode", pa.int64()), ("step", pa.int64()), ("weight", pa.float32()), ("corrected", pa.bool_()),
        ("task", pa.string()), ("family", pa.string()), ("subtask", pa.string()), ("split", pa.string()),
        ("fact_step", pa.int64()), ("fact_images", pa.list_(IMAGE_TYPE)),
    ]), image_lists=("images", "fact_images"))


class _FrameCache:
    """Decoded frames of the episode being exported (decision points of one episode share them)."""

    def __init__(self) -> None:
        self._key = None
        self._frames: dict[str, object] = {}

    def get(self, ep: EpisodeData, camera: str):
        key = (id(ep), camera)
        if key not in self._frames:
            if self._key != id(ep):
                self._frames.clear()
                self._key = id(ep)
            self._frames[key] = ep.frames(camera)
        return self._frames[key]


def sft_row(point: DecisionPoint, split: str, options: ExportOptions, cache: _FrameCache) -> dict:
    ep = point.episode
    history = options.max_frames_before or 0
    positions = [point.position - HISTORY_STRIDE * k for k in range(history, 0, -1)]
    positions = [p for p in positions if p >= 0]
    front = cache.get(ep, "front")
    images = [encode_png(front[p], level=1) for p in positions]
    cameras = [c for c in ("front", "wrist") if c in point.session.header.cameras] or sorted(point.session.header.cameras)
    for cam in cameras:
        images.append(encode_png(cache.get(ep, cam)[point.position], level=1))
    content = [{"type": "image", "text": None} for _ in images]
    fact_step, fact_images = None, None
    if point.correction is not None and point.correction.fact is not None:
        fact_step = fact_frame_step(ep, point.correction)
        at = ep.position_of_step(fact_step)
        fact_images = [{"bytes": encode_png(cache.get(ep, cam)[at], level=1), "path": None} for cam in cameras]
    context = planner_context(ep, point)
    content.append({"type": "text", "text": context_text(context)})
    return {
        "messages": [
            {"role": "user", "content": content},
            {"role": "assistant", "content": [{"type": "text", "text": assistant_text(point.target)}]},
        ],
        "images": [{"bytes": b, "path": None} for b in images],
        "cameras": cameras,
        "context": context,
        "fact": point.correction.fact.model_dump() if point.correction is not None and point.correction.fact else None,
        "kind": point.kind,
        "source": point.source,
        "session": str(point.session.path),
        "session_id": point.session.header.session_id,
        "episode": ep.episode,
        "step": point.step,
        "weight": float(point.weight),
        "corrected": point.corrected,
        "task": ep.task,
        "family": ep.start.family,
        "subtask": point.target.subtask if point.target else None,
        "split": split,
        "fact_step": fact_step,
        "fact_images": fact_images,
    }


def export_sft(sessions: list[Session], root: Path, options: ExportOptions, report: ExportReport) -> None:
    rows: dict[str, list[dict]] = {"train": [], "validation": []}
    cache = _FrameCache()
    coaching = CoachingWriter(root, options)
    for session in sessions:
        if "front" not in session.header.cameras:
            report.skipped.append((str(session.path), "no 'front' camera"))
            continue
        used = False
        for ep in session.episodes:
            if not episode_selected(ep, options):
                continue
            split = split_of(session.header.session_id, ep.episode, options.val_fraction, options.seed)
            points = [p for p in decision_points(session, ep, options) if p.target is not None]
            for point in points:
                rows[split].append(sft_row(point, split, options, cache))
                report.count_kind(point.kind)
                report.frames += len(rows[split][-1]["images"])
            if points:
                report.episodes += 1
                used = True
                coaching.add(session, ep, lambda camera, ep=ep: cache.get(ep, camera))
        if used:
            report.sessions.append(str(session.path))
    write_split_files(root, rows, sft_schema(), report, "sft", options, coaching.close())


def write_split_files(root: Path, rows: dict[str, list[dict]], schema: pa.Schema, report: ExportReport, fmt: str,
                      options: ExportOptions, extra: dict | None = None) -> None:
    """The split files and the manifest (with `extra`: the coaching table's entry, see coaching.py)."""
    if not any(rows.values()):
        raise ExportError("nothing to export: no decision point passed the filters")
    files = {}
    for split, split_rows in rows.items():
        if not split_rows:
            continue
        path = safe_join(root, f"{split}.parquet")
        pq.write_table(pa.Table.from_pylist(split_rows, schema=schema), path, compression="zstd")
        files[split] = path.name
        report.rows[split] = len(split_rows)
    write_json(safe_join(root, "manifest.json"), {
        "hivla_export_version": EXPORT_FORMAT_VERSION, "format": fmt, "prompt_version": PROMPT_VERSION,
        "files": files, "rows": report.rows, "by_kind": report.by_kind, "options": options.to_json(),
        "sessions": report.sessions, "skipped": report.skipped, "dropped": report.dropped, **(extra or {}),
    })
