"""LeRobotDataset v3.0 writer (no lerobot import), with the language columns.

Layout written (one chunk, one file each -- datasets this size never need more):

    meta/info.json                      codebase_version v3.0, fps, features, splits, paths
    meta/stats.json                     per feature: min max mean std count q01 q10 q50 q90 q99
    meta/tasks.parquet                  task (index) -> task_index
    meta/episodes/chunk-000/file-000.parquet   per episode: lengths, file pointers, stats/*
    data/chunk-000/file-000.parquet     one row per frame
    videos/observation.images.<cam>/chunk-000/file-000.mp4   all episodes back to back
    meta/hivla_episodes.parquet         where each episode came from (session, episode, steps)
    meta/hivla_corrections.parquet      every exported correction with its kind and plans
    meta/hivla_coaching.parquet         what each exported frame teaches a pi05 fine-tune (labels,
                                        contexts; sessions/export/coaching.py), by dataset index

Language columns, as lerobot.datasets.language defines them:
  language_persistent  the episode's `subtask` rows (the subtask) and `plan` rows (the high
                       level's chain of thought ending in the subtask), role "assistant", each
                       stamped with the frame time it came into force; the same list on every frame
                       `memory` rows (role "assistant", the robot's running memory as LeRobot's
                       recipes read it): the rules remembered for the session, joined by "; ", as the
                       planner read them, one row each time they change
  language_events      each correction as an `interjection` row (role "user") on the frame it came;
                       each `/ask` as two `vqa` rows (the user's question, the assistant's answer)
                       naming the camera the answer is grounded in
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sessions.export.coaching import coaching_rows, coaching_schema
from sessions.export.common import (
    EXPORT_FORMAT_VERSION,
    ExportError,
    ExportOptions,
    ExportReport,
    assistant_text,
    episode_selected,
    safe_join,
    safe_name,
    selected_corrections,
    split_of,
    write_json,
)
from sessions.export.stats import image_sample, image_stats_from_sample, to_lists, vector_stats
from sessions.reader import EpisodeData, Session
from sessions.schema import CorrectionRecord
from sessions.video import CODEC_NAMES, CODECS, VideoWriter

CODEBASE_VERSION = "v3.0"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
VIDEO_GOP = 2  # keyframe every 2 frames, as LeRobot encodes: random access decodes stay cheap
INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
COACHING_PATH = "meta/hivla_coaching.parquet"  # what the exported frames teach `hivla finetune`


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


@dataclass
class Segment:
    """A run of consecutive steps of one recorded episode that becomes one dataset episode."""

    session: Session
    episode: EpisodeData
    start: int  # position in episode.steps
    end: int  # exclusive
    split: str


@dataclass
class Schema:
    cameras: dict[str, tuple[int, int]]
    state_names: list[str]
    action_names: list[str]
    fps: int

    @classmethod
    def of(cls, session: Session) -> "Schema":
        h = session.header
        return cls({k: tuple(v) for k, v in h.cameras.items()}, list(h.state_names), list(h.action_names), int(round(h.fps)))

    def mismatch(self, other: "Schema") -> str | None:
        for name in ("cameras", "state_names", "action_names", "fps"):
            if getattr(self, name) != getattr(other, name):
                return f"its {name.replace('_', ' ')} {getattr(other, name)} differ from the first session's {getattr(self, name)}"
        return None


def plan_segments(sessions: list[Session], options: ExportOptions, report: ExportReport) -> tuple[Schema | None, list[Segment]]:
    schema: Schema | None = None
    segments: list[Segment] = []
    for session in sessions:
        this = Schema.of(session)
        if schema is None:
            schema = this
        elif (why := schema.mismatch(this)) is not None:
            report.skipped.append((str(session.path), f"cannot share one LeRobot dataset: {why}"))
            continue
        for cam in this.cameras:
            safe_name(cam, "camera name")
        used = False
        for ep in session.episodes:
            if not episode_selected(ep, options):
                continue
            split = split_of(session.header.session_id, ep.episode, options.val_fraction, options.seed)
            for start, end in _windows(ep, options):
                segments.append(Segment(session, ep, start, end, split))
                used = True
        if used:
            report.sessions.append(str(session.path))
    # Train episodes first, then validation, so each split is one contiguous index range.
    segments.sort(key=lambda s: s.split != "train")
    return schema, segments


def _windows(ep: EpisodeData, options: ExportOptions) -> list[tuple[int, int]]:
    """Whole episode, or (with a frame window) the merged windows around its selected corrections."""
    n = len(ep.steps)
    if options.max_frames_before is None and options.max_frames_after is None:
        return [(0, n)]
    before = options.max_frames_before if options.max_frames_before is not None else 0
    after = options.max_frames_after if options.max_frames_after is not None else 0
    spans = sorted(
        (max(0, ep.position_of_step(c.step) - before), min(n, ep.position_of_step(c.step) + after + 1))
        for c in selected_corrections(ep, options)
    )
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return merged


def _language_rows(seg: Segment, fps: int, options: ExportOptions) -> tuple[list[dict], dict[int, list[dict]], list[CorrectionRecord]]:
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
        events.setdefault(frame, []).append({"role": "user", "content": c.text, "style": "interjection", "camera": None, "tool_calls": None})
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


def export_lerobot(sessions: list[Session], root: Path, options: ExportOptions, report: ExportReport) -> None:
    schema, segments = plan_segments(sessions, options, report)
    if schema is None or not segments:
        raise ExportError("nothing to export: no episode passed the filters")
    fps = schema.fps
    video_keys = {cam: f"observation.images.{cam}" for cam in sorted(schema.cameras)}
    writers = {
        cam: VideoWriter(_mkparent(safe_join(root, VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0))), fps, options.video_codec, gop=VIDEO_GOP)
        for cam, key in video_keys.items()
    }
    tasks: dict[str, int] = {}
    columns: dict[str, list] = {k: [] for k in ("observation.state", "action", *INDEX_FEATURES, "language_persistent", "language_events")}
    episode_rows: list[dict] = []
    provenance: list[dict] = []
    correction_rows: list[dict] = []
    all_pixels: dict[str, list[np.ndarray]] = {cam: [] for cam in schema.cameras}
    teaching = _Teaching(options)
    global_index = 0
    try:
        for episode_index, seg in enumerate(segments):
            ep = seg.episode
            steps = ep.steps[seg.start : seg.end]
            length = len(steps)
            task_index = tasks.setdefault(ep.task, len(tasks))
            persistent, events, exported = _language_rows(seg, fps, options)
            state = np.asarray([s.state for s in steps], dtype=np.float32).reshape(length, len(schema.state_names))
            action = np.asarray([s.action for s in steps], dtype=np.float32).reshape(length, len(schema.action_names))
            frame_index = np.arange(length, dtype=np.int64)
            timestamp = (frame_index / fps).astype(np.float32)
            index = np.arange(global_index, global_index + length, dtype=np.int64)
            columns["observation.state"].append(state)
            columns["action"].append(action)
            columns["timestamp"].append(timestamp)
            columns["frame_index"].append(frame_index)
            columns["episode_index"].append(np.full(length, episode_index, dtype=np.int64))
            columns["index"].append(index)
            columns["task_index"].append(np.full(length, task_index, dtype=np.int64))
            columns["language_persistent"].extend([persistent] * length)
            columns["language_events"].extend([events.get(i, []) for i in range(length)])

            stats = {
                "observation.state": vector_stats(state),
                "action": vector_stats(action),
                "timestamp": vector_stats(timestamp),
                "frame_index": vector_stats(frame_index),
                "episode_index": vector_stats(np.full(length, episode_index)),
                "index": vector_stats(index),
                "task_index": vector_stats(np.full(length, task_index)),
            }
            row = {
                "episode_index": episode_index,
                "tasks": [ep.task],
                "length": length,
                "data/chunk_index": 0,
                "data/file_index": 0,
                "dataset_from_index": global_index,
                "dataset_to_index": global_index + length,
            }
            for cam, key in video_keys.items():
                frames = ep.frames(cam)[seg.start : seg.end]
                start_s = writers[cam].frames / fps
                for frame in frames:
                    writers[cam].write(frame)
                sample = image_sample(frames)
                all_pixels[cam].append(sample.reshape(-1, 3))
                stats[key] = image_stats_from_sample(sample, length)
                row.update({
                    f"videos/{key}/chunk_index": 0,
                    f"videos/{key}/file_index": 0,
                    f"videos/{key}/from_timestamp": start_s,
                    f"videos/{key}/to_timestamp": start_s + length / fps,
                })
            for feature, feature_stats in stats.items():
                for stat, value in feature_stats.items():
                    row[f"stats/{feature}/{stat}"] = np.asarray(value).tolist()
            row["meta/episodes/chunk_index"] = 0
            row["meta/episodes/file_index"] = 0
            episode_rows.append(row)
            provenance.append({
                "episode_index": episode_index, "split": seg.split, "session": str(seg.session.path),
                "session_id": seg.session.header.session_id, "source_episode": ep.episode,
                "first_step": steps[0].step, "last_step": steps[-1].step, "family": ep.start.family,
                "success": ep.end.success if ep.end else None, "high_level": seg.session.header.high_level,
            })
            for c in exported:
                correction_rows.append({
                    "episode_index": episode_index, "frame_index": min(length - 1, ep.position_of_step(c.step) - seg.start),
                    "index": global_index + min(length - 1, ep.position_of_step(c.step) - seg.start),
                    "kind": c.kind.value, "text": c.text, "speaker": c.speaker, "withdrawn": c.withdrawn,
                    "replaced_subtask": c.replaced_plan.subtask if c.replaced_plan else None,
                    "model_subtask": c.model_plan.subtask if c.model_plan else None,
                    "resulting_subtask": c.resulting_plan.subtask if c.resulting_plan else None,
                    "suspect_from_frame": None if c.suspect_from_step is None else max(0, ep.position_of_step(c.suspect_from_step) - seg.start),
                    "mistake": c.mistake,
                })
                report.count_kind(c.kind.value)
            teaching.add(seg, episode_index, global_index)
            global_index += length
            report.rows[seg.split] = report.rows.get(seg.split, 0) + 1
    finally:
        for w in writers.values():
            w.close()

    report.episodes = len(segments)
    report.frames = global_index
    features = _features(schema, video_keys, root, options)
    _write_data(root, columns, schema)
    _write_tasks(root, tasks)
    _write_table(safe_join(root, EPISODES_PATH), pa.Table.from_pylist(episode_rows))
    _write_table(safe_join(root, "meta", "hivla_episodes.parquet"), pa.Table.from_pylist(provenance))
    _write_table(safe_join(root, "meta", "hivla_corrections.parquet"), _corrections_table(correction_rows))
    _write_table(safe_join(root, *COACHING_PATH.split("/")),
                 pa.Table.from_pylist(teaching.rows, schema=coaching_schema(images=False, lerobot=True)))

    global_stats = {
        "observation.state": vector_stats(np.concatenate(columns["observation.state"])),
        "action": vector_stats(np.concatenate(columns["action"])),
    }
    for name in INDEX_FEATURES:
        global_stats[name] = vector_stats(np.concatenate(columns[name]))
    for cam, key in video_keys.items():
        global_stats[key] = image_stats_from_sample(np.concatenate(all_pixels[cam]), global_index)
    write_json(safe_join(root, "meta", "stats.json"), {k: to_lists(v) for k, v in global_stats.items()})

    n_train = sum(1 for s in segments if s.split == "train")
    splits = {}
    if n_train:
        splits["train"] = f"0:{n_train}"
    if n_train < len(segments):
        splits["validation"] = f"{n_train}:{len(segments)}"
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": "hivla_sim",
        "total_episodes": len(segments),
        "total_frames": global_index,
        "total_tasks": len(tasks),
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": fps,
        "splits": splits,
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": features,
    }
    write_json(safe_join(root, "meta", "info.json"), info)
    write_json(safe_join(root, "meta", "hivla_manifest.json"), {
        "hivla_export_version": EXPORT_FORMAT_VERSION, "format": "lerobot", "options": options.to_json(),
        "sessions": report.sessions, "skipped": report.skipped, "dropped": report.dropped,
        "coaching": COACHING_PATH, "coaching_rows": len(teaching.rows),
    })


class _Teaching:
    """The coaching table's rows (sessions/export/coaching.py) of the exported frames: computed on
    the whole recorded episode, kept for the steps of each segment, placed by their dataset index."""

    def __init__(self, options: ExportOptions) -> None:
        self.options = options
        self.rows: list[dict] = []
        self._episode: tuple[int, list[dict]] | None = None

    def add(self, seg: Segment, episode_index: int, first_index: int) -> None:
        if self._episode is None or self._episode[0] != id(seg.episode):  # an episode's windows come in a row
            self._episode = (id(seg.episode), coaching_rows(seg.session, seg.episode, self.options, images=False))
        rows = self._episode[1]
        for position in range(seg.start, seg.end) if rows else ():
            frame = position - seg.start
            self.rows.append({**rows[position], "episode_index": episode_index, "frame_index": frame,
                              "index": first_index + frame})


def _features(schema: Schema, video_keys: dict[str, str], root: Path, options: ExportOptions) -> dict:
    features: dict[str, dict] = {}
    for cam, key in video_keys.items():
        h, w = schema.cameras[cam]
        features[key] = {
            "dtype": "video",
            "shape": [h, w, 3],
            "names": ["height", "width", "channels"],
            "info": _video_info(safe_join(root, VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)), options.video_codec),
        }
    features["observation.state"] = {"dtype": "float32", "shape": [len(schema.state_names)], "names": schema.state_names}
    features["action"] = {"dtype": "float32", "shape": [len(schema.action_names)], "names": schema.action_names}
    features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for name in ("frame_index", "episode_index", "index", "task_index"):
        features[name] = {"dtype": "int64", "shape": [1], "names": None}
    features["language_persistent"] = {"dtype": "language", "shape": [1], "names": None}
    features["language_events"] = {"dtype": "language", "shape": [1], "names": None}
    return features


def _video_info(path: Path, codec: str) -> dict:
    """The `info` block LeRobot stores per video feature, probed from the written file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = {
            "video.height": stream.height,
            "video.width": stream.width,
            "video.codec": stream.codec_context.codec.canonical_name or CODEC_NAMES[codec],
            "video.pix_fmt": stream.pix_fmt or CODECS[codec][1],
            "video.fps": int(stream.base_rate or stream.average_rate),
            "video.channels": 3,
            "is_depth_map": False,
            "has_audio": False,
        }
    return info


def _write_data(root: Path, columns: dict[str, list], schema: Schema) -> None:
    d_state, d_action = len(schema.state_names), len(schema.action_names)
    state = np.concatenate(columns["observation.state"]).astype(np.float32)
    action = np.concatenate(columns["action"]).astype(np.float32)
    arrays = {
        "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.reshape(-1)), d_state),
        "action": pa.FixedSizeListArray.from_arrays(pa.array(action.reshape(-1)), d_action),
        "timestamp": pa.array(np.concatenate(columns["timestamp"]), pa.float32()),
    }
    for name in ("frame_index", "episode_index", "index", "task_index"):
        arrays[name] = pa.array(np.concatenate(columns[name]), pa.int64())
    arrays["language_persistent"] = _language_array(columns["language_persistent"], persistent_row_type())
    arrays["language_events"] = _language_array(columns["language_events"], event_row_type())
    table = pa.table(arrays)
    path = safe_join(root, DATA_PATH.format(chunk_index=0, file_index=0))
    _write_table(path, table, row_group_rows=None)


def _language_array(rows: list[list[dict]], row_type: pa.StructType) -> pa.Array:
    """pyarrow cannot build JSON-extension values from Python objects: build `tool_calls` as JSON
    strings, then cast to the canonical type."""
    storage = pa.struct([
        pa.field(f.name, pa.list_(pa.string()) if f.name == "tool_calls" else f.type, f.nullable) for f in row_type
    ])
    return pa.array(rows, pa.list_(storage)).cast(pa.list_(row_type))


def _write_tasks(root: Path, tasks: dict[str, int]) -> None:
    """meta/tasks.parquet as pandas writes a frame indexed by `task` (what LeRobot reads back)."""
    names = list(tasks)
    table = pa.table({"task_index": pa.array([tasks[t] for t in names], pa.int64()), "task": pa.array(names, pa.string())})
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    _write_table(safe_join(root, "meta", "tasks.parquet"), table)


def _corrections_table(rows: list[dict]) -> pa.Table:
    schema = pa.schema([
        ("episode_index", pa.int64()), ("frame_index", pa.int64()), ("index", pa.int64()), ("kind", pa.string()),
        ("text", pa.string()), ("speaker", pa.string()), ("withdrawn", pa.bool_()), ("replaced_subtask", pa.string()),
        ("model_subtask", pa.string()), ("resulting_subtask", pa.string()), ("suspect_from_frame", pa.int64()), ("mistake", pa.string()),
    ])
    return pa.Table.from_pylist(rows, schema=schema)


def _write_table(path: Path, table: pa.Table, row_group_rows: int | None = None) -> None:
    _mkparent(path)
    pq.write_table(table, path, compression="snappy", row_group_size=row_group_rows)


def _mkparent(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
