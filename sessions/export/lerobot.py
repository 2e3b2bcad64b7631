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

`complementary_info.is_intervention` (bool, per frame) marks the frames whose action a person caused:
the steps a nudge's burst moved the arm, as the loop recorded them (`Step.intervention`, schema 7; a
session recorded before that reads False), so tools outside hivla see which actions were a person's.
Language columns, as lerobot.datasets.language defines them: sessions/export/lerobot_language.py.
Which steps become which dataset episode: lerobot_segments.py; the parquet and meta files: lerobot_files.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from sessions.export.coaching import coaching_rows, coaching_schema
from sessions.export.common import (
    EXPORT_FORMAT_VERSION,
    ExportError,
    ExportOptions,
    ExportReport,
    safe_join,
    write_json,
)
from sessions.export.lerobot_files import (
    DATA_PATH,
    INTERVENTION,
    VIDEO_PATH,
    corrections_table,
    dataset_features,
    mkparent,
    write_data,
    write_table,
    write_tasks,
)
from sessions.export.lerobot_language import language_rows
from sessions.export.lerobot_segments import Segment, plan_segments
from sessions.export.stats import image_sample, image_stats_from_sample, to_lists, vector_stats
from sessions.reader import Session
from sessions.video import VideoWriter

CODEBASE_VERSION = "v3.0"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
VIDEO_GOP = 2  # keyframe every 2 frames, as LeRobot encodes: random access decodes stay cheap
INDEX_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
COACHING_PATH = "meta/hivla_coaching.parquet"  # what the exported frames teach `hivla finetune`


def export_lerobot(sessions: list[Session], root: Path, options: ExportOptions, report: ExportReport) -> None:
    schema, segments = plan_segments(sessions, options, report)
    if schema is None or not segments:
        raise ExportError("nothing to export: no episode passed the filters")
    fps = schema.fps
    video_keys = {cam: f"observation.images.{cam}" for cam in sorted(schema.cameras)}
    writers = {
        cam: VideoWriter(mkparent(safe_join(root, VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0))), fps, options.video_codec, gop=VIDEO_GOP)
        for cam, key in video_keys.items()
    }
    tasks: dict[str, int] = {}
    columns: dict[str, list] = {k: [] for k in ("observation.state", "action", INTERVENTION, *INDEX_FEATURES,
                                                "language_persistent", "language_events")}
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
            persistent, events, exported = language_rows(seg, fps, options)
            state = np.asarray([s.state for s in steps], dtype=np.float32).reshape(length, len(schema.state_names))
            action = np.asarray([s.action for s in steps], dtype=np.float32).reshape(length, len(schema.action_names))
            intervention = np.asarray([s.intervention for s in steps], dtype=bool)
            frame_index = np.arange(length, dtype=np.int64)
            timestamp = (frame_index / fps).astype(np.float32)
            index = np.arange(global_index, global_index + length, dtype=np.int64)
            columns["observation.state"].append(state)
            columns["action"].append(action)
            columns[INTERVENTION].append(intervention)
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
                INTERVENTION: vector_stats(intervention),
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
    features = dataset_features(schema, video_keys, root, options)
    write_data(root, columns, schema)
    write_tasks(root, tasks)
    write_table(safe_join(root, EPISODES_PATH), pa.Table.from_pylist(episode_rows))
    write_table(safe_join(root, "meta", "hivla_episodes.parquet"), pa.Table.from_pylist(provenance))
    write_table(safe_join(root, "meta", "hivla_corrections.parquet"), corrections_table(correction_rows))
    write_table(safe_join(root, *COACHING_PATH.split("/")),
                 pa.Table.from_pylist(teaching.rows, schema=coaching_schema(images=False, lerobot=True)))

    global_stats = {
        "observation.state": vector_stats(np.concatenate(columns["observation.state"])),
        "action": vector_stats(np.concatenate(columns["action"])),
        INTERVENTION: vector_stats(np.concatenate(columns[INTERVENTION])),
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

